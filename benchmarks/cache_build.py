"""Cache build speed for one large JSON-lines file against the same lines as 16 files.

  python benchmarks/cache_build.py [--copies=4] [--encode_threads=0] [--out=FILE.json]

Corpus: this interpreter's standard library (the embedded corpus, ~12.6 MB of .py files)
`copies` times over as JSON lines, written once as one file and once as 16 files holding
the same lines in the same order. Each layout is tokenized into a fresh cache by
`cache.build` with 1 worker (in process; the tokenizer's own threads) and with a pool of
one worker per core, one build after the other, with the demo's SentencePiece tokenizer.
The one file is split into byte ranges of cache.RANGE_BYTES, so that every worker has a
part of it; the arm `one_file_unsplit` reads it whole, in one shard, as before ranges.
Printed per arm: MB/s of (uncompressed) text; then whether the caches' tokens and document
offsets are the same bytes in every arm, and whether the split buckets (hashes of document
keys, which name the file) agree between worker counts and between a file read whole and
read in ranges or batches. The gzipped layouts (`.jsonl.gz`, the same lines) are read by
one decompressing reader that hands batches of lines to the pool (`one_gz`), or whole by
one worker (`one_gz_unsplit`, as before).

`--encode_threads=1` makes the in-process arms encode on one thread, as pool workers do:
then only the pool uses more than one core, as on a machine with more cores than the
tokenizer's threads use well (a 2-core machine otherwise hides the difference, because
the tokenizer's own threads already fill both cores).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile
import time

from absl import app, flags

_COPIES = flags.DEFINE_integer('copies', 4, 'Times the standard library is repeated.')
_OUT = flags.DEFINE_string('out', '', 'Also write the JSON here.')
_ENCODE_THREADS = flags.DEFINE_integer('encode_threads', 0, 'Threads of the in-process '
                                       'encode (0: the tokenizer\'s default, every core).')


def write_layouts(work: pathlib.Path, copies: int, parts: int = 16) -> int:
  """one/all.jsonl and many/partNN.jsonl, and the same gzipped; returns the text's bytes."""
  import gzip
  from guide_jax.data import embedded
  corpus = embedded.EmbeddedCorpus()
  lines = [json.dumps({'text': (corpus.root / f).read_text(encoding='utf-8', errors='replace')})
           + '\n' for f in corpus.files] * copies
  files = {'one/all.jsonl': ''.join(lines)}
  for i in range(parts):
    files[f'many/part{i:02d}.jsonl'] = ''.join(
        lines[len(lines) * i // parts:len(lines) * (i + 1) // parts])
  for name, text in files.items():
    for path, data in ((work / name, text.encode()),
                       (work / f'{name}.gz', gzip.compress(text.encode(), compresslevel=6))):
      path.parent.mkdir(exist_ok=True)
      path.write_bytes(data)
  return os.path.getsize(work / 'one' / 'all.jsonl')


def main(argv):
  del argv
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import numpy as np
  from guide_jax import config as config_lib
  from guide_jax.data import cache, pipeline, sources
  from guide_jax.data import tokenizer as tokenizer_lib
  from guide_jax.train import flops
  if _ENCODE_THREADS.value:
    tokenizer_lib.ENCODE_THREADS = _ENCODE_THREADS.value
  cpu = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo')
              if line.startswith('model name')), 'unknown CPU')
  peak = flops.measured_matmul_peak('float32') / 1e9
  print(f'# {cpu}; {os.cpu_count()} cores; float32 matmul peak {peak:.0f} GFLOP/s', flush=True)
  demo = config_lib.load_experiment_module('demo').get_config()
  vocab = pipeline.load_vocabulary(demo, pipeline.corpus_of(demo))
  work = pathlib.Path(tempfile.mkdtemp(prefix='guide_jax_cache_bench_'))
  nbytes = write_layouts(work, _COPIES.value)
  results, built = {}, {}
  split_bytes = cache.RANGE_BYTES
  layouts = (('one_file_unsplit', 'one/all.jsonl', 1 << 62),  # as before byte ranges
             ('one_file', 'one/all.jsonl', split_bytes),
             ('16_files', 'many/part*.jsonl', split_bytes),
             ('one_gz_unsplit', 'one/all.jsonl.gz', 1 << 62),  # as before the stream reader
             ('one_gz', 'one/all.jsonl.gz', split_bytes),
             ('16_gz', 'many/part*.jsonl.gz', split_bytes))
  for layout, pattern, cache.RANGE_BYTES in layouts:
    source = sources.sources_of(str(work / pattern), 'bench', 'text')[0]
    shards = len(cache.plan(source))
    for workers in (1, os.cpu_count()):
      for f in source.files:  # the page cache holds every layout alike
        pathlib.Path(f).read_bytes()
      t = time.perf_counter()
      built[layout, workers] = cache.build(source, vocab, work / f'{layout}_{workers}',
                                           'bench', workers=workers)
      seconds = time.perf_counter() - t
      arm = f'{layout}_workers_{workers}'
      results[arm] = {'mb_s': round(nbytes / seconds / 1e6, 2), 'seconds': round(seconds, 2),
                      'shards': shards}
      print(json.dumps({arm: results[arm]}), flush=True)
  first = next(iter(built.values()))
  same = {name: all(np.array_equal(getattr(c, name), getattr(first, name))
                    for c in built.values()) for name in ('tokens', 'offsets')}
  same['buckets_per_layout'] = all(
      np.array_equal(built[layout, 1].buckets, built[layout, os.cpu_count()].buckets)
      for layout, _, _ in layouts)
  same['buckets_split_as_whole'] = all(  # a file's keys do not depend on how it is read
      np.array_equal(built[f'{name}_unsplit', 1].buckets, built[name, w].buckets)
      for name in ('one_file', 'one_gz') for w in (1, os.cpu_count()))
  summary = {'cpu': cpu, 'cores': os.cpu_count(), 'matmul_peak_gflops': round(peak),
             'encode_threads': tokenizer_lib.ENCODE_THREADS,
             'corpus_mb': round(nbytes / 1e6, 2), 'tokens': int(first.manifest['tokens']),
             'range_bytes': split_bytes, 'shard_bytes': cache.SHARD_BYTES,
             'results': results, 'identical': same}
  print(json.dumps(summary))
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(summary, indent=1) + '\n')


if __name__ == '__main__':
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
  app.run(main)
