"""The sweep data structure, the local study runner and the report."""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from guide_jax import experiment_file, report, study, sweep
from conftest import REPO

STUDY_FILE = f'{REPO}/experiments/study_cpu.py'


def test_sweep_overrides_and_flags(tiny_config, tmp_path):
  entries = [{'name': 'a/seed0', 'train.seed': 3, 'guide.center': True},
             {'name': 'b/seed0', 'model.d_model': 32}]
  runs = sweep.runs(tiny_config, entries, tmp_path)
  assert [r.name for r in runs] == ['a/seed0', 'b/seed0']
  assert runs[0].config.train.seed == 3 and runs[0].config.guide.center is True
  assert runs[1].config.model.d_model == 32 and tiny_config.model.d_model == 64  # copied
  assert runs[0].workdir == f'{tmp_path}/a/seed0'
  assert runs[0].flags() == ['--config.train.seed=3', '--config.guide.center=True',
                             f'--workdir={tmp_path}/a/seed0']
  with pytest.raises(sweep.SweepError, match='train.sead'):
    sweep.runs(tiny_config, [{'name': 'x', 'train.sead': 1}], tmp_path)
  with pytest.raises(ValueError, match='twice'):
    sweep.runs(tiny_config, [{'name': 'x'}, {'name': 'x'}], tmp_path)


def test_study_cpu_sweeps_are_well_formed():
  module = experiment_file.load_module(STUDY_FILE)
  main = sweep.runs(module.get_config(), module.get_sweep('main'), '/tmp/x')
  arms = {r.name.split('/')[0] for r in main}
  assert arms == {'baseline', 'kd', 'guide', 'guide_match', 'guide_kd', 'guide_match_kd'}
  assert len(main) == 18
  by_name = {r.name: r.config for r in main}
  assert by_name['baseline/seed0'].guide.init == 'none'
  assert by_name['baseline/seed0'].loss.kd.value == 0.0
  assert by_name['kd/seed1'].loss.kd.value == 1.0 and by_name['kd/seed1'].guide.init == 'none'
  assert by_name['guide_match_kd/seed2'].loss.match.kind == 'linear'
  assert by_name['guide/seed2'].data.seed == 2 and by_name['guide/seed2'].train.seed == 102
  assert all(c.data.eval_split == 'test' for c in by_name.values())
  ablation = sweep.runs(module.get_config(), module.get_sweep('ablation'), '/tmp/x')
  assert all(r.config.data.eval_split == 'validation' for r in ablation)
  assert len(ablation) == 11 and all(r.config.train.steps == 100 for r in ablation)
  with pytest.raises(ValueError, match='unknown sweep'):
    module.get_sweep('nope')


def test_study_regime_is_sized_as_its_issue_asks():
  """Converged-teacher regime: 5 arms x 3 seeds, ~3x teacher, >= 20 tokens per student
  parameter, an eval at step 0, the teacher seeing its corpus at most about twice."""
  import jax
  from guide_jax.models import transformer
  module = experiment_file.load_module(f'{REPO}/experiments/study_regime.py')
  config = module.get_config()
  runs = sweep.runs(config, module.get_sweep('main'), '/tmp/x')
  assert len(runs) == 15 and {r.name.split('/')[0] for r in runs} == {
      'baseline', 'kd', 'guide', 'guide_kd', 'guide_match_kd'}
  count = lambda m: sum(x.size for x in jax.tree.leaves(transformer.abstract_params(m)))
  student, teacher = count(config.model), count(config.teacher.pretrain.model)
  assert 2.5 < teacher / student < 4.0
  tokens = config.train.steps * config.data.global_batch_size * config.data.seq_len
  assert tokens / student >= 20
  assert config.train.eval_at_start and config.data.eval_split == 'test'
  assert all(r.config.train.eval_at_start for r in runs)


def test_cached_arms_share_one_teacher_logits_cache_per_data_seed(tmp_path):
  """The regime study's `cached` sweep: kd_cached and guide_kd_cached of a seed read one
  cache (their data order is the same), each seed its own; the online arms none."""
  module = experiment_file.load_module(f'{REPO}/experiments/study_regime.py')
  config = module.get_config()
  path = f'{REPO}/experiments/study_regime.py'
  _, _, runs = study.plan(config, path, 'main', tmp_path)
  assert not any(r.config.teacher.logits_dir for r in runs)
  _, teacher_dir, runs = study.plan(config, path, 'cached', tmp_path)
  caches = {r.name: r.config.teacher.logits_dir for r in runs if r.config.teacher.logits_dir}
  assert sorted(caches) == sorted(f'{a}_cached/seed{s}' for a in ('kd', 'guide_kd')
                                  for s in module.SEEDS)
  for s in module.SEEDS:
    assert caches[f'kd_cached/seed{s}'] == caches[f'guide_kd_cached/seed{s}']
    assert caches[f'kd_cached/seed{s}'].startswith(f'{tmp_path}/teacher_logits/seed{s}-k64-')
  assert len(set(caches.values())) == len(module.SEEDS)
  # Run into the study directory of `main`, the sweep adds its runs to the record.
  _, _, main_runs = study.plan(config, path, 'main', tmp_path)
  study.record_sweep(tmp_path, path, 'main', teacher_dir, main_runs)
  study.record_sweep(tmp_path, path, 'cached', teacher_dir, runs)
  meta = json.loads((tmp_path / 'study.json').read_text())
  assert meta['sweeps'] == ['cached', 'main'] and len(meta['runs']) == 15 + 6
  cached = next(r for r in runs if r.name == 'kd_cached/seed0')
  assert f'--config.teacher.logits_dir={caches["kd_cached/seed0"]}' in cached.flags()
  assert cached.config.teacher.checkpoint == str(teacher_dir)


def _fake_run(root, name, losses, teacher=2.0, split='test'):
  """A finished run: metrics.jsonl with an eval curve and final.json."""
  workdir = root / name
  workdir.mkdir(parents=True)
  with open(workdir / 'metrics.jsonl', 'w') as f:
    f.write(json.dumps({'step': 0, 'teacher/eval_loss': teacher}) + '\n')
    for i, loss in enumerate(losses, 1):
      f.write(json.dumps({'step': i, 'tokens': 100 * i, 'eval/loss': loss}) + '\n')
  (workdir / 'final.json').write_text(json.dumps(
      {'eval/loss': losses[-1], 'tokens': 100 * len(losses), 'eval_split': split,
       **{f'eval_coverage_{k}': v for k, v in COVERAGE.items()}}))


COVERAGE = {'rows': 32, 'tokens': 2048, 'documents': 20, 'split_documents': 25,
            'split_tokens': 9000}


def test_report_gap_closure_is_paired_by_seed(tmp_path):
  runs = {'baseline/seed0': [5.0, 4.0], 'baseline/seed1': [5.0, 4.2],
          'guide/seed0': [4.5, 3.5], 'guide/seed1': [4.6, 3.6],
          'kd/seed0': [4.8, 3.8], 'kd/seed1': [4.9, 4.0]}
  for name, losses in runs.items():
    _fake_run(tmp_path, name, losses)
  (tmp_path / 'study.json').write_text(json.dumps(
      {'config': 'x.py', 'sweep': 'main', 'runs': {**{n: {} for n in runs}, 'kd/seed2': {}}}))
  for name, seconds in (('kd/seed0', 30.0), ('kd/seed1', 50.0)):
    final = tmp_path / name / 'final.json'
    final.write_text(json.dumps({**json.loads(final.read_text()), 'wall_s': seconds}))
  cache = tmp_path / 'teacher_logits' / 'seed0-k64-abc'
  cache.mkdir(parents=True)
  build = {'seconds': 12.0, 'steps': 2, 'tokens_per_s': 1000.0, 'bytes_per_token': 396.0}
  (cache / 'build.json').write_text(json.dumps(build))
  summary = report.write(tmp_path)
  assert summary['arms']['kd']['wall_s_mean'] == 40.0
  assert summary['arms']['guide']['wall_s_mean'] is None  # not measured
  assert summary['teacher_logits_caches'] == {'seed0-k64-abc': build}
  guide = summary['arms']['guide']
  closures = [(4.0 - 3.5) / (4.0 - 2.0), (4.2 - 3.6) / (4.2 - 2.0)]
  assert guide['gap_closure_mean'] == pytest.approx(sum(closures) / 2, abs=1e-12)
  assert guide['gap_closure_std'] == pytest.approx(
      math.sqrt(sum((c - sum(closures) / 2) ** 2 for c in closures)), abs=1e-12)
  assert guide['eval_loss_mean'] == pytest.approx(3.55, abs=1e-12)
  assert guide['seeds'] == 2 and guide['tokens'] == 200
  assert summary['arms']['baseline']['gap_closure_mean'] == pytest.approx(0.0, abs=1e-12)
  assert summary['teacher_eval_loss'] == 2.0
  text = (tmp_path / 'report.md').read_text()
  assert 'GUIDE alone beats KD alone' in text and 'kd/seed2' in text  # unfinished is named
  assert 'kd 40 s.' in text
  assert summary['eval_coverage'] == COVERAGE and not summary['eval_rows_differ']
  assert ("An evaluation reads 2,048 tokens spread over 20 of the split's 25 documents "
          "(9,000 tokens).") in text
  assert 'teacher-logits cache seed0-k64-abc: 2 steps built in 12 s (1,000 tokens/s' in text
  assert (tmp_path / 'loss_curves.png').stat().st_size > 1000
  assert (tmp_path / 'gap_closure.png').stat().st_size > 1000
  assert json.loads((tmp_path / 'summary.json').read_text()) == summary


def test_report_says_when_runs_were_evaluated_on_different_rows(tmp_path):
  """A study resumed across the change to evenly spread evaluation rows mixes runs that
  recorded no coverage with runs that did: the report must not compare them silently."""
  for name in ('baseline/seed0', 'guide/seed0'):
    _fake_run(tmp_path, name, [5.0, 4.0])
  final = tmp_path / 'guide' / 'seed0' / 'final.json'
  final.write_text(json.dumps({k: v for k, v in json.loads(final.read_text()).items()
                               if not k.startswith('eval_coverage_')}))
  (tmp_path / 'study.json').write_text(json.dumps(
      {'config': 'x.py', 'sweep': 'main', 'runs': {'baseline/seed0': {}, 'guide/seed0': {}}}))
  summary = report.write(tmp_path)
  assert summary['eval_rows_differ'] and summary['eval_coverage'] is None
  assert 'The runs were not all evaluated on the same rows' in (tmp_path / 'report.md').read_text()


def _curve_run(root, name, curve, teacher=2.0, params=1000):
  """A finished run whose eval curve is {tokens: loss}, step 0 included."""
  workdir = root / name
  workdir.mkdir(parents=True)
  records = [{'step': 0, 'teacher/eval_loss': teacher}] + [
      {'step': t // 100, 'tokens': t, 'eval/loss': v} for t, v in sorted(curve.items())]
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  (workdir / 'final.json').write_text(json.dumps(
      {'eval/loss': curve[max(curve)], 'tokens': max(curve), 'eval_split': 'test',
       'student_params': params}))


def test_report_closure_against_tokens_with_intervals_and_verdicts(tmp_path):
  teacher, t975 = 2.0, 4.303  # Student's t, 2 degrees of freedom
  base_end = {0: 4.0, 1: 4.2, 2: 4.1}
  closures = {'guide': (0.10, 0.12, 0.11), 'kd': (0.1, 0.3, 0.2),
              'guide_kd': (0.5, 0.6, 0.55)}
  runs = {}
  for k, end in base_end.items():
    runs[f'baseline/seed{k}'] = {0: 6.9, 100: 5.0, 200: 4.5, 300: 4.2 + 0.01 * k, 400: end}
    for arm, c in closures.items():  # at the end: closure c[k]; at the start: half of it
      runs[f'{arm}/seed{k}'] = {0: 6.9 - c[k] / 2 * (6.9 - teacher), 100: 4.9, 200: 4.4,
                                300: 4.1, 400: end - c[k] * (end - teacher)}
  for name, curve in runs.items():
    _curve_run(tmp_path, name, curve)
  _curve_run(tmp_path, 'teacher', {0: 6.9, 100: 3.0, 200: 2.2, 300: 2.02, 400: 2.0})
  (tmp_path / 'study.json').write_text(json.dumps(
      {'config': 'x.py', 'sweep': 'main', 'teacher_dir': str(tmp_path / 'teacher'),
       'runs': {n: {} for n in runs}}))
  summary = report.write(tmp_path)

  def interval(values):
    m = sum(values) / len(values)
    half = t975 * math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) / math.sqrt(
        len(values))
    return [m - half, m + half]

  for arm, c in closures.items():
    entry = summary['arms'][arm]
    assert entry['gap_closure_ci95'] == pytest.approx(interval(c), abs=1e-9)
    curve = {p['tokens']: p for p in entry['gap_closure_curve']}
    assert sorted(curve) == [0, 100, 200, 300, 400]
    assert curve[0]['mean'] == pytest.approx(sum(c) / 6, abs=1e-9)  # the head start
    assert curve[400]['ci95'] == pytest.approx(interval(c), abs=1e-9)
    at_100 = [(4.2 + 0.01 * k - 4.1) / (4.2 + 0.01 * k - teacher) for k in range(3)]
    assert curve[300]['mean'] == pytest.approx(sum(at_100) / 3, abs=1e-9)
  assert report.at_fraction(summary['arms']['guide']['gap_closure_curve'], 0.25)['tokens'] == 100
  assert summary['teacher_last_quarter_improvement'] == pytest.approx(0.02 / 2.02, abs=1e-12)
  base_300 = sum(4.2 + 0.01 * k for k in range(3)) / 3
  assert summary['baseline_last_quarter_improvement'] == pytest.approx(
      (base_300 - 4.1) / base_300, abs=1e-12)
  assert summary['student_tokens_per_param'] == pytest.approx(0.4, abs=1e-12)
  verdicts = {v['claim'].split(' (')[0]: v['verdict'] for v in summary['verdicts']}
  assert verdicts == {
      'GUIDE alone closes >= 25% of the gap': 'not met',            # [0.085, 0.135]
      'GUIDE alone beats KD alone': 'not resolvable at this precision',
      'GUIDE+KD beats the better of GUIDE and KD': 'met',
      'GUIDE+KD is near-additive: >= 80% of GUIDE + KD': 'met'}
  text = (tmp_path / 'report.md').read_text()
  assert '| guide | 5.5% [' in text and '**not resolvable at this precision**' in text
  # One seed gives no interval: every claim is then unresolvable, whatever its value.
  study = report.load_study(tmp_path)
  study['arms'] = {a: {'seed0': r['seed0']} for a, r in study['arms'].items()}
  one = report.summarize(study)
  assert {v['verdict'] for v in one['verdicts']} == {'not resolvable at this precision'}
  one_text = report.markdown(study, one, 'one seed')
  assert '| guide | 5.0% (1 seed) |' in one_text and '[5.0%, 5.0%]' not in one_text
  assert 'held-out loss fell over the last quarter of its training by 0.99%' in text


def test_report_on_policy_closures_step_time_ratios_and_verdicts(tmp_path):
  """eval/on_policy_kl closes toward the teacher's 0 (1 - KL_arm / KL_baseline, paired by
  seed); step time over kd's is per seed, of each run's median; the verdicts pair seeds."""
  kl = {'baseline': (1.0, 1.2, 1.1), 'kd': (0.8, 0.9, 0.9), 'on_policy': (0.4, 0.5, 0.5),
        'guide_on_policy': (0.3, 0.4, 0.4)}
  ce = {'baseline': (4.0, 4.2, 4.1), 'kd': (3.5, 3.6, 3.6), 'on_policy': (3.9, 4.1, 4.0),
        'guide_on_policy': (3.0, 3.1, 3.1)}
  steps = {'baseline': [0.1, 0.1], 'kd': [0.2, 0.3, 0.2], 'on_policy': [0.5, 0.6, 0.5],
           'guide_on_policy': [0.5, 0.5]}
  names = {}
  for arm in kl:
    for k in range(3):
      name = f'{arm}/seed{k}'
      names[name] = {}
      workdir = tmp_path / name
      workdir.mkdir(parents=True)
      records = [{'step': 0, 'teacher/eval_loss': 2.0}]
      records += [{'step': i + 1, 'perf/step_time_s': t * (1 + k),
                   **({'perf/sample_time_s': 0.3} if 'on_policy' in arm else {})}
                  for i, t in enumerate(steps[arm])]
      records.append({'step': 9, 'tokens': 900, 'eval/loss': ce[arm][k]})
      (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
      (workdir / 'final.json').write_text(json.dumps(
          {'eval/loss': ce[arm][k], 'eval/on_policy_kl': kl[arm][k],
           'eval/sample_teacher_nll': 2 * kl[arm][k], 'tokens': 900, 'eval_split': 'test'}))
  (tmp_path / 'study.json').write_text(json.dumps({'config': 'x.py', 'sweep': 'main',
                                                   'runs': names}))
  summary = report.write(tmp_path)['on_policy']
  arms = summary['arms']
  closures = [1 - a / b for a, b in zip(kl['on_policy'], kl['baseline'])]
  assert arms['on_policy']['on_policy_kl_closure']['mean'] == pytest.approx(
      sum(closures) / 3, abs=1e-12)
  assert arms['on_policy']['gap_closure']['mean'] == pytest.approx(
      sum((b - a) / (b - 2.0) for a, b in zip(ce['on_policy'], ce['baseline'])) / 3, abs=1e-12)
  assert arms['on_policy']['step_time_ratio_to_kd']['mean'] == pytest.approx(0.5 / 0.2,
                                                                              abs=1e-12)
  assert arms['kd']['step_time_ratio_to_kd']['mean'] == pytest.approx(1.0, abs=1e-12)
  assert arms['on_policy']['sample_time_median_s'] == 0.3
  assert arms['kd']['sample_time_median_s'] is None
  assert arms['on_policy']['sample_teacher_nll_mean'] == pytest.approx(2 * 0.4667, abs=1e-3)
  verdicts = {v['claim'].split(' (')[0]: v['verdict'] for v in summary['verdicts']}
  assert verdicts == {
      'on-policy beats KD on eval/on_policy_kl': 'met',
      'on-policy beats KD on held-out CE': 'not met',
      'GUIDE adds to on-policy on eval/on_policy_kl': 'met',
      'GUIDE adds to on-policy on held-out CE': 'met'}
  text = (tmp_path / 'report.md').read_text()
  assert '## On-policy distillation' in text and '| on_policy | ' in text
  assert '2.50x [' in text and '**met**' in text


def test_report_without_runs_is_an_error(tmp_path):
  with pytest.raises(report.ReportError, match='study.json'):
    report.write(tmp_path)


MINIATURE = f"""
\"\"\"study_cpu.py shrunk to lm_tiny sizes: 2 steps per run, teacher twice as wide.\"\"\"
from guide_jax import experiment_file

_study = experiment_file.load_module({STUDY_FILE!r})
get_sweep = _study.get_sweep


def get_config():
  tiny = experiment_file.load_module({REPO + '/experiments/lm_tiny.py'!r}).get_config()
  config = _study.get_config()
  for c, width in ((config, 32), (config.teacher.pretrain, 64)):
    c.model = tiny.model.copy_and_resolve_references()
    c.model.d_model = width
    c.data = tiny.data.copy_and_resolve_references()
    c.data.test_percent = 20
    c.data.eval_split = 'test'
    c.data.eval_batches = 1
    c.train.steps, c.train.warmup_steps, c.train.eval_every = 2, 0, 1
    c.train.async_checkpoints, c.train.peak_flops = False, 1e11
    c.train.progress_bar = False
  return config
"""


ARMS = ('baseline', 'guide_match_kd')


# ~60 s; the report and the runner's interruption keep their default tests
@pytest.mark.slow
def test_miniature_study_runs_resumes_and_reports(tmp_path):
  study_file = tmp_path / 'study_miniature.py'
  study_file.write_text(MINIATURE)
  config = experiment_file.load_module(study_file).get_config()
  logs = []
  only = '^(baseline|guide_match_kd)/seed0$'  # no teacher term; GUIDE + MATCH + KD
  # Two runs at a time, each in its own process on one core (the teacher first, alone).
  failed = study.run_parallel(config, str(study_file), 'main', tmp_path, None, only, 2, [],
                              log=logs.append)
  assert failed == []
  assert sorted(line.split(' -> ')[0] for line in logs) == ['baseline/seed0',
                                                             'guide_match_kd/seed0', 'teacher']
  if len(os.sched_getaffinity(0)) == 2:
    assert any('(cores [0])' in line for line in logs) and any('(cores [1])' in line
                                                               for line in logs)
  finals = [json.loads((tmp_path / f'{arm}/seed0/final.json').read_text()) for arm in ARMS]
  assert [f['name'] for f in finals] == [f'{arm}/seed0' for arm in ARMS]
  assert all(math.isfinite(f['eval/loss']) and f['step'] == 2 for f in finals)
  assert all(0 < f['eval/bits_per_byte'] < f['eval/loss'] for f in finals)
  assert (tmp_path / 'teacher' / 'final.json').exists()
  # Every arm distilled from the one teacher, and the teacher was trained once.
  assert sum('teacher ->' in line for line in logs) == 1
  teacher_losses = {f['teacher/eval_loss'] for f in finals}
  assert len(teacher_losses) == 1

  # Rerunning skips what finished; a run whose final.json is gone resumes from its
  # checkpoint (already at the last step) and reports the same eval loss.
  guide_final = tmp_path / 'guide_match_kd' / 'seed0' / 'final.json'
  before = json.loads(guide_final.read_text())
  guide_final.unlink()
  logs.clear()
  study.run_all(config, str(study_file), 'main', tmp_path, only=only, log=logs.append)
  assert sum('skipped' in line for line in logs) == len(ARMS) - 1
  assert not any('teacher ->' in line for line in logs)  # trained once, never again
  assert json.loads(guide_final.read_text())['eval/loss'] == pytest.approx(
      before['eval/loss'], abs=1e-6)

  harness = {'results': {'toy': {'alias': 'toy', 'acc,none': 0.5, 'acc_stderr,none': 'N/A'}}}
  for run_dir in ('teacher', 'guide_match_kd/seed0'):  # as `guide_jax.evaluate` leaves it
    (tmp_path / run_dir / report.HARNESS_RESULTS).write_text(json.dumps(harness))
  summary = report.write(tmp_path)
  assert summary['harness'] == {'teacher': {'toy/acc': 0.5}, 'guide_match_kd': {'toy/acc': 0.5}}
  assert '| toy/acc | 0.5000 | 0.5000 |' in (tmp_path / 'report.md').read_text()
  assert set(summary['arms']) == set(ARMS)
  for arm in summary['arms'].values():
    assert arm['seeds'] == 1 and arm['tokens'] == 2 * 8 * 64
    assert set(arm) >= {'eval_loss_mean', 'eval_loss_std', 'gap_closure_mean',
                        'gap_closure_std', 'seeds', 'tokens'}
  assert 'Eval split: test' in (tmp_path / 'report.md').read_text()
  coverage = summary['eval_coverage']  # every run evaluates on the same rows
  assert 0 < coverage['documents'] <= coverage['split_documents'] and coverage['rows'] > 0
  assert summary['teacher_bits_per_byte'] > 0
  assert all(arm['bits_per_byte_mean'] > 0 for arm in summary['arms'].values())


def test_an_interrupted_teacher_is_not_marked_finished(tmp_path, monkeypatch):
  """A preempted teacher (SIGTERM) returns interrupted: no final.json, so the next run of
  the study resumes it instead of distilling from a half-trained teacher."""
  from guide_jax.train import trainer
  study_file = tmp_path / 'study_miniature.py'
  study_file.write_text(MINIATURE)
  config = experiment_file.load_module(study_file).get_config()
  calls = []
  monkeypatch.setattr(trainer, 'train', lambda cfg, workdir: calls.append(workdir) or {
      'step': 1, 'interrupted': True, 'params': {}})
  logs = []
  assert study.run_all(config, str(study_file), 'main', tmp_path, log=logs.append) == []
  assert len(calls) == 1 and not (tmp_path / 'teacher' / 'final.json').exists()
  assert any('teacher was interrupted' in line for line in logs)


def test_sigterm_reaches_the_teacher_of_a_parallel_study(tmp_path, monkeypatch):
  """A preemption notice to `study --parallel` while its teacher trains is passed on to the
  teacher's process, which checkpoints and exits; the study then stops, failing nothing."""
  study_file = tmp_path / 'study_miniature.py'
  study_file.write_text(MINIATURE)
  config = experiment_file.load_module(study_file).get_config()
  real_popen = subprocess.Popen
  until_sigterm = ('import signal, sys, time; '
                   'signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); '
                   'time.sleep(60); sys.exit(3)')
  monkeypatch.setattr(study.subprocess, 'Popen',  # the teacher's process, as a stand-in
                      lambda args, **kw: real_popen([sys.executable, '-c', until_sigterm], **kw))
  threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
  logs = []
  start = time.monotonic()
  assert study.run_parallel(config, str(study_file), 'main', tmp_path, None, '', 2, [],
                            log=logs.append) == []
  assert time.monotonic() - start < 30
  assert logs[0].startswith('teacher ->') and 'teacher was interrupted' in logs[-1]
