"""guide_jax as an lm-evaluation-harness model (the `eval` extra: `lm-eval`).

`GuideJaxLM` answers the harness's three request types with a loaded model
(guide_jax.infer.sampler.load: a training run or a Hugging Face directory):
  loglikelihood           log P(continuation | context) and whether greedy decoding gives
                          it, from one forward pass per (context, continuation) pair
  loglikelihood_rolling   the log-likelihood of a whole text, in disjoint windows of the
                          model's max length (the harness's own windowing, as in its HF model)
  generate_until          the KV-cache sampler, cut at the first `until` string
Requests are scored in batches of `batch_size` rows padded to a multiple of 64 tokens,
placed on the sampler's mesh (rows over the data axes), one compiled function per padded
length. Pairs are encoded the harness's way: the context's trailing spaces move to the
continuation, and the continuation is what the tokenizer gives for context+continuation
beyond the context's own tokens. An empty context is conditioned on EOS.
"""

from __future__ import annotations

import json
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from guide_jax import sharding
from guide_jax.infer import sampler as sampler_lib
from guide_jax.models import transformer

from lm_eval.api.model import LM
from lm_eval import utils as lm_utils

PAD_MULTIPLE = 64


class GuideJaxLM(LM):
  """An lm-eval `LM` over a `sampler_lib.LoadedModel`."""

  def __init__(self, loaded: sampler_lib.LoadedModel, batch_size: int = 8,
               max_gen_toks: int = 256):
    super().__init__()
    self.loaded, self.cfg, self.vocab = loaded, loaded.model, loaded.vocab
    self.batch_size, self.max_gen_toks = batch_size, max_gen_toks
    self.max_length = loaded.model.max_len
    self._scorers: dict[int, object] = {}

  # --- scoring -------------------------------------------------------------------------

  def _scorer(self, width: int):
    """jit: (params, inputs [b, width], targets, lengths [b]) -> (log p [b, width],
    greedy match [b, width]) of each target under the model."""
    if width not in self._scorers:
      cfg, mesh = self.cfg, self.loaded.sampler.mesh
      rows = NamedSharding(mesh, sharding.spec_for(
          ('act_batch', None), sharding.DEFAULT_RULES, (self.batch_size, width), mesh))

      def score(params, inputs, targets, lengths):
        real = jnp.arange(width)[None, :] < lengths[:, None]
        batch = {'inputs': inputs, 'positions': jnp.broadcast_to(jnp.arange(width), inputs.shape),
                 'segment_ids': real.astype(jnp.int32)}
        logits = transformer.apply(cfg, params, batch)
        logp = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return picked, jnp.argmax(logits, axis=-1) == targets

      self._scorers[width] = jax.jit(score, in_shardings=(None, rows, rows, None))
    return self._scorers[width]

  def score_pairs(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
    """(sum of log P(continuation tokens), all greedy) for token pairs (context, continuation),
    the context cut on the left to fit max_length."""
    out: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
    mesh = self.loaded.sampler.mesh
    for start in range(0, len(order), self.batch_size):
      chosen = order[start:start + self.batch_size]
      seqs = [(pairs[i][0] + pairs[i][1])[-(self.max_length + 1):] for i in chosen]
      width = min(-(-max(len(s) - 1 for s in seqs) // PAD_MULTIPLE) * PAD_MULTIPLE,
                  self.max_length)
      inputs = np.zeros((self.batch_size, width), np.int32)
      targets = np.zeros((self.batch_size, width), np.int32)
      lengths = np.zeros((self.batch_size,), np.int32)
      for row, s in enumerate(seqs):
        inputs[row, :len(s) - 1], targets[row, :len(s) - 1] = s[:-1], s[1:]
        lengths[row] = len(s) - 1
      with jax.set_mesh(mesh), sharding.use_rules(sharding.DEFAULT_RULES):
        logp, greedy = jax.device_get(self._scorer(width)(self.loaded.params, inputs, targets,
                                                          lengths))
      for row, i in enumerate(chosen):
        n_cont, end = len(pairs[i][1]), lengths[row]
        span = slice(max(end - n_cont, 0), end)
        out[i] = (float(logp[row, span].sum()), bool(greedy[row, span].all()))
    return out

  # --- the harness's interface ----------------------------------------------------------

  def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
      context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
      return [self.vocab.eos_id], self.vocab.encode(continuation)
    whole = self.vocab.encode(context + continuation)
    context_ids = self.vocab.encode(context)
    return context_ids, whole[len(context_ids):]

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    return self.score_pairs([self.encode_pair(*r.args) for r in requests])

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    out = []
    for r in requests:
      windows = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
          token_list=self.vocab.encode(r.args[0]), prefix_token=self.vocab.eos_id,
          max_seq_len=self.max_length, context_len=1)]
      out.append(sum(ll for ll, _ in self.score_pairs(windows)))
    return out

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    out = []
    for r in requests:
      context, kwargs = r.args[0], dict(r.args[1] or {})
      until = kwargs.get('until') or []
      until = [until] if isinstance(until, str) else list(until)
      max_new = int(kwargs.get('max_gen_toks', self.max_gen_toks))
      temperature = float(kwargs.get('temperature', 0.0)) if kwargs.get('do_sample') else 0.0
      ids = self.vocab.encode(context) or [self.vocab.eos_id]
      if self.cfg.position == 'learned':
        ids = ids[-(self.max_length - max_new):]
      new = self.loaded.sampler.generate(
          [ids], sampler_lib.Sampling(max_new_tokens=max_new, temperature=temperature))[0]
      text = self.loaded.decode(new)
      for stop in until:
        text = text.split(stop)[0]
      out.append(text)
    return out


def run(workdir: str, tasks: list[str], include_path: str = '', limit: float | None = None,
        batch_size: int = 8, dtype: str = 'float32', output: str = '',
        teacher: str = '') -> dict:
  """Evaluate a run (or HF directory) on lm-eval `tasks`; writes and returns the results."""
  import lm_eval
  from etils import epath
  from lm_eval.tasks import TaskManager
  from guide_jax import config as config_lib
  from guide_jax import paths, report
  from guide_jax.evals import own_data
  # Indexing lm-eval's ~15k built-in tasks takes ~20 s: when --include_path holds every
  # task asked for, index only that folder.
  manager = TaskManager(include_path=include_path, include_defaults=False) if include_path \
      else None
  if manager is None or any(t not in manager.all_tasks for t in tasks):
    manager = TaskManager(include_path=include_path or None)
  unknown = [t for t in tasks if t not in manager.all_tasks]
  if unknown:
    raise config_lib.ConfigError(
        f'--tasks: {", ".join(unknown)} is not an lm-eval task or group (with '
        f'--include_path={include_path!r}); list them with `lm-eval ls tasks`')
  loaded = sampler_lib.load(workdir, dtype)
  # bootstrap_iters=0: the harness bootstraps standard errors in a forked pool, and
  # forking a process that runs JAX can deadlock.
  results = lm_eval.simple_evaluate(model=GuideJaxLM(loaded, batch_size), tasks=tasks,
                                    limit=limit, task_manager=manager, log_samples=False,
                                    bootstrap_iters=0)
  # The run's own eval batches too: nats per token and bits per byte, as the trainer logs.
  results['guide_jax'] = own_data.evaluate_run(paths.workdir_path(workdir), loaded, teacher)
  path = epath.Path(output) if output else paths.workdir_path(workdir) / report.HARNESS_RESULTS
  text = json.dumps(results, indent=1, default=lm_utils.handle_non_serializable)
  path.write_text(text)
  return json.loads(text)

