"""python -m guide_jax.export --workdir=RUN --out=DIR [--step=N] [--dtype=bfloat16]

Writes the run's checkpoint as a Hugging Face directory (config.json,
generation_config.json, model.safetensors or shards + index, tokenizer files) that
`transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads. A model that no
Hugging Face family can express is refused with the config field that has no
equivalent; nothing is written then. Check the result with `python -m guide_jax.parity`.
"""

from __future__ import annotations

import json

from absl import app, flags

from guide_jax import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'The training run to export.')
_OUT = flags.DEFINE_string('out', None, 'A new (or empty) directory to write.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_DTYPE = flags.DEFINE_string('dtype', '', "Stored dtype: 'float32' or 'bfloat16' "
                             "(default: the run's param_dtype).")
_SHARD_GB = flags.DEFINE_float('max_shard_gb', 2.0, 'Largest safetensors file; above it the '
                               'weights are sharded with model.safetensors.index.json.')
flags.mark_flags_as_required(['workdir', 'out'])


def main(argv):
  del argv

  def body():
    from guide_jax.hf import export
    summary = export.export_run(_WORKDIR.value, _OUT.value, _STEP.value, _DTYPE.value,
                                int(_SHARD_GB.value * (1 << 30)))
    print(json.dumps(summary))

  cli.run(body)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
