"""Turn a finished study into a report: a table over seeds, curves, gap closure.

  python -m guide_jax.report --study_dir=workdirs/cpu_study/main [--out_dir=results/...]

Reads STUDY_DIR/study.json (written by guide_jax.study) and each run's metrics.jsonl.
Runs named '<arm>/seed<k>' are grouped by arm. Gap closure of an arm at seed k is
(L_baseline,k - L_arm,k) / (L_baseline,k - L_teacher): paired with the baseline of the
same seed (same data order), so seed noise that both share cancels. Writes to OUT_DIR
(default STUDY_DIR): report.md, summary.json, loss_curves.png, gap_closure.png.
"""

from __future__ import annotations

import json
import math
import pathlib
import statistics
import sys

from absl import app, flags

BASELINE = 'baseline'


class ReportError(ValueError):
  pass


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
           'curve': {r['tokens']: r['eval/loss'] for r in records if 'eval/loss' in r}}
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
  return {'meta': meta, 'arms': arms, 'teacher_harness': harness_scores(study_dir / 'teacher')}


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
    closures = [closure(base[s]['final']['eval/loss'], r['final']['eval/loss'], teacher)
                for s, r in seeds.items() if s in base and teacher is not None]
    loss_mean, loss_std = _mean_std(losses)
    entry = {'eval_loss_mean': loss_mean, 'eval_loss_std': loss_std,
             'ppl_mean': statistics.fmean(math.exp(x) for x in losses),
             'gap_closure_mean': None, 'gap_closure_std': None, 'seeds': len(losses),
             'tokens': next(iter(seeds.values()))['final']['tokens']}
    if closures and None not in closures:
      entry['gap_closure_mean'], entry['gap_closure_std'] = _mean_std(closures)
    bits = [r['final'].get('eval/bits_per_byte') for r in seeds.values()]
    entry['bits_per_byte_mean'] = statistics.fmean(bits) if None not in bits else None
    out_arms[arm] = entry
  harness = {'teacher': study['teacher_harness']} if study['teacher_harness'] else {}
  for arm, seeds in arms.items():
    keys = set.intersection(*(set(r['harness']) for r in seeds.values()))
    if keys:
      harness[arm] = {k: statistics.fmean(r['harness'][k] for r in seeds.values())
                      for k in sorted(keys)}
  return {'teacher_eval_loss': teacher, 'teacher_bits_per_byte': teacher_bpb,
          'harness': harness, 'approx_teacher_eval_loss': approx,
          'explained_variance': explained, 'arms': out_arms}


def closure(baseline_loss: float, arm_loss: float, teacher_loss: float) -> float | None:
  gap = baseline_loss - teacher_loss
  return (baseline_loss - arm_loss) / gap if gap > 0 else None


def targets(summary: dict) -> list[tuple[str, bool]]:
  """The paper's claims, checked where the arms they need are present."""
  arms = {k: v['gap_closure_mean'] for k, v in summary['arms'].items()}
  checks = []
  g, kd, gkd = arms.get('guide'), arms.get('kd'), arms.get('guide_kd')
  if g is not None:
    checks.append((f'GUIDE alone closes >= 25% of the gap ({g:.1%})', g >= 0.25))
  if g is not None and kd is not None:
    checks.append((f'GUIDE alone beats KD alone ({g:.1%} vs {kd:.1%})', g > kd))
  if None not in (g, kd, gkd):
    checks.append((f'GUIDE+KD closes more than either alone ({gkd:.1%} vs {g:.1%}, '
                   f'{kd:.1%})', gkd > max(g, kd)))
    ratio = gkd / (g + kd) if g + kd > 0 else float('nan')
    checks.append((f'GUIDE+KD is near-additive: >= 80% of GUIDE + KD ({ratio:.1%} of '
                   f'{g + kd:.1%})', ratio >= 0.8))
  return checks


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
  lines += ['', f'Eval split: {_eval_split(study)}. Mean ± std over seeds; gap closure '
            f'paired with the baseline of the same seed.', '',
            '| arm | seeds | tokens | eval loss (nats/token) | bits/byte | ppl | gap closure |',
            '|---|---|---|---|---|---|---|']
  for arm, s in summary['arms'].items():
    one = s['seeds'] < 2  # no spread to show
    lines.append(f'| {arm} | {s["seeds"]} | {s["tokens"]:,} | '
                 f'{fmt(s["eval_loss_mean"], None if one else s["eval_loss_std"])} | '
                 f'{fmt(s.get("bits_per_byte_mean"), None)} | {s["ppl_mean"]:.2f} | '
                 f'{fmt(s["gap_closure_mean"], None if one else s["gap_closure_std"], True)} |')
  lines += ['', '| arm | what it sets (besides train.seed, data.seed) |', '|---|---|']
  for arm, seeds in study['arms'].items():
    overrides = next(iter(seeds.values()))['final'].get('overrides', {})
    shown = {k: v for k, v in overrides.items() if k not in ('train.seed', 'data.seed')}
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
  checks = targets(summary)
  if checks:
    lines += ['', '## Targets', '']
    lines += [f'- [{"x" if ok else " "}] {text}: **{"met" if ok else "missed"}**'
              for text, ok in checks]
  lines += ['', '![eval loss](loss_curves.png)', '', '![gap closure](gap_closure.png)', '']
  return '\n'.join(lines)


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
  base = arms.get(BASELINE)
  if base is not None and teacher is not None:
    base_tokens, base_curve = mean_curve(base)
    base_at = dict(zip(base_tokens, base_curve))
    for arm, seeds in arms.items():
      if arm == BASELINE:
        continue
      tokens, curve = mean_curve(seeds)
      points = [(t, closure(base_at[t], v, teacher)) for t, v in zip(tokens, curve)
                if t in base_at]
      points = [(t, c) for t, c in points if c is not None]
      if points:
        ax.plot(*zip(*points), marker='.', label=arm, **style[arm])
    ax.axhline(0.0, color='k', linewidth=0.8)
  ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
  ax.set(xlabel='training tokens', ylabel='gap closure vs baseline',
         title='Gap closure against tokens (mean curves)')
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
  study_dir = pathlib.Path(f.study_dir)
  try:
    write(study_dir, pathlib.Path(f.out_dir) if f.out_dir else None, f.title)
  except ReportError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  out = pathlib.Path(f.out_dir or study_dir)
  print((out / 'report.md').read_text())


if __name__ == '__main__':
  define_flags()
  app.run(main)
