"""Turn a finished study into a report: a table over seeds, curves, gap closure.

  python -m guide_jax.report --study_dir=workdirs/cpu_study/main [--out_dir=results/...]

Reads STUDY_DIR/study.json (written by guide_jax.study) and each run's metrics.jsonl.
Runs named '<arm>/seed<k>' are grouped by arm. Gap closure of an arm at seed k is
(L_baseline,k - L_arm,k) / (L_baseline,k - L_teacher): paired with the baseline of the
same seed (same data order), so seed noise that both share cancels. Writes to OUT_DIR
(default STUDY_DIR): report.md, summary.json, loss_curves.png, gap_closure.png.

Gap closure is also followed against tokens: at every evaluation both runs of a seed made
(step 0 too, with train.eval_at_start), the paired closures of the seeds give a mean and a
95% confidence interval (Student's t over seeds). Each of the paper's claims gets a verdict
from those intervals at the end of training: met, not met, or not resolvable at this
precision (the interval straddles the threshold). summary.json also records how much the
teacher's and the baseline's held-out loss still fell over the last quarter of their
training (converged runs barely move) and the students' tokens per parameter.
"""

from __future__ import annotations

import json
import math
import pathlib
import statistics

from absl import app, flags

from guide_jax import cli
from guide_jax import config as config_lib

BASELINE = 'baseline'
MILESTONES = (0.1, 0.25, 0.5, 1.0)  # fractions of training in the closure table

# Student's t, 97.5% quantile, by degrees of freedom (1..30); beyond, the normal's 1.96.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201,
         2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074,
         2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


class ReportError(config_lib.ConfigError):
  """A study directory that cannot be reported (one `error:` line, exit 2)."""


def ci95(values: list[float]) -> tuple[float, float, float] | None:
  """(mean, lo, hi): the mean with a 95% t interval over independent samples (seeds);
  None for no samples, an interval of width 0 for one (nothing to say about spread)."""
  if not values:
    return None
  mean = statistics.fmean(values)
  if len(values) < 2:
    return mean, mean, mean
  t = _T975[len(values) - 2] if len(values) - 1 <= len(_T975) else 1.96
  half = t * statistics.stdev(values) / math.sqrt(len(values))
  return mean, mean - half, mean + half


def _read_jsonl(path: pathlib.Path) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def load_study(study_dir: pathlib.Path) -> dict:
  """{'meta': study.json, 'arms': {arm: {seed: run}}} with each run's eval curve."""
  meta_path = study_dir / 'study.json'
  if not meta_path.exists():
    raise ReportError(f'--study_dir={str(study_dir)!r} has no study.json; run '
                      f'guide_jax.study there first')
  meta = json.loads(meta_path.read_text())
  arms: dict[str, dict[str, dict]] = {}
  for name in meta['runs']:
    workdir = study_dir / name
    if not (workdir / 'final.json').exists():
      continue  # unfinished: reported as missing, not averaged in
    records = _read_jsonl(workdir / 'metrics.jsonl')
    run = {'final': json.loads((workdir / 'final.json').read_text()),
           'curve': {r['tokens']: r['eval/loss'] for r in records if 'eval/loss' in r},
           'step_times': [r['perf/step_time_s'] for r in records if 'perf/step_time_s' in r],
           'sample_times': [r['perf/sample_time_s'] for r in records
                            if 'perf/sample_time_s' in r]}
    for r in records:
      for key in ('teacher/eval_loss', 'teacher/eval_bits_per_byte', 'teacher/approx_eval_loss',
                  'guide/explained_variance'):
        if key in r:
          run[key] = r[key]
    run['harness'] = harness_scores(workdir)
    arm, _, seed = name.rpartition('/')
    arms.setdefault(arm or name, {})[seed or '0'] = run
  if not arms:
    raise ReportError(f'no run under {study_dir} has finished (no final.json); run the study')
  teacher_dir = pathlib.Path(meta.get('teacher_dir') or study_dir / 'teacher')
  teacher_metrics = teacher_dir / 'metrics.jsonl'
  teacher_curve = ({r['tokens']: r['eval/loss'] for r in _read_jsonl(teacher_metrics)
                    if 'eval/loss' in r} if teacher_metrics.exists() else {})
  caches = {p.parent.name: json.loads(p.read_text())  # guide_jax.study's shared caches
            for p in sorted((study_dir / 'teacher_logits').glob('*/build.json'))}
  return {'meta': meta, 'arms': arms, 'teacher_harness': harness_scores(teacher_dir),
          'teacher_curve': teacher_curve, 'teacher_logits_caches': caches}


HARNESS_RESULTS = 'lm_eval_results.json'  # what `python -m guide_jax.evaluate` writes


def harness_rows(results: dict) -> list[dict]:
  """One row per (task, metric) of lm-eval's results JSON (standard errors left out)."""
  rows = []
  for task, metrics in sorted(results.get('results', {}).items()):
    for key, value in sorted(metrics.items()):
      name, comma, filt = key.partition(',')  # metrics are 'metric,filter'
      if comma and isinstance(value, (int, float)) and not name.endswith('_stderr') \
          and math.isfinite(value):
        rows.append({'task': task, 'metric': name, 'filter': filt, 'value': value})
  return rows


def harness_scores(workdir: pathlib.Path) -> dict[str, float]:
  """{'task/metric': value} of a run's lm-eval results, {} when it has none."""
  path = workdir / HARNESS_RESULTS
  if not path.exists():
    return {}
  return {f'{r["task"]}/{r["metric"]}': r['value']
          for r in harness_rows(json.loads(path.read_text()))}


def _mean_std(values: list[float]) -> tuple[float, float]:
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(study: dict) -> dict:
  """summary.json: teacher loss and per-arm means/stds (gap closure as a fraction)."""
  arms = study['arms']
  runs = [r for seeds in arms.values() for r in seeds.values()]
  teacher = next((r['teacher/eval_loss'] for r in runs if 'teacher/eval_loss' in r), None)
  teacher_bpb = next((r['teacher/eval_bits_per_byte'] for r in runs
                      if 'teacher/eval_bits_per_byte' in r), None)
  approx = next((r['teacher/approx_eval_loss'] for r in runs
                 if 'teacher/approx_eval_loss' in r), None)
  explained = next((r['guide/explained_variance'] for r in runs
                    if 'guide/explained_variance' in r), None)
  base = arms.get(BASELINE, {})
  out_arms = {}
  for arm, seeds in arms.items():
    losses = [r['final']['eval/loss'] for r in seeds.values()]
    closures = (list(_final_closures(study, arm, teacher).values())
                if teacher is not None else [])
    loss_mean, loss_std = _mean_std(losses)
    entry = {'eval_loss_mean': loss_mean, 'eval_loss_std': loss_std,
             'ppl_mean': statistics.fmean(math.exp(x) for x in losses),
             'gap_closure_mean': None, 'gap_closure_std': None, 'seeds': len(losses),
             'tokens': next(iter(seeds.values()))['final']['tokens']}
    if closures:
      entry['gap_closure_mean'], entry['gap_closure_std'] = _mean_std(closures)
      entry['gap_closure_ci95'] = list(ci95(closures)[1:])
    bits = [r['final'].get('eval/bits_per_byte') for r in seeds.values()]
    entry['bits_per_byte_mean'] = statistics.fmean(bits) if None not in bits else None
    walls = [r['final'].get('wall_s') for r in seeds.values()]
    entry['wall_s_mean'] = statistics.fmean(walls) if None not in walls else None
    params = {r['final'].get('student_params') for r in seeds.values()}
    if len(params) == 1 and None not in params:
      entry['student_params'] = params.pop()
    if teacher is not None and arm != BASELINE:
      entry['gap_closure_curve'] = closure_curve(base, seeds, teacher)
    out_arms[arm] = entry
  harness = {'teacher': study['teacher_harness']} if study['teacher_harness'] else {}
  for arm, seeds in arms.items():
    keys = set.intersection(*(set(r['harness']) for r in seeds.values()))
    if keys:
      harness[arm] = {k: statistics.fmean(r['harness'][k] for r in seeds.values())
                      for k in sorted(keys)}
  params = {a['student_params'] for a in out_arms.values() if 'student_params' in a}
  tokens = {a['tokens'] for a in out_arms.values()}
  baseline_curve = _mean_curve(base) if base else {}
  return {'teacher_eval_loss': teacher, 'teacher_bits_per_byte': teacher_bpb,
          'harness': harness, 'approx_teacher_eval_loss': approx,
          'explained_variance': explained,
          'teacher_last_quarter_improvement': last_quarter_improvement(
              study.get('teacher_curve', {})),
          'baseline_last_quarter_improvement': last_quarter_improvement(baseline_curve),
          'student_tokens_per_param': (tokens.pop() / params.pop()
                                       if len(params) == 1 and len(tokens) == 1 else None),
          'arms': out_arms, 'verdicts': verdicts(study, teacher),
          'cached_vs_online': cached_vs_online(study, out_arms, teacher),
          'on_policy': on_policy_summary(study, teacher),
          'teacher_logits_caches': study.get('teacher_logits_caches', {}),
          **dict(zip(('eval_coverage', 'eval_rows_differ'), eval_coverage(study)))}


def eval_coverage(study: dict) -> tuple[dict[str, int] | None, bool]:
  """(What one evaluation read: rows, tokens, documents of the split, when every run
  recorded the same; whether the runs recorded different ones). Runs finished before
  evaluation spread its rows over the split record none: a study resumed across that
  change mixes two evaluations, which the report must say."""
  seen = {json.dumps({k[len('eval_coverage_'):]: v for k, v in r['final'].items()
                      if k.startswith('eval_coverage_')}, sort_keys=True)
          for seeds in study['arms'].values() for r in seeds.values()}
  if len(seen) != 1:
    return None, len(seen) > 1
  return json.loads(seen.pop()) or None, False


def _mean_curve(seeds: dict) -> dict[int, float]:
  """{tokens: eval loss averaged over seeds} at the evaluations every seed made."""
  tokens = sorted(set.intersection(*(set(r['curve']) for r in seeds.values())))
  return {t: statistics.fmean(r['curve'][t] for r in seeds.values()) for t in tokens}


def last_quarter_improvement(curve: dict[int, float]) -> float | None:
  """(L(3/4 of training) - L(end)) / L(3/4): the fraction by which held-out loss still fell
  over the last quarter; the evaluation nearest 3/4 of the tokens stands for it."""
  if len(curve) < 2:
    return None
  end = max(curve)
  quarter = min((t for t in curve if t < end), key=lambda t: abs(t - 0.75 * end))
  return (curve[quarter] - curve[end]) / curve[quarter]


def _paired(base: dict, seeds: dict, tokens: int, teacher: float) -> list[float]:
  """The closure of each seed at `tokens`, paired with the baseline of that seed."""
  out = []
  for s, r in seeds.items():
    if s in base and tokens in r['curve'] and tokens in base[s]['curve']:
      c = closure(base[s]['curve'][tokens], r['curve'][tokens], teacher)
      if c is not None:
        out.append(c)
  return out


def closure_curve(base: dict, seeds: dict, teacher: float) -> list[dict]:
  """[{tokens, mean, ci95: [lo, hi], seeds}] at every evaluation of the arm and baseline."""
  points = []
  every = sorted(set.union(*(set(r['curve']) for r in seeds.values())))
  for t in every:
    paired = _paired(base, seeds, t, teacher)
    if paired:
      mean, lo, hi = ci95(paired)
      points.append({'tokens': t, 'mean': mean, 'ci95': [lo, hi], 'seeds': len(paired)})
  return points


def at_fraction(curve: list[dict], fraction: float) -> dict | None:
  """The point of a closure curve nearest `fraction` of its last point's tokens."""
  if not curve:
    return None
  end = curve[-1]['tokens']
  return min(curve, key=lambda p: abs(p['tokens'] - fraction * end))


def _final_closures(study: dict, arm: str, teacher: float) -> dict[str, float]:
  """{seed: the arm's gap closure at the end}, paired with the baseline's seed."""
  return _metric_closures(study['arms'].get(BASELINE, {}), study['arms'].get(arm, {}),
                          'eval/loss', teacher)


CACHED = '_cached'  # an arm `X_cached` is arm X trained from teacher-logits caches


def cached_vs_online(study: dict, arms: dict, teacher: float | None) -> dict:
  """For every arm `X_cached` beside an arm `X`: the gap closure of cached minus online,
  paired by seed (mean and 95% interval), and the ratio of their mean wall times."""
  out = {}
  for arm in arms:
    online = arm[:-len(CACHED)]
    if not arm.endswith(CACHED) or online not in arms or teacher is None:
      continue
    mine, theirs = (_final_closures(study, a, teacher) for a in (arm, online))
    diffs = [mine[s] - theirs[s] for s in mine if s in theirs]
    if not diffs:
      continue
    mean, lo, hi = ci95(diffs)
    walls = arms[arm].get('wall_s_mean'), arms[online].get('wall_s_mean')
    out[arm] = {'online': online, 'seeds': len(diffs), 'closure_diff_mean': mean,
                'closure_diff_ci95': [lo, hi],
                'wall_ratio': walls[1] / walls[0] if None not in walls else None}
  return out


# --- on-policy distillation (train/on_policy.py; experiments/study_on_policy.py) ------------

ON_POLICY_KL, SAMPLE_NLL = 'eval/on_policy_kl', 'eval/sample_teacher_nll'
KD = 'kd'  # the arm whose step time the others' are divided by


def on_policy_summary(study: dict, teacher: float | None) -> dict:
  """When the runs evaluated eval/on_policy_kl: per arm its mean, its closure (the gap
  closure's formula on that metric, the teacher's own being 0: 1 - KL_arm / KL_baseline,
  paired by seed), the CE gap closure, the median step and sampling times over every logged
  interval, and the step time over the kd arm's (per seed, paired); then the verdicts."""
  arms = study['arms']
  base = arms.get(BASELINE, {})
  if not any(ON_POLICY_KL in r['final'] for seeds in arms.values() for r in seeds.values()):
    return {}
  kd = arms.get(KD, {})
  median = lambda xs: statistics.median(xs) if xs else None
  out = {}
  for arm, seeds in arms.items():
    if not all(ON_POLICY_KL in r['final'] for r in seeds.values()):
      continue
    entry = {'seeds': len(seeds)}
    for key, name in ((ON_POLICY_KL, 'on_policy_kl'), (SAMPLE_NLL, 'sample_teacher_nll')):
      entry[f'{name}_mean'] = statistics.fmean(r['final'][key] for r in seeds.values())
    entry['on_policy_kl_closure'] = _stats(_metric_closures(base, seeds, ON_POLICY_KL, 0.0))
    if teacher is not None:
      entry['gap_closure'] = _stats(_final_closures(study, arm, teacher))
    entry['step_time_median_s'] = median([t for r in seeds.values() for t in r['step_times']])
    entry['sample_time_median_s'] = median([t for r in seeds.values()
                                            for t in r['sample_times']])
    ratios = [statistics.median(r['step_times']) / statistics.median(kd[s]['step_times'])
              for s, r in seeds.items() if s in kd and r['step_times'] and kd[s]['step_times']]
    entry['step_time_ratio_to_kd'] = _stats(ratios)
    out[arm] = entry
  return {'arms': out, 'verdicts': on_policy_verdicts(study, teacher)}


def _metric_closures(base: dict, seeds: dict, key: str, teacher: float) -> dict[str, float]:
  """{seed: closure of `key` at the end of training}, paired with the baseline's seed."""
  out = {}
  for s, r in seeds.items():
    if s in base and key in r['final'] and key in base[s]['final']:
      c = closure(base[s]['final'][key], r['final'][key], teacher)
      if c is not None:
        out[s] = c
  return out


def _stats(per_seed) -> dict | None:
  """{'mean', 'ci95': [lo, hi], 'seeds'} of per-seed values (a dict or a list)."""
  values = list(per_seed.values()) if isinstance(per_seed, dict) else list(per_seed)
  stats = ci95(values)
  if stats is None:
    return None
  return {'mean': stats[0], 'ci95': [stats[1], stats[2]], 'seeds': len(values)}


def on_policy_verdicts(study: dict, teacher: float | None) -> list[dict]:
  """Does on-policy beat KD on eval/on_policy_kl (and on held-out CE); does GUIDE add to
  on-policy; each a paired difference of closures judged by its 95% interval."""
  arms, base = study['arms'], study['arms'].get(BASELINE, {})
  metrics = {'eval/on_policy_kl': (ON_POLICY_KL, 0.0)}
  if teacher is not None:
    metrics['held-out CE'] = ('eval/loss', teacher)
  claims = []
  for better, worse, what in (('on_policy', KD, 'on-policy beats KD'),
                              ('mixed', KD, 'mixed (half on-policy) beats KD'),
                              ('guide_on_policy', 'on_policy', 'GUIDE adds to on-policy'),
                              ('guide_on_policy', 'guide_kd', 'GUIDE+on-policy beats GUIDE+KD'),
                              ('kd_then_on_policy', KD, 'KD then on-policy beats KD'),
                              ('guide_kd_then_on_policy', 'guide_kd',
                               'GUIDE+KD then on-policy beats GUIDE+KD')):
    if better not in arms or worse not in arms:
      continue
    for label, (key, reference) in metrics.items():
      a, b = (_metric_closures(base, arms[x], key, reference) for x in (better, worse))
      diffs = {s: a[s] - b[s] for s in a if s in b}
      if diffs:
        claims.append(_judged(f'{what} on {label} ({better} - {worse} closure)', diffs))
  return claims


def _judged(claim: str, per_seed: dict[str, float], threshold: float = 0.0) -> dict:
  """A claim judged from the 95% interval of its per-seed values: 'met' when the whole
  interval is above `threshold`, 'not met' when it is all at or below, else (or with one
  seed) 'not resolvable at this precision'."""
  mean, lo, hi = ci95(list(per_seed.values()))
  if len(per_seed) < 2:
    verdict = 'not resolvable at this precision'
  else:
    verdict = ('met' if lo > threshold else 'not met' if hi <= threshold
               else 'not resolvable at this precision')
  return {'claim': claim, 'mean': mean, 'ci95': [lo, hi], 'seeds': len(per_seed),
          'verdict': verdict}


def verdicts(study: dict, teacher: float | None) -> list[dict]:
  """The paper's claims at the end of training, each judged from a 95% interval over
  paired seeds: 'met' when the whole interval is on the claim's side, 'not met' when it is
  all on the other, else (or with one seed) 'not resolvable at this precision'."""
  if teacher is None:
    return []
  c = {arm: _final_closures(study, arm, teacher) for arm in ('guide', 'kd', 'guide_kd')}

  def judged(claim: str, per_seed: dict[str, float], threshold: float = 0.0) -> dict:
    per_seed = {s: v for s, v in per_seed.items() if v is not None}
    return _judged(claim, per_seed, threshold) if per_seed else None

  def combine(fn, *arms):
    common = set.intersection(*(set(c[a]) for a in arms))
    return {s: fn(*(c[a][s] for a in arms)) for s in sorted(common)
            if None not in (c[a][s] for a in arms)}

  out = [judged('GUIDE alone closes >= 25% of the gap (its closure)', c['guide'], 0.25),
         judged('GUIDE alone beats KD alone (GUIDE - KD closure)',
                combine(lambda g, k: g - k, 'guide', 'kd')),
         judged('GUIDE+KD beats the better of GUIDE and KD (GUIDE+KD - max)',
                combine(lambda g, k, gk: gk - max(g, k), 'guide', 'kd', 'guide_kd')),
         judged('GUIDE+KD is near-additive: >= 80% of GUIDE + KD (GUIDE+KD - 0.8 (GUIDE + '
                'KD))', combine(lambda g, k, gk: gk - 0.8 * (g + k), 'guide', 'kd',
                                'guide_kd'))]
  return [v for v in out if v is not None and v['seeds']]


def closure(baseline_loss: float, arm_loss: float, teacher_loss: float) -> float | None:
  gap = baseline_loss - teacher_loss
  return (baseline_loss - arm_loss) / gap if gap > 0 else None


def markdown(study: dict, summary: dict, title: str) -> str:
  def fmt(mean, std, pct=False):
    if mean is None:
      return '—'
    text = f'{mean:.1%}' if pct else f'{mean:.4f}'
    return text if std is None else text + (f' ± {std:.1%}' if pct else f' ± {std:.4f}')
  lines = [f'# {title}', '']
  t, a, e = (summary['teacher_eval_loss'], summary['approx_teacher_eval_loss'],
             summary['explained_variance'])
  if t is not None:
    bpb = summary.get('teacher_bits_per_byte')
    lines.append(f'Teacher eval loss **{t:.4f}** nats/token (ppl {math.exp(t):.2f}' +
                 (f', {bpb:.4f} bits/byte).' if bpb is not None else ').'))
  if a is not None:
    lines.append(f'Teacher with E_T, P_T replaced by their PCA reconstruction E M Mᵀ: '
                 f'{a:.4f}; PCA explained variance {e:.1%}.')
  coverage = summary.get('eval_coverage')
  covers = ''
  if coverage and 'split_documents' in coverage:
    covers = (f' An evaluation reads {coverage["tokens"]:,} tokens spread over '
              f'{coverage["documents"]:,} of the split\'s {coverage["split_documents"]:,} '
              f'documents ({coverage["split_tokens"]:,} tokens).')
  elif coverage:
    covers = f' An evaluation reads {coverage["tokens"]:,} tokens.'
  if summary.get('eval_rows_differ'):
    covers += (' **The runs were not all evaluated on the same rows** (some finished before '
               'evaluation spread its rows over the whole split, or with other data '
               'settings): their eval losses do not compare; delete the older runs\' '
               'final.json and rerun the study to evaluate them again.')
  lines += ['', f'Eval split: {_eval_split(study)}.{covers} Mean ± std over seeds; gap '
            f'closure paired with the baseline of the same seed.', '',
            '| arm | seeds | tokens | eval loss (nats/token) | bits/byte | ppl | gap closure '
            '| 95% CI |', '|---|---|---|---|---|---|---|---|']
  for arm, s in summary['arms'].items():
    one = s['seeds'] < 2  # no spread to show
    lines.append(f'| {arm} | {s["seeds"]} | {s["tokens"]:,} | '
                 f'{fmt(s["eval_loss_mean"], None if one else s["eval_loss_std"])} | '
                 f'{fmt(s.get("bits_per_byte_mean"), None)} | {s["ppl_mean"]:.2f} | '
                 f'{fmt(s["gap_closure_mean"], None if one else s["gap_closure_std"], True)} | '
                 + (f'{_interval(s["gap_closure_ci95"])} |'
                    if 'gap_closure_ci95' in s and not one else '— |'))
  walls = {arm: s['wall_s_mean'] for arm, s in summary['arms'].items()
           if s.get('wall_s_mean') is not None}
  if walls:
    lines += ['', 'Wall time of a run (mean over seeds, as the runner measured it, so it '
              'depends on what else ran): ' + ', '.join(f'{arm} {w:.0f} s'
                                                         for arm, w in walls.items()) + '.']
  for name, c in summary.get('teacher_logits_caches', {}).items():
    lines.append(f'- teacher-logits cache {name}: {c["steps"]} steps built in '
                 f'{c["seconds"]:.0f} s ({c["tokens_per_s"]:,.0f} tokens/s after the first '
                 f'step, {c["bytes_per_token"]:.0f} bytes/token)')
  if summary.get('cached_vs_online'):
    lines += ['', '## KD from teacher-logits caches against online KD', '',
              '| arm | online arm | gap closure, cached - online [95% CI, paired seeds] | '
              'wall time, online / cached |', '|---|---|---|---|']
    for arm, c in summary['cached_vs_online'].items():
      ratio = f'{c["wall_ratio"]:.2f}x' if c['wall_ratio'] else '—'
      lines.append(f'| {arm} | {c["online"]} | {c["closure_diff_mean"]:+.2%} '
                   f'{_interval(c["closure_diff_ci95"])} | {ratio} |')
  lines += _on_policy_markdown(summary.get('on_policy', {}))
  lines += ['', '| arm | what it sets (besides train.seed, data.seed and the seed\'s '
            'teacher.logits_dir) |', '|---|---|']
  for arm, seeds in study['arms'].items():
    overrides = next(iter(seeds.values()))['final'].get('overrides', {})
    shown = {k: v for k, v in overrides.items()
             if k not in ('train.seed', 'data.seed', 'teacher.logits_dir')}
    sets = ', '.join(f'`{k}={v}`' for k, v in shown.items()) or '(the config as is)'
    lines.append(f'| {arm} | {sets} |')
  harness = summary.get('harness', {})
  if harness:
    columns = list(harness)
    lines += ['', '## lm-evaluation-harness (mean over seeds)', '',
              '| task / metric | ' + ' | '.join(columns) + ' |',
              '|---|' + '---|' * len(columns)]
    for key in sorted(set().union(*(set(v) for v in harness.values()))):
      cells = [f'{harness[c][key]:.4f}' if key in harness[c] else '—' for c in columns]
      lines.append(f'| {key} | ' + ' | '.join(cells) + ' |')
  missing = [n for n in study['meta']['runs']
             if n.rpartition('/')[2] not in study['arms'].get(n.rpartition('/')[0] or n, {})]
  if missing:
    lines += ['', f'Not finished, left out: {", ".join(missing)}.']
  curves = {arm: s['gap_closure_curve'] for arm, s in summary['arms'].items()
            if s.get('gap_closure_curve')}
  if curves:
    lines += ['', '## Gap closure against training (mean [95% CI] over paired seeds)', '',
              '| arm | at start | ' + ' | '.join(f'{f:.0%} of training' for f in MILESTONES)
              + ' |', '|---|---|' + '---|' * len(MILESTONES)]
    for arm, curve in curves.items():
      cells = [curve[0] if curve[0]['tokens'] == 0 else None,
               *(at_fraction(curve, f) for f in MILESTONES)]
      lines.append(f'| {arm} | ' + ' | '.join(_closure_cell(p) for p in cells) + ' |')
  regime = [(name, summary.get(key)) for name, key in (
      ('teacher: held-out loss fell over the last quarter of its training by',
       'teacher_last_quarter_improvement'),
      ('baseline student: held-out loss fell over its last quarter by',
       'baseline_last_quarter_improvement'))]
  if any(v is not None for _, v in regime) or summary.get('student_tokens_per_param'):
    lines += ['', '## Regime', '']
    lines += [f'- {name} {v:.2%}' for name, v in regime if v is not None]
    if summary.get('student_tokens_per_param'):
      lines.append(f'- students trained on {summary["student_tokens_per_param"]:.1f} tokens '
                   f'per parameter')
  if summary.get('verdicts'):
    lines += ['', '## The paper\'s claims at the end of training', '']
    lines += [f'- {v["claim"]}: {v["mean"]:+.1%} [{v["ci95"][0]:+.1%}, {v["ci95"][1]:+.1%}] '
              f'over {v["seeds"]} seeds: **{v["verdict"]}**' for v in summary['verdicts']]
  lines += ['', '![eval loss](loss_curves.png)', '', '![gap closure](gap_closure.png)', '']
  return '\n'.join(lines)


def _on_policy_markdown(on_policy: dict) -> list[str]:
  """The on-policy section: closures of held-out CE and of eval/on_policy_kl, step times,
  and the verdicts."""
  if not on_policy:
    return []
  stat = lambda x: '—' if not x else (f'{x["mean"]:.1%}' if x['seeds'] < 2 else
                                      f'{x["mean"]:.1%} {_interval(x["ci95"])}')
  ratio = lambda x: '—' if not x else (f'{x["mean"]:.2f}x' if x['seeds'] < 2 else
                                       f'{x["mean"]:.2f}x [{x["ci95"][0]:.2f}, '
                                       f'{x["ci95"][1]:.2f}]')
  seconds = lambda x: '—' if x is None else f'{x:.3f} s'
  lines = ['', '## On-policy distillation', '',
           'eval/on_policy_kl: the student samples from fixed held-out prompts and the '
           'teacher grades every sampled token (per-token KL(student || teacher), full '
           'vocabulary); its closure is the gap closure\'s formula on it, the teacher\'s own '
           'being 0. Step times: the median over every logged interval of every seed; the '
           'ratio to kd is per seed (paired), mean [95% CI].', '',
           '| arm | CE gap closure | eval/on_policy_kl | its closure | sample teacher NLL | '
           'step time | step time / kd | sampling a step |', '|---|---|---|---|---|---|---|---|']
  for arm, e in on_policy['arms'].items():
    lines.append(f'| {arm} | {stat(e.get("gap_closure"))} | {e["on_policy_kl_mean"]:.4f} | '
                 f'{stat(e["on_policy_kl_closure"])} | {e["sample_teacher_nll_mean"]:.4f} | '
                 f'{seconds(e["step_time_median_s"])} | {ratio(e["step_time_ratio_to_kd"])} | '
                 f'{seconds(e["sample_time_median_s"])} |')
  if on_policy.get('verdicts'):
    lines += ['']
    lines += [f'- {v["claim"]}: {v["mean"]:+.1%} [{v["ci95"][0]:+.1%}, {v["ci95"][1]:+.1%}] '
              f'over {v["seeds"]} seeds: **{v["verdict"]}**' for v in on_policy['verdicts']]
  return lines


def _closure_cell(point: dict | None) -> str:
  """'mean [lo, hi]'; one seed has no interval, so it shows the mean alone."""
  if point is None:
    return '—'
  if point['seeds'] < 2:
    return f'{point["mean"]:.1%} (1 seed)'
  return f'{point["mean"]:.1%} {_interval(point["ci95"])}'


def _interval(ci95: list[float]) -> str:
  return f'[{ci95[0]:.1%}, {ci95[1]:.1%}]'


def _eval_split(study: dict) -> str:
  splits = {r['final'].get('eval_split', '?') for seeds in study['arms'].values()
            for r in seeds.values()}
  return ', '.join(sorted(splits))


def plots(study: dict, summary: dict, out_dir: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  arms, teacher = study['arms'], summary['teacher_eval_loss']

  def mean_curve(seeds: dict) -> tuple[list[int], list[float]]:
    tokens = sorted(set.intersection(*(set(r['curve']) for r in seeds.values())))
    return tokens, [statistics.fmean(r['curve'][t] for r in seeds.values()) for t in tokens]

  # Ten colours, then the same colours dashed: every arm stays distinguishable.
  style = {arm: dict(color=f'C{i % 10}', linestyle='-' if i < 10 else '--')
           for i, arm in enumerate(arms)}
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for arm, seeds in arms.items():
    ax.plot(*mean_curve(seeds), marker='.', label=arm, **style[arm])
  if teacher is not None:
    ax.axhline(teacher, color='k', linestyle='--', label='teacher')
  ax.set(xlabel='training tokens', ylabel='eval loss (nats/token)',
         title='Eval loss, mean over seeds')
  ax.legend()
  fig.tight_layout()
  fig.savefig(out_dir / 'loss_curves.png', dpi=110)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for arm, entry in summary['arms'].items():
    curve = entry.get('gap_closure_curve')
    if curve:
      tokens = [p['tokens'] for p in curve]
      ax.plot(tokens, [p['mean'] for p in curve], marker='.', label=arm, **style[arm])
      ax.fill_between(tokens, [p['ci95'][0] for p in curve], [p['ci95'][1] for p in curve],
                      color=style[arm]['color'], alpha=0.15, linewidth=0)
  ax.axhline(0.0, color='k', linewidth=0.8)
  ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
  ax.set(xlabel='training tokens', ylabel='gap closure vs baseline',
         title='Gap closure against tokens (mean, 95% CI over paired seeds)')
  ax.legend()
  fig.tight_layout()
  fig.savefig(out_dir / 'gap_closure.png', dpi=110)
  plt.close(fig)


def write(study_dir: pathlib.Path, out_dir: pathlib.Path | None = None,
          title: str = '') -> dict:
  study = load_study(study_dir)
  out_dir = out_dir or study_dir
  out_dir.mkdir(parents=True, exist_ok=True)
  summary = summarize(study)
  title = title or f'GUIDE study: {study["meta"]["config"]}, sweep {study["meta"]["sweep"]}'
  (out_dir / 'summary.json').write_text(json.dumps(summary, indent=2))
  (out_dir / 'report.md').write_text(markdown(study, summary, title))
  plots(study, summary, out_dir)
  return summary


def define_flags() -> None:
  flags.DEFINE_string('study_dir', None, 'A directory written by guide_jax.study.')
  flags.DEFINE_string('out_dir', '', 'Where the report goes; default STUDY_DIR.')
  flags.DEFINE_string('title', '', 'Report title; default from study.json.')
  flags.mark_flag_as_required('study_dir')


def main(argv):
  del argv
  f = flags.FLAGS

  def body():
    study_dir = pathlib.Path(f.study_dir)
    write(study_dir, pathlib.Path(f.out_dir) if f.out_dir else None, f.title)
    print((pathlib.Path(f.out_dir or study_dir) / 'report.md').read_text())

  cli.run(body)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
