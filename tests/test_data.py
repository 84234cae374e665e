import numpy as np
import pytest

from guide_jax.data import cache, embedded, packing, pipeline


def test_pack_rows_segments_positions_and_weights():
  # three documents: [10 11 12 1] [20 21 1] [30 31 32 33 1]
  offsets = np.array([0, 4, 7, 12])
  tokens = np.array([10, 11, 12, 1, 20, 21, 1, 30, 31, 32, 33, 1])
  docs = packing.doc_ids_from_offsets(offsets)
  row = packing.pack_rows(tokens, docs, np.array([2]), seq_len=6)
  np.testing.assert_array_equal(row['inputs'][0], [12, 1, 20, 21, 1, 30])
  np.testing.assert_array_equal(row['targets'][0], [1, 20, 21, 1, 30, 31])
  np.testing.assert_array_equal(row['segment_ids'][0], [1, 1, 2, 2, 2, 3])
  np.testing.assert_array_equal(row['positions'][0], [0, 1, 0, 1, 2, 0])
  # EOS of a document does not predict the next document's first token
  np.testing.assert_array_equal(row['loss_weights'][0], [1, 0, 1, 1, 0, 1])


def stream_source(seed=0, shuffle=True):
  rng = np.random.default_rng(7)
  lengths = rng.integers(3, 40, 60)
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  tokens = rng.integers(3, 50, offsets[-1]).astype(np.int32)
  docs = cache.Documents(tokens, offsets[:-1], np.diff(offsets))
  return pipeline.PackedRows(docs, seq_len=16, seed=seed, shuffle=shuffle)


def test_packed_rows_equal_packing_the_epochs_concatenated_stream():
  src = stream_source()
  order, _, row_order = src._epoch(3)
  docs = src.docs
  stream = np.concatenate([docs.tokens[s:s + n] for s, n in
                           zip(docs.starts[order], docs.lengths[order])])
  ids = packing.doc_ids_from_offsets(np.concatenate([[0], np.cumsum(docs.lengths[order])]))
  rows = np.array([0, 7, src.rows_per_epoch - 1])
  want = packing.pack_rows(stream, ids, row_order[rows] * 16, 16)
  got = src.rows(3, rows)
  for k in packing.FIELDS:
    np.testing.assert_array_equal(got[k], want[k])


def test_prefetching_iterator_equals_batch_at_and_resumes():
  a = pipeline.BatchIterator(stream_source(), 8, 0, 1, prefetch=2)
  got = [next(a) for _ in range(5)]
  a.set_state({'step': 2})
  again = next(a)
  ref = pipeline.BatchIterator(stream_source(), 8, 0, 1)
  for i, batch in enumerate(got):
    np.testing.assert_array_equal(batch['inputs'], ref.batch_at(i)['inputs'])
  np.testing.assert_array_equal(again['inputs'], ref.batch_at(2)['inputs'])
  assert a.get_state() == {'step': 3}


def test_iterator_is_deterministic_and_resumes_exactly():
  a = pipeline.BatchIterator(stream_source(), 8, 0, 1)
  first = [next(a) for _ in range(30)]  # crosses epoch boundaries
  b = pipeline.BatchIterator(stream_source(), 8, 0, 1)
  for want in first[:12]:
    got = next(b)
    for k in packing.FIELDS:
      np.testing.assert_array_equal(got[k], want[k])
  state = b.get_state()
  c = pipeline.BatchIterator(stream_source(), 8, 0, 1)
  c.set_state(state)
  for want in first[12:]:
    got = next(c)
    for k in packing.FIELDS:
      np.testing.assert_array_equal(got[k], want[k])


def test_seed_changes_order_and_epochs_differ():
  a = pipeline.BatchIterator(stream_source(seed=0), 8, 0, 1).batch_at(0)
  b = pipeline.BatchIterator(stream_source(seed=1), 8, 0, 1).batch_at(0)
  assert not np.array_equal(a['inputs'], b['inputs'])


def test_processes_read_disjoint_shares_of_the_same_global_batch():
  whole = pipeline.BatchIterator(stream_source(), 8, 0, 1).batch_at(5)
  parts = [pipeline.BatchIterator(stream_source(), 8, p, 2).batch_at(5) for p in range(2)]
  for k in packing.FIELDS:
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])


def test_epoch_covers_every_row_once():
  src = stream_source()
  it = pipeline.BatchIterator(src, 1, 0, 1)
  rows = {tuple(it.batch_at(i)['inputs'][0]) for i in range(src.rows_per_epoch)}
  assert len(rows) == src.rows_per_epoch


def test_embedded_corpus_split_and_fingerprint(tmp_path):
  for i in range(40):
    (tmp_path / 'pkg').mkdir(exist_ok=True)
    (tmp_path / 'pkg' / f'm{i}.py').write_text(f'x = {i}\n')
  (tmp_path / 'tests').mkdir()
  (tmp_path / 'tests' / 'test_x.py').write_text('skip me\n')
  corpus = embedded.EmbeddedCorpus(str(tmp_path), validation_percent=20)
  assert all(not f.startswith('tests/') for f in corpus.files)
  assert len(corpus.files) == 40
  assert set(corpus.split_files('train')) | set(corpus.split_files('validation')) == set(corpus.files)
  assert corpus.split_files('validation')
  again = embedded.EmbeddedCorpus(str(tmp_path), validation_percent=20)
  assert again.fingerprint == corpus.fingerprint
  (tmp_path / 'pkg' / 'm0.py').write_text('x = 1000\n')
  assert embedded.EmbeddedCorpus(str(tmp_path), 20).fingerprint != corpus.fingerprint


def test_held_out_test_split(tmp_path):
  for i in range(60):
    (tmp_path / f'm{i}.py').write_text(f'x = {i}\n')
  two_way = embedded.EmbeddedCorpus(str(tmp_path), validation_percent=20)
  three_way = embedded.EmbeddedCorpus(str(tmp_path), validation_percent=20, test_percent=20)
  train, valid, test = (set(three_way.split_files(s)) for s in ('train', 'validation', 'test'))
  assert test and not (train & test) and not (valid & test)
  assert train | valid | test == set(three_way.files)
  assert valid == set(two_way.split_files('validation'))  # validation does not move
  assert train == set(two_way.split_files('train')) - test
  assert three_way.fingerprint != two_way.fingerprint   # its own tokenizer/token cache
  assert not two_way.split_files('test')


def test_eval_split_test_reads_the_test_files(tiny_config):
  tiny_config.data.test_percent = 20
  valid = pipeline.build(tiny_config).eval_batches
  tiny_config.data.eval_split = 'test'
  test = pipeline.build(tiny_config).eval_batches
  assert not np.array_equal(valid[0]['inputs'], test[0]['inputs'])


def test_empty_corpus_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match='data.embedded_root.*empty corpus'):
    embedded.EmbeddedCorpus(str(tmp_path))


def test_embedded_build_tokenizes_and_round_trips(tiny_config):
  data = pipeline.build(tiny_config)
  assert data.vocab_size == tiny_config.model.vocab_size
  batch = next(data.train)
  assert batch['inputs'].shape == (8, 64)
  assert batch['inputs'].max() < data.vocab_size
  from guide_jax.data import tokenizer
  vocab = tokenizer.Vocabulary(data.vocab_path)
  text = 'def f(x):\n    return x + 1\n'
  assert vocab.decode(vocab.encode(text)) == text
  assert len(data.eval_batches) == tiny_config.data.eval_batches


def test_evaluation_rows_spread_over_the_whole_split_and_say_what_they_cover():
  """The eval batches are rows i * R // n of the unshuffled split, not its first n rows: on a
  corpus whose documents differ in kind, they reach its last documents too."""
  rows = stream_source(shuffle=False)
  batches, coverage = pipeline.fixed_eval_batches([rows], 4, 3)
  picked = np.arange(12) * rows.rows_per_epoch // 12
  expected = np.concatenate([rows.rows(0, picked)['inputs']])
  np.testing.assert_array_equal(np.concatenate([b['inputs'] for b in batches]), expected)
  touched = rows.documents_in(picked)
  # by hand: a row covers stream positions [16 r, 16 r + 16]; documents end at `ends`
  ends = np.cumsum(rows.docs.lengths)
  by_hand = {int(np.searchsorted(ends, p, side='right')) for r in picked
             for p in range(16 * r, 16 * r + 17)}
  assert set(touched.tolist()) == by_hand and max(by_hand) >= 55  # the split's end
  assert coverage == {'rows': 12, 'tokens': 12 * 16, 'documents': len(by_hand),
                      'split_documents': 60, 'split_tokens': int(rows.docs.n_tokens)}
  first_rows = {int(np.searchsorted(ends, p, side='right')) for p in range(12 * 16 + 1)}
  assert max(first_rows) < 20  # what the first rows alone would have read
  # a split of fewer rows than asked: all of it, as many whole batches as fit
  batches, coverage = pipeline.fixed_eval_batches([rows], 4, 1000)
  assert coverage['rows'] == 4 * (rows.rows_per_epoch // 4) == 4 * len(batches)
