"""guide_jax as an lm-evaluation-harness model, on task YAMLs and local data the test writes."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hf_models
from conftest import REPO

lm_eval = pytest.importorskip('lm_eval')  # the `eval` extra

OFFLINE = {'HF_DATASETS_OFFLINE': '1', 'HF_HUB_OFFLINE': '1'}
PAIRS = [('def parse(', 'self, text):'), ('import ', 'os'), ('', 'return None'),
         ('for line in ', 'lines:\n'), ('class Message', '(object):'),
         ('x = ', '1 + 2'), ('    if not ', 'value:')]
PAGES = ['def main():\n    print("hello")\n' * 30, 'import sys\n' * 5]
TASKS = {
    'gj_toy_ll': '''task: gj_toy_ll
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/pairs.jsonl
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{continuation}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
''',
    'gj_toy_rolling': '''task: gj_toy_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/pages.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{page}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
''',
    'gj_toy_gen': '''task: gj_toy_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/pairs.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{continuation}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
''',
}


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp('llama'))
  hf_models.make('llama', folder, vocab_size=320)
  hf_models.make_tokenizer(folder, vocab_size=300)
  return folder


@pytest.fixture
def tasks_dir(tmp_path, monkeypatch):
  for k, v in OFFLINE.items():
    monkeypatch.setenv(k, v)
  with open(tmp_path / 'pairs.jsonl', 'w') as f:
    for context, continuation in PAIRS:
      f.write(json.dumps({'context': context, 'continuation': continuation}) + '\n')
  with open(tmp_path / 'pages.jsonl', 'w') as f:
    for page in PAGES:
      f.write(json.dumps({'page': page}) + '\n')
  (tmp_path / 'tasks').mkdir()
  for name, text in TASKS.items():
    (tmp_path / 'tasks' / f'{name}.yaml').write_text(text.format(data=tmp_path))
  return tmp_path / 'tasks'


def own_loglikelihood(loaded, context_ids, continuation_ids):
  """log P(continuation | context): one unpadded forward pass, nothing shared with the
  harness adapter's batching."""
  from guide_jax.models import transformer
  seq = np.array([context_ids + continuation_ids], np.int32)
  batch = {'inputs': seq[:, :-1], 'targets': seq[:, 1:],
           'positions': np.arange(seq.shape[1] - 1)[None], 'segment_ids': np.ones_like(seq[:, 1:])}
  logp = jax.nn.log_softmax(transformer.apply(loaded.model, loaded.params, batch), axis=-1)
  picked = jnp.take_along_axis(logp[0], batch['targets'][0][:, None], axis=-1)[:, 0]
  return float(picked[-len(continuation_ids):].sum())


def test_custom_tasks_run_and_loglikelihoods_equal_the_models_scoring(hf_dir, tasks_dir):
  from lm_eval.tasks import TaskManager
  from guide_jax.evals import harness
  from guide_jax.infer import sampler as sampler_lib
  loaded = sampler_lib.load(hf_dir)
  lm = harness.GuideJaxLM(loaded, batch_size=4)
  results = lm_eval.simple_evaluate(
      model=lm, tasks=list(TASKS),
      task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
      log_samples=True, bootstrap_iters=0)
  for sample in results['samples']['gj_toy_ll']:
    (context, continuation), = sample['arguments']
    (loglikelihood, _), = sample['resps'][0]
    want = own_loglikelihood(loaded, *lm.encode_pair(context, continuation))
    assert loglikelihood == pytest.approx(want, abs=1e-5, rel=1e-5)
  assert len(results['samples']['gj_toy_ll']) == len(PAIRS)
  # rolling: the sum over disjoint windows; the short page fits one window
  short = [s for s in results['samples']['gj_toy_rolling'] if s['doc']['page'] == PAGES[1]][0]
  ids = loaded.vocab.encode(PAGES[1])
  assert short['resps'][0][0] == pytest.approx(
      own_loglikelihood(loaded, [loaded.vocab.eos_id], ids), abs=1e-5, rel=1e-5)
  assert results['results']['gj_toy_rolling']['bits_per_byte,none'] > 0
  # generation: what the sampler gives greedily, cut at the first newline
  gen = results['samples']['gj_toy_gen'][0]
  context = gen['arguments'][0][0]
  new = loaded.sampler.generate([loaded.vocab.encode(context)],
                                sampler_lib.Sampling(max_new_tokens=6))[0]
  assert gen['resps'][0][0] == loaded.decode(new).split('\n')[0]


# ~60 s; the harness keeps its in-process test (custom tasks, loglikelihoods)
@pytest.mark.slow
def test_evaluate_cli_on_a_run_writes_the_results_and_its_own_eval(tiny_config, tasks_dir,
                                                                   tmp_path):
  from guide_jax import config as config_lib
  from guide_jax.evals import harness
  from guide_jax.train import trainer
  from conftest import read_metrics
  tiny_config.train.steps, tiny_config.train.warmup_steps = 2, 1
  tiny_config.train.eval_every = 2
  run = tmp_path / 'run'
  trainer.train(tiny_config, run)
  out = subprocess.run(
      [sys.executable, '-m', 'guide_jax.evaluate', f'--workdir={run}', '--tasks=gj_toy_ll',
       f'--include_path={tasks_dir}', '--limit=3'],
      cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, **OFFLINE})
  assert out.returncode == 0, out.stderr[-3000:]
  saved = json.loads((run / 'lm_eval_results.json').read_text())
  assert saved['results']['gj_toy_ll']['acc,none'] >= 0
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]
  assert {r['metric'] for r in rows[:-1]} == {'perplexity', 'acc'}
  # the run's own eval batches, scored from its checkpoint, as the trainer logged them
  logged = [r for r in read_metrics(run) if 'eval/loss' in r][-1]
  assert rows[-1] == saved['guide_jax']
  assert rows[-1]['eval/loss'] == pytest.approx(logged['eval/loss'], rel=1e-5)
  assert rows[-1]['eval/bits_per_byte'] == pytest.approx(logged['eval/bits_per_byte'], rel=1e-5)
  with pytest.raises(config_lib.ConfigError, match='--tasks: no_such_task is not an lm-eval'):
    harness.run(str(run), ['no_such_task'], str(tasks_dir))
