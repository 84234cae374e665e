"""Logit parity between guide_jax and transformers on a fixed batch (MaxText's logit checker).

`compare(hf_dir)` imports a Hugging Face directory into guide_jax and also loads it in
transformers; `compare(hf_dir, workdir=RUN)` instead runs the run's own checkpoint in
guide_jax against `hf_dir` (its export) in transformers. Both sides compute in float32
on the same random tokens (a fixed seed, ids the tokenizer can produce). The result is
the max |logit difference| and the mean per-token KL(transformers || guide_jax).

torch and transformers are imported here only, lazily: they are the reference, never a
dependency of training (`pip install 'guide_jax[hf-parity]'`).
"""

from __future__ import annotations

import ml_collections
import numpy as np
from etils import epath

from guide_jax import config as config_lib
from guide_jax import saved_model
from guide_jax.data import tokenizer as tokenizer_lib
from guide_jax.hf import checkpoint as hf_checkpoint
from guide_jax.models import transformer


def batch_for(model: ml_collections.ConfigDict, token_rows: int, batch: int, length: int,
              seed: int) -> dict:
  """A packed batch of random tokens: one sequence per row, positions from 0 (longer than
  a sliding window where the model has one: the window is computed, and checked)."""
  length = min(length, model.max_len)
  tokens = np.random.default_rng(seed).integers(0, token_rows, (batch, length), np.int32)
  return {'inputs': tokens, 'segment_ids': np.ones_like(tokens),
          'positions': np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape).copy()}


def guide_jax_logits(path, batch: dict) -> np.ndarray:
  """float32 logits of a Hugging Face directory imported into guide_jax, or of a run's
  latest checkpoint, on one device (saved_model.load)."""
  saved = saved_model.load(path, dtype='float32')
  saved.model.dtype = 'float32'
  return np.asarray(transformer.apply(saved.model, saved.params, batch))


def transformers_logits(hf_dir, batch: dict) -> np.ndarray:
  try:
    import torch
    import transformers
  except ImportError:
    raise config_lib.ConfigError(
        'the parity check needs torch and transformers: pip install "guide_jax[hf-parity]"'
    ) from None
  model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
  model.eval()
  with torch.no_grad():
    out = model(input_ids=torch.tensor(batch['inputs'], dtype=torch.long))
  return out.logits.float().numpy()


def metrics(reference: np.ndarray, ours: np.ndarray) -> dict[str, float]:
  """max |difference| and mean KL(reference || ours) per token, in float64."""
  ref, mine = reference.astype(np.float64), ours.astype(np.float64)
  log_p = ref - np.logaddexp.reduce(ref, axis=-1, keepdims=True)
  log_q = mine - np.logaddexp.reduce(mine, axis=-1, keepdims=True)
  kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
  return {'max_abs_diff': float(np.max(np.abs(ref - mine))), 'mean_kl': float(np.mean(kl))}


def compare(hf_dir, workdir=None, *, batch: int = 2, length: int = 64, seed: int = 0,
            atol: float = 1e-3, kl_tol: float = 1e-6) -> dict:
  """{'family', 'length', 'max_abs_diff', 'mean_kl', 'ok'} for `hf_dir` (and optionally a
  run); `length` is the tokens per row compared (`length`, capped at the model's max_len)."""
  hf = hf_checkpoint.read_config(hf_dir)
  model = saved_model.stored_model(workdir or hf_dir)
  rows = model.vocab_size  # only ids the tokenizer can produce (padded tables: fewer)
  tokenizer_json = epath.Path(hf_dir) / 'tokenizer.json'
  if tokenizer_json.exists():
    rows = min(rows, tokenizer_lib.load(str(tokenizer_json)).size)
  tokens = batch_for(model, rows, batch, length, seed)
  ours = guide_jax_logits(workdir or hf_dir, tokens)
  reference = transformers_logits(hf_dir, tokens)
  result = {'family': hf.get('model_type'), 'length': int(tokens['inputs'].shape[1]),
            **metrics(reference, ours)}
  result['ok'] = result['max_abs_diff'] <= atol and result['mean_kl'] <= kl_tol
  return result

