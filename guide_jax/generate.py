"""python -m guide_jax.generate --workdir=RUN (or a Hugging Face directory) --prompt=TEXT

  [--prompts_file=FILE]   one prompt per line, generated as one batch
  [--max_new_tokens=64] [--temperature=0 (greedy)] [--top_k=0] [--top_p=1.0] [--seed=0]
  [--dtype=float32]       parameters and compute dtype ('bfloat16' on accelerators)

Loads the run's latest checkpoint (or the HF model) onto all local devices, encodes the
prompts with the run's tokenizer, and samples with a KV cache (guide_jax.infer.sampler).
One prompt streams its completion to stdout as it is produced; several print each
completion when its row finishes (EOS or max_new_tokens), prefixed by its index.
"""

from __future__ import annotations

import sys

from absl import app, flags

from guide_jax import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training run or a Hugging Face directory.')
_PROMPT = flags.DEFINE_multi_string('prompt', [], 'A prompt (repeatable).')
_PROMPTS_FILE = flags.DEFINE_string('prompts_file', '', 'A file with one prompt per line.')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 64, 'Tokens to generate per prompt.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.0, '0: greedy.')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Sample among the k most likely tokens (0: all).')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling mass (1.0: all).')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_DTYPE = flags.DEFINE_string('dtype', 'float32', "'float32' or 'bfloat16'.")
flags.mark_flags_as_required(['workdir'])


def prompts() -> list[str]:
  from guide_jax import config as config_lib
  texts = list(_PROMPT.value)
  if _PROMPTS_FILE.value:
    try:
      with open(_PROMPTS_FILE.value, encoding='utf-8') as f:
        texts += [line.rstrip('\n') for line in f if line.strip()]
    except OSError as e:
      raise config_lib.ConfigError(f'--prompts_file: {e}') from None
  if not texts:
    raise config_lib.ConfigError('no prompt: give --prompt=TEXT or --prompts_file=FILE')
  return texts


def body() -> None:
  from guide_jax.infer import sampler as sampler_lib
  texts = prompts()
  sampling = sampler_lib.Sampling(_MAX_NEW.value, _TEMPERATURE.value, _TOP_K.value,
                                  _TOP_P.value, _SEED.value)
  sampling.check()
  model = sampler_lib.load(_WORKDIR.value, _DTYPE.value)
  ids = [model.vocab.encode(t) for t in texts]
  if len(texts) == 1:
    stream = Stream(model.vocab, texts[0])
    model.sampler.generate(ids, sampling, on_step=stream.step)
    stream.finish()
  else:
    printed = set()
    generated: list[list[int]] = [[] for _ in texts]

    def on_step(tokens, done):
      for b, t in enumerate(tokens):
        if b in printed:
          continue
        generated[b].append(int(t))
        if done[b] or len(generated[b]) == sampling.max_new_tokens:
          printed.add(b)
          print(f'[{b}] {texts[b]}{model.decode(generated[b])}', flush=True)

    model.sampler.generate(ids, sampling, on_step=on_step)


class Stream:
  """Prints the completion of one prompt as it grows (whole characters only)."""

  def __init__(self, vocab, prompt: str):
    self.vocab, self.ids, self.shown = vocab, [], ''
    sys.stdout.write(prompt)
    sys.stdout.flush()

  def step(self, tokens, done) -> None:
    if len(self.ids) and self.ids[-1] == self.vocab.eos_id:
      return
    self.ids.append(int(tokens[0]))
    text = self.vocab.decode([i for i in self.ids if i != self.vocab.eos_id])
    if not text.endswith('\ufffd'):  # a character split over tokens: wait for the rest
      sys.stdout.write(text[len(self.shown):])
      sys.stdout.flush()
      self.shown = text

  def finish(self) -> None:
    sys.stdout.write('\n')


def main(argv):
  del argv
  cli.run(body)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
