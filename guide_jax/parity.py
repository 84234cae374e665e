"""python -m guide_jax.parity --hf=DIR [--workdir=RUN]

Loads a Hugging Face directory in transformers and in guide_jax (or, with --workdir, runs
that training run's checkpoint in guide_jax against DIR, its export), runs one fixed batch,
prints max |logit difference| and mean KL, and ends with one JSON line
{"family", "length", "max_abs_diff", "mean_kl", "ok"}. Exit status 1 when above tolerance. Run it
after importing a real checkpoint. Needs the hf-parity extra (torch, transformers).
"""

from __future__ import annotations

import json

from absl import app, flags

from guide_jax import cli

_HF = flags.DEFINE_string('hf', None, 'A Hugging Face model directory.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Optional: a run whose export --hf is.')
_BATCH = flags.DEFINE_integer('batch', 2, 'Rows of the fixed batch.')
_LENGTH = flags.DEFINE_integer('length', 64, 'Tokens per row (capped by the model).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the random tokens.')
_ATOL = flags.DEFINE_float('atol', 1e-3, 'Largest accepted |logit difference|.')
_KL_TOL = flags.DEFINE_float('kl_tol', 1e-6, 'Largest accepted mean KL (nats/token).')
flags.mark_flags_as_required(['hf'])


def main(argv):
  del argv

  def body():
    from guide_jax.hf import parity
    result = parity.compare(_HF.value, _WORKDIR.value, batch=_BATCH.value,
                            length=_LENGTH.value, seed=_SEED.value, atol=_ATOL.value,
                            kl_tol=_KL_TOL.value)
    print(f'max |logit difference| {result["max_abs_diff"]:.3e} (tolerance {_ATOL.value:g}); '
          f'mean KL {result["mean_kl"]:.3e} nats/token (tolerance {_KL_TOL.value:g})')
    print(json.dumps(result))
    return 0 if result['ok'] else 1

  cli.run(body)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
