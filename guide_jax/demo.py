"""The GUIDE demo: teacher, then a GUIDE+KD student and a baseline student; a table.

  python -m guide_jax.demo --config=experiments/demo.py --workdir=workdirs/demo

Both students train for the same tokens from the same data order; the baseline is the
same config with GUIDE off (random init) and no KD. Gap closure =
(loss_baseline - loss_guide_kd) / (loss_baseline - loss_teacher). Runs that finished
before are reused (each arm resumes from its own workdir).
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags
from ml_collections import config_flags

from guide_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Demo config (a distill config).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Demo directory.')
flags.mark_flags_as_required(['config', 'workdir'])


def run(config, workdir: pathlib.Path) -> dict:
  from guide_jax.train import trainer
  guide_kd = trainer.train(config, workdir / 'guide_kd')  # trains WORKDIR/guide_kd/teacher
  baseline_cfg = config.copy_and_resolve_references()
  baseline_cfg.teacher.pretrain = type(config.teacher.pretrain)()  # no pretraining here
  baseline_cfg.teacher.checkpoint = str(workdir / 'guide_kd' / 'teacher')
  baseline_cfg.guide.init = 'none'
  baseline_cfg.loss.kd.value = 0.0
  baseline = trainer.train(baseline_cfg, workdir / 'baseline')
  teacher_loss = guide_kd['teacher/eval_loss']
  gap = baseline['eval/loss'] - teacher_loss
  summary = {
      'teacher_eval_loss': teacher_loss,
      'approx_teacher_eval_loss': guide_kd.get('teacher/approx_eval_loss'),
      'baseline_eval_loss': baseline['eval/loss'],
      'guide_kd_eval_loss': guide_kd['eval/loss'],
      'gap_closure': (baseline['eval/loss'] - guide_kd['eval/loss']) / gap if gap else None,
      'explained_variance': guide_kd['guide/explained_variance'],
      'tokens': config.train.steps * config.data.global_batch_size * config.data.seq_len,
  }
  (workdir / 'demo_summary.json').write_text(json.dumps(summary, indent=2))
  return summary


def table(summary: dict) -> str:
  rows = [('teacher', summary['teacher_eval_loss']),
          ('teacher, E -> E M M^T', summary['approx_teacher_eval_loss']),
          ('baseline student', summary['baseline_eval_loss']),
          ('GUIDE+KD student', summary['guide_kd_eval_loss'])]
  lines = ['| model | eval loss (nats/token) |', '|---|---|']
  lines += [f'| {name} | {value:.4f} |' for name, value in rows if value is not None]
  lines.append(f'\ngap closure {summary["gap_closure"]:.1%}; PCA explained variance '
               f'{summary["explained_variance"]:.1%}; {summary["tokens"]:,} training tokens '
               f'per student')
  return '\n'.join(lines)


def main(argv):
  del argv

  def body():
    print(table(run(cli.config_value(_CONFIG), pathlib.Path(_WORKDIR.value))))

  cli.run(body)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
