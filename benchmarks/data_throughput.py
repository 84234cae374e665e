"""Throughput of the files data path: tokenizing into the cache, and reading batches from it.

  python benchmarks/data_throughput.py [--out=benchmarks/data_throughput.json]

Corpus: this interpreter's standard library (the embedded corpus, ~12.6 MB of .py files)
four times over, written as 16 JSONL files into a temporary directory: ~50 MB read by the
files backend. Measured, in one process, one after the other:
  encode_mb_s        the tokenizer's own batch encode (its threads), text already in memory
  cache_mb_s         `cache.build`: read + parse + tokenize + write, in one process (the
                     tokenizer's threads) and with a pool of one worker per core
  iterator_tokens_s  `BatchIterator.batch_at` over the cache at experiments/demo.py's batch
                     (16 x 128), on one core, no prefetch
  trainer_tokens_s   the demo's student train step (CE + KD, bench's kd arm), for the ratio
for SentencePiece (the demo's 4096-piece model, trained here if absent) and a byte-level
BPE tokenizer.json of 32k tokens trained here with the `tokenizers` library (the kind GPT-2,
Llama 3 and Qwen ship). The last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile
import time

from absl import app, flags

_OUT = flags.DEFINE_string('out', '', 'Also write the JSON here.')


def stdlib_jsonl(folder: pathlib.Path, copies: int = 4, shards: int = 16):
  from guide_jax.data import embedded
  corpus = embedded.EmbeddedCorpus()
  texts = [(corpus.root / f).read_text(encoding='utf-8', errors='replace')
           for f in corpus.files] * copies
  for i in range(shards):
    with open(folder / f'part{i}.jsonl', 'w') as f:
      for t in texts[i::shards]:
        f.write(json.dumps({'text': t}) + '\n')
  return texts, sum(len(t.encode()) for t in texts)


def train_bpe(texts: list[str], path: pathlib.Path) -> str:
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=32000, special_tokens=['<|endoftext|>'], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  path.mkdir(parents=True, exist_ok=True)
  tok.save(str(path / 'tokenizer.json'))
  (path / 'tokenizer_config.json').write_text(json.dumps({'eos_token': '<|endoftext|>'}))
  return str(path / 'tokenizer.json')


def measure(name: str, vocab, texts, nbytes, source, work: pathlib.Path, trainer_tokens_s):
  from guide_jax.data import cache, pipeline
  t = time.perf_counter()
  vocab.encode_batch(texts)
  encode = nbytes / (time.perf_counter() - t) / 1e6
  out = {'tokenizer': name, 'vocab_size': vocab.size, 'encode_mb_s': round(encode, 2)}
  for workers in (1, os.cpu_count()):
    t = time.perf_counter()
    built = cache.build(source, vocab, work / f'{name}_{workers}', 'bench', workers=workers)
    out[f'cache_mb_s_workers_{workers}'] = round(nbytes / (time.perf_counter() - t) / 1e6, 2)
  out['tokens'] = int(built.manifest['tokens'])
  rows = pipeline.PackedRows(built.documents(), 128, 0, shuffle=True)
  it = pipeline.BatchIterator(rows, 16, 0, 1)
  it.batch_at(0)  # the epoch's order, once
  steps, t = 2000, time.perf_counter()
  for k in range(steps):
    it.batch_at(k)
  out['iterator_tokens_s'] = round(steps * 16 * 128 / (time.perf_counter() - t))
  out['iterator_over_trainer'] = round(out['iterator_tokens_s'] / trainer_tokens_s, 1)
  print(json.dumps(out), flush=True)
  return out


def main(argv):
  del argv
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  from guide_jax import bench, config as config_lib
  from guide_jax.data import pipeline, sources
  from guide_jax.data import tokenizer as tokenizer_lib

  demo = config_lib.load_experiment_module('demo').get_config()
  trainer = bench.run_arms(demo, 5, ['kd'], log=lambda *a: None)['arms']['kd']['tokens_per_sec']
  print(json.dumps({'demo_trainer_kd_tokens_s': round(trainer)}), flush=True)

  work = pathlib.Path(tempfile.mkdtemp(prefix='guide_jax_data_bench_'))
  texts, nbytes = stdlib_jsonl(work)
  source = sources.sources_of(str(work / 'part*.jsonl'), 'bench', 'text')[0]
  sp = pipeline.load_vocabulary(demo, pipeline.corpus_of(demo))
  bpe = tokenizer_lib.load(train_bpe(texts, work / 'bpe'))
  results = [measure(n, v, texts, nbytes, source, work, trainer)
             for n, v in (('sentencepiece_4k', sp), ('bpe_32k', bpe))]
  summary = {'corpus_mb': round(nbytes / 1e6, 2), 'cpus': os.cpu_count(),
             'demo_trainer_kd_tokens_s': round(trainer), 'results': results}
  print(json.dumps(summary))
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(summary, indent=1) + '\n')


if __name__ == '__main__':
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
  app.run(main)
