"""data.backend='files': formats, mixtures, the token cache, resume, sharding, bad input."""

import dataclasses
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, read_metrics
from guide_jax import config as config_lib
from guide_jax.data import cache, packing, pipeline, sources
from guide_jax.data import tokenizer as tokenizer_lib

TEXTS = [f'document {i}: ' + ' '.join(f'w{(i * 7 + j) % 50}' for j in range(20 + i % 13))
         for i in range(200)]


def write_jsonl(path, texts, key='text', opener=open):
  with opener(path, 'wt') as f:
    for t in texts:
      f.write(json.dumps({key: t}) + '\n')


def documents(path, text_key='text'):
  counts = sources.Counts()
  return [t for _, t in sources.read_documents(str(path), text_key, counts)], counts


def test_every_format_and_compression(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  import zstandard
  from array_record.python import array_record_module
  texts = TEXTS[:5]
  (tmp_path / 'a.txt').write_text('one document\nof two lines\n')
  write_jsonl(tmp_path / 'b.jsonl', texts)
  write_jsonl(tmp_path / 'c.jsonl.gz', texts, opener=gzip.open)
  (tmp_path / 'd.json').write_text(json.dumps([{'body': t} for t in texts]))
  with open(tmp_path / 'e.jsonl.zst', 'wb') as f:
    f.write(zstandard.ZstdCompressor().compress(
        ''.join(json.dumps({'text': t}) + '\n' for t in texts).encode()))
  pq.write_table(pa.table({'text': texts, 'n': list(range(5))}), tmp_path / 'f.parquet')
  writer = array_record_module.ArrayRecordWriter(str(tmp_path / 'g.arrayrecord'), 'group_size:1')
  for i, t in enumerate(texts):  # plain text and JSON records side by side
    writer.write((json.dumps({'text': t}) if i % 2 else t).encode())
  writer.close()
  (tmp_path / 'h.txt.gz').write_bytes(gzip.compress('gzipped text'.encode()))

  assert documents(tmp_path / 'a.txt')[0] == ['one document\nof two lines\n']
  for name in ('b.jsonl', 'c.jsonl.gz', 'e.jsonl.zst', 'f.parquet', 'g.arrayrecord'):
    docs, counts = documents(tmp_path / name)
    assert docs == texts, name
    assert (counts.records, counts.malformed, counts.empty) == (5, 0, 0), name
  assert documents(tmp_path / 'd.json', text_key='body')[0] == texts
  assert documents(tmp_path / 'h.txt.gz')[0] == ['gzipped text']


def test_malformed_records_are_counted_and_named(tmp_path):
  path = tmp_path / 'bad.jsonl'
  lines = [json.dumps({'text': 'fine'}), '{not json', json.dumps({'other': 'x'}),
           json.dumps({'text': ''}), json.dumps({'text': 3})]
  path.write_bytes(('\n'.join(lines) + '\n').encode() + b'{"text": "\xff\xfe"}\n')
  docs, counts = documents(path)
  assert docs == ['fine']
  assert (counts.records, counts.malformed, counts.empty) == (6, 4, 1)
  assert counts.first_problem.startswith(f'{path} line 2: invalid JSON')
  with pytest.raises(sources.DataError, match=r'data.train_files: 4 of 6 records .* more than 1%'):
    cache.check_counts(counts, 'data.train_files', ['a.jsonl'])
  ok = sources.Counts(records=1000, malformed=10)
  cache.check_counts(ok, 'data.train_files', ['a.jsonl'])  # 1% is tolerated


def test_mixture_syntax_and_weights(tmp_path):
  for name in ('a', 'b'):
    write_jsonl(tmp_path / f'{name}.jsonl', TEXTS[:3])
  a, b = str(tmp_path / 'a.jsonl'), str(tmp_path / 'b.jsonl')
  assert sources.parse_mixture(f'{a},0.3;{b},0.7', 'f') == [([a], 0.3), ([b], 0.7)]
  assert sources.parse_mixture(f'{a},{b}', 'f') == [([a, b], 1.0)]
  assert sources.parse_mixture([{'files': a, 'weight': 1}, {'files': [b], 'weight': 3}], 'f') \
      == [([a], 1.0), ([b], 3.0)]
  mixed = sources.sources_of([{'files': a, 'weight': 1}, {'files': b, 'weight': 3}], 'f', 'text')
  assert [s.weight for s in mixed] == [0.25, 0.75]
  for bad in (f'{a},0;{b},1', f'{a},-1;{b},1', f'{a};{b},1'):
    with pytest.raises(sources.DataError, match='data.train_files'):
      sources.parse_mixture(bad, 'data.train_files')
  with pytest.raises(sources.DataError, match=r"data.train_files: '.*nothing\*.jsonl' matches no file"):
    sources.sources_of(str(tmp_path / 'nothing*.jsonl'), 'data.train_files', 'text')


def test_mixture_honours_weights_per_step_and_over_many():
  weights, batch = [0.3, 0.5, 0.2], 16
  mix = pipeline.Mixture(weights, batch)
  counts = np.array([np.diff(mix.at(k)[0]) for k in range(5000)])
  assert (counts.sum(axis=1) == batch).all()
  for s, w in enumerate(weights):
    assert set(counts[:, s]) <= {int(np.floor(w * batch)), int(np.ceil(w * batch))}
    # over a period: the weight's share to within one row
    assert abs(counts[:mix.PERIOD, s].sum() - w * batch * mix.PERIOD) <= 1
    assert abs(counts[:, s].sum() / counts.sum() - w) < 1e-3
  # rows each source gave before step k = the sum of its per-step counts
  for k in (0, 1, 1023, 1024, 4999):
    np.testing.assert_array_equal(mix.at(k)[1], counts[:k].sum(axis=0))


def token_source(first_token, n_docs=40, seed=0):
  rng = np.random.default_rng(first_token)
  lengths = rng.integers(3, 30, n_docs)
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  tokens = rng.integers(first_token, first_token + 100, offsets[-1]).astype(np.int32)
  return pipeline.PackedRows(cache.Documents(tokens, offsets[:-1], lengths), 8, seed, True)


def test_mixed_batches_follow_the_weights_and_split_over_processes():
  srcs = [token_source(0), token_source(1000)]
  it = pipeline.BatchIterator(srcs, 8, 0, 1, weights=[0.25, 0.75])
  from_b = [int((it.batch_at(k)['inputs'][:, 0] >= 1000).sum()) for k in range(200)]
  assert set(from_b) == {6}
  # every row of each source is used once per epoch, across steps
  seen = np.concatenate([it.batch_at(k)['inputs'][:2, 0] for k in range(200)])
  assert len(seen) == 400
  for k in (0, 3, 177):
    whole = it.batch_at(k)
    parts = [pipeline.BatchIterator(srcs, 8, p, 2, weights=[0.25, 0.75]).batch_at(k)
             for p in range(2)]
    for f in packing.FIELDS:
      np.testing.assert_array_equal(np.concatenate([p[f] for p in parts]), whole[f])


def corpus_config(tmp_path, **data):
  c = config_lib.load_experiment_module('lm_tiny').get_config()
  c.data.backend = 'files'
  c.data.cache_dir = str(tmp_path / 'cache')
  c.data.seq_len = 32
  c.data.global_batch_size = 8
  c.data.eval_batches = 2
  c.data.workers = 1
  for k, v in data.items():
    c.data[k] = v
  return c


@pytest.fixture(scope='module')
def hf_tokenizer(tmp_path_factory):
  """A small word-level tokenizer.json with an EOS, written by the test."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  folder = tmp_path_factory.mktemp('tok')
  vocab = {'<eos>': 0, '<unk>': 1, 'document': 2, ':': 3}
  vocab.update({f'w{i}': 4 + i for i in range(50)})
  vocab.update({str(i): 54 + i for i in range(200)})
  tok = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(folder / 'tokenizer.json'))
  (folder / 'tokenizer_config.json').write_text(json.dumps({'eos_token': '<eos>'}))
  return str(folder / 'tokenizer.json')


def test_files_corpus_builds_caches_and_resumes_exactly(tmp_path, hf_tokenizer):
  (tmp_path / 'data').mkdir()
  write_jsonl(tmp_path / 'data' / 'train.jsonl', TEXTS)
  write_jsonl(tmp_path / 'data' / 'eval.jsonl', TEXTS[::-1][:60])
  c = corpus_config(tmp_path, train_files=str(tmp_path / 'data' / 'train*.jsonl'),
                    eval_files=str(tmp_path / 'data' / 'eval.jsonl'), tokenizer=hf_tokenizer)
  c.model.vocab_size = 256
  data = pipeline.build(c)
  vocab = tokenizer_lib.load(hf_tokenizer)
  # the first eval row is the eval file's first document, then EOS (unshuffled)
  first = vocab.encode(TEXTS[-1]) + [vocab.eos_id]
  np.testing.assert_array_equal(data.eval_batches[0]['inputs'][0][:len(first)], first)
  seen = [next(data.train) for _ in range(7)]  # several epochs of a small corpus
  assert data.train.get_state() == {'step': 7}
  resumed = pipeline.build(c)
  resumed.train.set_state({'step': 4})
  for want in seen[4:]:
    got = next(resumed.train)
    for f in packing.FIELDS:
      np.testing.assert_array_equal(got[f], want[f])
  assert len(os.listdir(tmp_path / 'cache' / 'tokens')) == 2  # train and eval caches


def test_held_out_documents_when_no_eval_files(tmp_path, hf_tokenizer):
  write_jsonl(tmp_path / 'all.jsonl', TEXTS * 3)
  c = corpus_config(tmp_path, train_files=str(tmp_path / 'all.jsonl'), tokenizer=hf_tokenizer,
                    validation_percent=10)
  c.model.vocab_size = 256
  corpus = pipeline.corpus_of(c)
  vocab = tokenizer_lib.load(hf_tokenizer)
  built = pipeline.tokenize(c, corpus, vocab)[0]
  train, valid = built.documents('train', 10), built.documents('validation', 10)
  assert len(train.lengths) + len(valid.lengths) == 600
  assert 20 < len(valid.lengths) < 100
  keys = [f'all.jsonl:{i}' for i in range(600)]
  assert len(valid.lengths) == sum(sources.split_of(k, 10) == 'validation' for k in keys)


def kill_tokenizing_at(monkeypatch, n):
  """cache.tokenize_shard that raises KeyboardInterrupt (a kill) at its n-th call; returns
  (the real function, the list of calls' arguments)."""
  real, calls = cache.tokenize_shard, []

  def dies(*args):
    calls.append(args)
    if len(calls) == n:
      raise KeyboardInterrupt
    return real(*args)

  monkeypatch.setattr(cache, 'tokenize_shard', dies)
  return real, calls


def test_interrupted_cache_build_resumes_to_the_same_bytes(tmp_path, hf_tokenizer, monkeypatch):
  for i in range(6):
    write_jsonl(tmp_path / f'part{i}.jsonl', TEXTS[i * 30:(i + 1) * 30])
  source = sources.sources_of(str(tmp_path / 'part*.jsonl'), 'f', 'text')[0]
  vocab = tokenizer_lib.load(hf_tokenizer)
  monkeypatch.setattr(cache, 'SHARD_BYTES', 1)  # a shard per file
  whole = cache.build(source, vocab, tmp_path / 'c1', 'f', workers=1)

  real, calls = kill_tokenizing_at(monkeypatch, 3)
  with pytest.raises(KeyboardInterrupt):
    cache.build(source, vocab, tmp_path / 'c2', 'f', workers=1)
  partial = [p for p in os.listdir(tmp_path / 'c2' / 'tokens') if p.endswith('.partial')]
  assert len(os.listdir(tmp_path / 'c2' / 'tokens' / partial[0])) == 2
  calls.clear()
  monkeypatch.setattr(cache, 'tokenize_shard', lambda *a: calls.append(a) or real(*a))
  resumed = cache.build(source, vocab, tmp_path / 'c2', 'f', workers=1)
  assert len(calls) == 4  # only the shards the killed build had not written
  for name in ('tokens', 'offsets', 'buckets'):
    np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name))
  assert os.listdir(tmp_path / 'c2' / 'tokens') == [resumed.directory.name]
  # the process pool gives the same bytes
  monkeypatch.setattr(cache, 'tokenize_shard', real)
  pooled = cache.build(source, vocab, tmp_path / 'c3', 'f', workers=2)
  np.testing.assert_array_equal(pooled.tokens, whole.tokens)


def test_trained_sentencepiece_when_no_tokenizer(tmp_path):
  lines = [l for l in open(os.path.join(os.path.dirname(json.__file__), 'decoder.py'))]
  write_jsonl(tmp_path / 'code.jsonl', [''.join(lines[i:i + 20]) for i in range(0, 350, 5)])
  c = corpus_config(tmp_path, train_files=str(tmp_path / 'code.jsonl'), validation_percent=10)
  c.model.vocab_size = 300  # too small: 256 byte pieces and every character
  with pytest.raises(ValueError, match=r'model.vocab_size=300: cannot train a SentencePiece '
                     r'tokenizer .*Vocabulary size is smaller than required_chars'):
    pipeline.build(c)
  c.model.vocab_size = 600
  data = pipeline.build(c)
  assert data.vocab_path.endswith('spm.model') and data.vocab_size == 600
  assert next(data.train)['inputs'].max() < 600


@pytest.mark.parametrize('setup,message', [
    (lambda p: (p / 'x.jsonl.gz').write_bytes(gzip.compress(b'{"text": "a"}\n' * 50)[:-9]),
     r'x.jsonl.gz: cannot be read \(EOFError'),
    (lambda p: (p / 'x.jsonl').write_text('{"body": "a"}\n' * 30),
     r"data.train_files: 30 of 30 records \(100.00%\) are malformed.*no 'text' field"),
    (lambda p: (p / 'x.jsonl').write_text('{"text": "  "}\n' * 30),
     r'data.train_files: no usable document in .*x.jsonl: all 30 records are empty'),
    (lambda p: (p / 'x.parquet').write_bytes(b'PAR1 not really'),
     r'x.parquet: cannot be read'),
    (lambda p: (p / 'x.csv').write_text('a,b\n'), r'x.csv: unknown format'),
])
def test_bad_corpus_is_one_line_and_leaves_no_cache(tmp_path, hf_tokenizer, setup, message):
  setup(tmp_path)
  c = corpus_config(tmp_path, train_files=str(tmp_path / 'x.*'), tokenizer=hf_tokenizer)
  c.model.vocab_size = 256
  with pytest.raises(sources.DataError, match=message):
    pipeline.build(c)
  tokens = tmp_path / 'cache' / 'tokens'
  assert not tokens.exists() or not [p for p in os.listdir(tokens) if '.' not in p]


@pytest.mark.parametrize('setup,message', [
    (lambda p: (p / 'x.jsonl').write_text('{"body": "a"}\n' * 30),
     r"data.train_files: no usable document in .*x.jsonl: 30 of 30 records malformed \(first: .*x.jsonl line 1: "
     r"no 'text' field"),
    (lambda p: (p / 'x.txt').write_bytes(b'\xff\xfe not utf-8'),
     r'data.train_files: no usable document in .*x.txt: 1 of 1 records malformed .*not UTF-8'),
    (lambda p: (p / 'x.jsonl').write_text(''),
     r'data.train_files: no usable document in .*x.jsonl: the file\(s\) hold no records'),
    (lambda p: (p / 'x.jsonl.gz').write_bytes(gzip.compress(b'{"text": "a"}\n' * 50)[:-9]),
     r'x.jsonl.gz: cannot be read \(EOFError'),
])
def test_unusable_corpus_names_the_file_not_the_tokenizer(tmp_path, setup, message):
  """With no data.tokenizer one is trained first: an unusable corpus must be blamed on its
  files, not reported as a SentencePiece failure about model.vocab_size."""
  setup(tmp_path)
  c = corpus_config(tmp_path, train_files=str(tmp_path / 'x.*'))
  with pytest.raises(sources.DataError, match=message):
    pipeline.build(c)


def test_file_format_names_what_suffixes_do_not(tmp_path, hf_tokenizer):
  (tmp_path / 'ls.1.gz').write_bytes(gzip.compress(b'LS(1) list directory contents\n'))
  (tmp_path / 'events.log').write_text('\n'.join(json.dumps({'text': t}) for t in TEXTS[:3]))
  with pytest.raises(sources.DataError, match=r"ls.1.gz: unknown format.*data.file_format"):
    sources.sources_of(str(tmp_path / 'ls.1.gz'), 'f', 'text')
  man = sources.sources_of(str(tmp_path / 'ls.1.gz'), 'f', 'text', 'text')[0]
  assert [t for _, t in sources.read_documents(man.files[0], 'text', sources.Counts(),
                                               'text')] == ['LS(1) list directory contents\n']
  log = sources.sources_of(str(tmp_path / 'events.log'), 'f', 'text', 'jsonl')[0]
  assert [t for _, t in sources.read_documents(log.files[0], 'text', sources.Counts(),
                                               'jsonl')] == TEXTS[:3]
  with pytest.raises(sources.DataError, match=r'parquet files cannot be .gz-compressed'):
    sources.format_of('x.gz', 'parquet')
  vocab = tokenizer_lib.load(hf_tokenizer)  # the format is part of the cache's key
  as_text = sources.Source(log.files, log.keys, 1.0, 'text', 'text')
  assert cache.cache_key(as_text, vocab) != cache.cache_key(log, vocab)
  c = corpus_config(tmp_path, train_files=str(tmp_path / 'events.log'))
  c.data.file_format = 'csv'
  with pytest.raises(config_lib.ConfigError, match=r"data.file_format='csv' must be one of"):
    config_lib.validate(c, 1)


def test_a_large_jsonl_file_is_read_in_line_ranges_with_whole_file_keys(
    tmp_path, hf_tokenizer, monkeypatch):
  """Split into byte ranges (so every worker tokenizes a part of one big file), a JSON-lines
  file gives the documents, keys and cache bytes of a whole read, blank lines included."""
  lines = [json.dumps({'text': t}) for t in TEXTS]
  lines[7] = lines[50] = ''  # blank lines still count in the line index
  (tmp_path / 'big.jsonl').write_text('\n'.join(lines))  # no newline at the end
  path = str(tmp_path / 'big.jsonl')
  whole = list(sources.read_documents(path, 'text', sources.Counts()))
  size = os.path.getsize(path)
  for target in (1, 97, 1000, size // 3):
    ranges = sources.line_ranges(path, size, target)
    assert ranges[0].start == 0 and ranges[-1].end == size
    first, got = 0, []
    for r in ranges:
      got += sources.read_documents(path, 'text', sources.Counts(),
                                    lines=dataclasses.replace(r, first=first))
      first += sources.count_lines(path, r.start, r.end)
    assert first == len(lines) and got == whole, target
  assert sources.line_ranges(path, size, size) is None  # small enough to read whole
  source = sources.sources_of(path, 'f', 'text')[0]
  vocab = tokenizer_lib.load(hf_tokenizer)
  built = cache.build(source, vocab, tmp_path / 'c1', 'f', workers=1)
  monkeypatch.setattr(cache, 'RANGE_BYTES', 2000)
  assert len(cache.plan(source)) > 8
  ranged = cache.build(source, vocab, tmp_path / 'c2', 'f', workers=1)
  for name in ('tokens', 'offsets', 'buckets'):
    np.testing.assert_array_equal(getattr(ranged, name), getattr(built, name))


def test_a_large_compressed_jsonl_file_is_read_by_one_reader_in_batches_for_the_workers(
    tmp_path, hf_tokenizer, monkeypatch):
  """A .jsonl.gz larger than RANGE_BYTES: one decompressing reader cuts it into batches of
  whole lines that the workers tokenize; the cache equals the whole-file read's, and a
  build killed between parts resumes with the parts it wrote."""
  lines = [json.dumps({'text': t}) for t in TEXTS]
  lines[3] = ''
  path = tmp_path / 'big.jsonl.gz'
  path.write_bytes(gzip.compress(('\n'.join(lines) + '\n').encode()))
  batches = list(sources.line_batches(str(path), 1000))
  assert len(batches) > 5 and [b.first for b in batches[:2]] == [0, batches[1].first]
  got = [d for b in batches for d in sources.read_documents(str(path), 'text',
                                                           sources.Counts(), lines=b)]
  assert got == list(sources.read_documents(str(path), 'text', sources.Counts()))
  source = sources.sources_of(str(path), 'f', 'text')[0]
  vocab = tokenizer_lib.load(hf_tokenizer)
  whole = cache.build(source, vocab, tmp_path / 'c1', 'f', workers=1)
  monkeypatch.setattr(cache, 'RANGE_BYTES', 1000)  # below the file's 1.3 kB
  (shard,) = cache.plan(source)
  assert shard.stream
  real, calls = kill_tokenizing_at(monkeypatch, 4)
  with pytest.raises(KeyboardInterrupt):
    cache.build(source, vocab, tmp_path / 'c2', 'f', workers=1)
  calls.clear()
  monkeypatch.setattr(cache, 'tokenize_shard', lambda *a: calls.append(a) or real(*a))
  resumed = cache.build(source, vocab, tmp_path / 'c2', 'f', workers=1)
  assert len(calls) == len(batches) - 3  # the parts written before the kill are kept
  for name in ('tokens', 'offsets', 'buckets'):
    np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name))


def test_each_file_is_stat_ed_once_per_build(tmp_path, hf_tokenizer, monkeypatch):
  """On gs:// every stat is a network call: the cache key, the shard plan and the progress
  bar read the sizes taken once when the sources are made."""
  import collections
  for i in range(3):
    write_jsonl(tmp_path / f'part{i}.jsonl', TEXTS[i * 60:(i + 1) * 60])
  calls, real = collections.Counter(), sources.stat
  monkeypatch.setattr(sources, 'stat', lambda path: calls.update([path]) or real(path))
  c = corpus_config(tmp_path, train_files=str(tmp_path / 'part*.jsonl'),
                    tokenizer=hf_tokenizer, validation_percent=20)
  pipeline.build(c)
  assert sorted(calls) == [str(tmp_path / f'part{i}.jsonl') for i in range(3)]
  assert set(calls.values()) == {1}


def test_corpus_smaller_than_a_row(tmp_path, hf_tokenizer):
  (tmp_path / 'x.jsonl').write_text('{"text": "w1 w2"}\n')
  c = corpus_config(tmp_path, train_files=str(tmp_path / 'x.jsonl'), tokenizer=hf_tokenizer)
  c.model.vocab_size = 256
  with pytest.raises(sources.DataError, match=r'data.train_files: the train split has 3 '
                     r'tokens, fewer than data.seq_len \+ 1 = 33'):
    pipeline.build(c)


def test_tokenizer_that_does_not_load(tmp_path):
  write_jsonl(tmp_path / 'x.jsonl', TEXTS)
  (tmp_path / 'tok.model').write_bytes(b'not a model')
  c = corpus_config(tmp_path, train_files=str(tmp_path / 'x.jsonl'),
                    tokenizer=str(tmp_path / 'tok.model'))
  with pytest.raises(sources.DataError, match=r'data.tokenizer: .*tok.model is not a '
                     r'SentencePiece model'):
    pipeline.build(c)


def run_main(*flags):
  return subprocess.run([sys.executable, '-m', 'guide_jax.main', *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=600,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def test_config_errors_exit_2(tmp_path):
  write_jsonl(tmp_path / 'x.jsonl', TEXTS)
  base = ('--config=experiments/lm_tiny.py', f'--workdir={tmp_path / "wd"}',
          '--config.data.backend=files')
  out = run_main(*base, f'--config.data.train_files={tmp_path}/x.jsonl,0;{tmp_path}/x.jsonl,1')
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith('error: data.train_files: source 0')
  out = run_main(*base, f'--config.data.train_files={tmp_path}/missing/*.jsonl')
  assert out.returncode == 2
  assert 'matches no file' in out.stderr.strip().splitlines()[-1]


# ~60 s of compiles; the files backend keeps its in-process tests (prepare, resume, errors)
@pytest.mark.slow
def test_cli_guide_student_on_a_jsonl_corpus(tmp_path):
  stdlib = os.path.dirname(json.__file__)
  texts = [open(os.path.join(stdlib, n)).read() for n in sorted(os.listdir(stdlib))
           if n.endswith('.py')]
  texts = [t[i:i + 2000] for t in texts for i in range(0, len(t), 2000)]
  write_jsonl(tmp_path / 'corpus.jsonl', texts * 4)
  files = [f'--config.{side}data.backend=files' for side in ('', 'teacher.pretrain.')] + [
      f'--config.{side}data.train_files={tmp_path}/*.jsonl'
      for side in ('', 'teacher.pretrain.')] + [
      f'--config.{side}data.validation_percent=20' for side in ('', 'teacher.pretrain.')]
  out = run_main('--config=experiments/guide_tiny.py', f'--workdir={tmp_path / "wd"}',
                 '--config.train.steps=3', '--config.teacher.pretrain.train.steps=3',
                 '--config.teacher.pretrain.train.warmup_steps=1',
                 '--config.train.warmup_steps=1', '--config.train.progress_bar=False',
                 '--config.teacher.pretrain.train.progress_bar=False', *files)
  assert out.returncode == 0, out.stderr[-3000:]
  records = read_metrics(tmp_path / 'wd')
  assert any('train/kd' in r for r in records) and any('eval/loss' in r for r in records)
  assert any('eval/bits_per_byte' in r for r in records)
  assert any('teacher/eval_bits_per_byte' in r for r in records)
  saved = json.loads((tmp_path / 'wd' / 'config.json').read_text())
  assert saved['data']['train_files'] == f'{tmp_path}/*.jsonl'
  assert sorted(os.listdir(tmp_path / 'wd' / 'teacher' / 'checkpoints')) == ['3']
  assert saved['data']['tokenizer'].endswith('spm.model')  # the teacher's, trained on the files


def test_prepare_builds_the_cache_training_reads(tmp_path, hf_tokenizer):
  write_jsonl(tmp_path / 'x.jsonl', TEXTS)
  flags = ['--config=experiments/lm_tiny.py', '--config.data.backend=files',
           f'--config.data.train_files={tmp_path}/x.jsonl', f'--config.data.tokenizer={hf_tokenizer}',
           f'--config.data.cache_dir={tmp_path}/cache', '--config.model.vocab_size=256']
  out = subprocess.run([sys.executable, '-m', 'guide_jax.prepare', *flags], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  (built,) = summary['caches']
  assert (built['files'], built['documents'], built['malformed']) == (1, 200, 0)
  c = corpus_config(tmp_path, train_files=f'{tmp_path}/x.jsonl', tokenizer=hf_tokenizer)
  c.model.vocab_size = 256
  corpus = pipeline.corpus_of(c)
  assert str(pipeline.tokenize(c, corpus, tokenizer_lib.load(hf_tokenizer))[0].directory) \
      == built['directory']
  bad = subprocess.run([sys.executable, '-m', 'guide_jax.prepare', *flags[:-1],
                        '--config.data.text_key=body'], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1].startswith(
      "error: data.train_files: 200 of 200 records (100.00%) are malformed")


def test_bits_per_byte_is_nats_over_the_texts_bytes(tmp_path):
  import math
  import jax
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from guide_jax import sharding
  from guide_jax.models import transformer
  from guide_jax.train import steps, trainer
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(TEXTS, trainers.BpeTrainer(
      vocab_size=300, special_tokens=['<eos>'], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.save(str(tmp_path / 'tokenizer.json'))
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps({'eos_token': '<eos>'}))
  write_jsonl(tmp_path / 'x.jsonl', TEXTS)
  c = corpus_config(tmp_path, train_files=str(tmp_path / 'x.jsonl'),
                    eval_files=str(tmp_path / 'x.jsonl'), tokenizer=str(tmp_path / 'tokenizer.json'))
  c.model.vocab_size = 320
  data = pipeline.build(c)
  vocab = tokenizer_lib.load(str(tmp_path / 'tokenizer.json'))
  batch = data.eval_batches[0]
  text_bytes = sum(len(vocab.decode([t for t, w in zip(ts, ws) if w > 0 and t != vocab.eos_id])
                       .encode()) for ts, ws in zip(batch['targets'], batch['loss_weights']))
  assert batch['target_bytes'].sum() > text_bytes  # unweighted: also the boundary targets
  mesh = sharding.make_mesh(c.mesh)
  params = transformer.init_params(c.model, jax.random.key(0))
  step = jax.jit(steps.make_eval_step(steps.lm_objective(c.model, 0.0, 0)))
  with jax.set_mesh(mesh), sharding.use_rules(c.logical_rules):
    out = trainer.evaluate(step, params, [batch], mesh, c.logical_rules)
  tokens = batch['loss_weights'].sum()
  assert out['eval/bits_per_byte'] == pytest.approx(
      out['eval/loss'] * tokens / (math.log(2) * text_bytes), rel=1e-5)


@pytest.mark.slow  # ~6 s: spawns two process pools
def test_ranges_and_stream_parts_in_a_process_pool_give_the_whole_file_cache(
    tmp_path, hf_tokenizer, monkeypatch):
  """The pool's path: line counts of the ranges by pool.map, and a stream shard's parts
  submitted as its reader cuts them, at most two per worker in flight."""
  text = ''.join(json.dumps({'text': t}) + '\n' for t in TEXTS)
  (tmp_path / 'big.jsonl').write_text(text)
  (tmp_path / 'big.jsonl.gz').write_bytes(gzip.compress(text.encode()))
  vocab = tokenizer_lib.load(hf_tokenizer)
  for name in ('big.jsonl', 'big.jsonl.gz'):
    source = sources.sources_of(str(tmp_path / name), 'f', 'text')[0]
    monkeypatch.setattr(cache, 'RANGE_BYTES', 4 << 20)
    whole = cache.build(source, vocab, tmp_path / f'{name}-whole', 'f', workers=1)
    monkeypatch.setattr(cache, 'RANGE_BYTES', 1000)
    assert len(cache.plan(source)) > 4 or cache.plan(source)[0].stream
    pooled = cache.build(source, vocab, tmp_path / f'{name}-pool', 'f', workers=2)
    for field in ('tokens', 'offsets', 'buckets'):
      np.testing.assert_array_equal(getattr(pooled, field), getattr(whole, field))
