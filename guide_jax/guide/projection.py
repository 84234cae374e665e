"""GUIDE: the teacher's parameters projected into the student's (GUIDE_METHOD.md 1-3).

`project(teacher_params, teacher_cfg, student_cfg, guide_cfg)` is a pure function of
arrays, meant to run under `jax.jit` with out_shardings equal to the student's shardings.
It returns the projected ("guided") student leaves and diagnostics:

  guided['embedding'] = (c_T / c_S) * E_T @ M
  guided['pos_embedding'] = P_T[:L_S] @ M                    (learned positions)
  guided['blocks'][...] stacked over `guided_layers(...)`   (student block indices)
  guided['unembed'] = sqrt(d_T/d_S) * M^T diag(gf_T) W_U,T  (guide.unembed, untied student)

M is computed from C = A^T A, a matmul reduced over the vocabulary axis, so a
vocabulary-sharded E_T is never gathered; eigh runs on the small d_T x d_T matrix.
Residual-stream conventions: weights that *read* the stream see the student vector
through M^T (norm gain folded in), weights that *write* it are mapped back with @ M.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

Array = jax.Array
F32 = jnp.float32


class GuideError(ValueError):
  """A teacher/student pair GUIDE cannot map. The message names the field."""


def uniform_selection(total: int, keep: int) -> np.ndarray:
  """US(D -> k)[i] = floor(i * D / k), i = 0..k-1."""
  if not 0 < keep <= total:
    raise GuideError(f'uniform selection of {keep} from {total} is impossible')
  return (np.arange(keep) * total) // keep


def guided_layers(teacher_cfg, student_cfg, guide_cfg) -> tuple[np.ndarray, np.ndarray]:
  """(student block indices, teacher block indices) that GUIDE maps."""
  if guide_cfg.blocks == 'first':
    return np.array([0]), np.array([0])
  return np.arange(student_cfg.n_layers), uniform_selection(teacher_cfg.n_layers,
                                                            student_cfg.n_layers)


def head_selection(t, s) -> tuple[np.ndarray, np.ndarray]:
  """(teacher query head per student head, teacher kv head per student kv head).

  kv groups J_kv = US(h_kv_T -> h_kv_S); inside each chosen group, query heads by US
  over the group's heads, so each student query head keeps its teacher head's kv head.
  """
  kv = uniform_selection(t.n_kv_heads, s.n_kv_heads)
  group_t, group_s = t.n_heads // t.n_kv_heads, s.n_heads // s.n_kv_heads
  within = uniform_selection(group_t, group_s)
  q = np.array([kv[j // group_s] * group_t + within[j % group_s] for j in range(s.n_heads)])
  return q, kv


def head_dim_selection(t, s) -> np.ndarray:
  """Teacher head dims kept: US(l_T -> l_S), or whole rotary pairs with RoPE."""
  if t.position != 'rope':
    return uniform_selection(t.head_dim, s.head_dim)
  pairs = uniform_selection(t.head_dim // 2, s.head_dim // 2)
  # 'split halves' layout: pair k is dims (k, k + l/2)
  return np.concatenate([pairs, pairs + t.head_dim // 2])


def check_compatible(t, s, guide_cfg) -> None:
  """GUIDE_METHOD.md's requirements, each a one-line GuideError naming the field."""
  for name in ('d_model', 'n_heads', 'n_kv_heads', 'head_dim', 'mlp_dim'):
    if s[name] > t[name]:
      raise GuideError(f'student model.{name}={s[name]} exceeds the teacher\'s {t[name]}; '
                       f'GUIDE needs a student no larger than its teacher')
  if s.vocab_size != t.vocab_size:
    raise GuideError(f'student model.vocab_size={s.vocab_size} differs from the teacher\'s '
                     f'{t.vocab_size}; they must share the tokenizer')
  if s.position != t.position:
    raise GuideError(f'student model.position={s.position!r} differs from the teacher\'s '
                     f'{t.position!r}; GUIDE maps positions of the same scheme')
  if s.position == 'learned' and s.max_len > t.max_len:
    raise GuideError(f'student model.max_len={s.max_len} exceeds the teacher\'s {t.max_len} '
                     f'(learned positions are copied from the teacher\'s table)')
  if s.n_heads // s.n_kv_heads > t.n_heads // t.n_kv_heads:
    raise GuideError(f'student query heads per kv head ({s.n_heads}/{s.n_kv_heads}) exceed '
                     f'the teacher\'s ({t.n_heads}/{t.n_kv_heads}); lower model.n_heads or '
                     f'raise model.n_kv_heads')
  for name in ('norm', 'mlp', 'use_bias', 'qkv_bias', 'qk_norm', 'norm_scale_offset',
               'post_norms'):
    if s[name] != t[name]:
      raise GuideError(f'student model.{name}={s[name]!r} differs from the teacher\'s '
                       f'{t[name]!r}; GUIDE maps blocks of the same family')
  if s.position == 'rope':
    if s.head_dim != t.head_dim and t.head_dim % s.head_dim:
      raise GuideError(f'student model.head_dim={s.head_dim} must divide the teacher\'s '
                       f'{t.head_dim} with rope (only then are rotary frequencies exact)')
    for name in ('rope_base', 'rope_scaling', 'rope_scaling_factor', 'rope_low_freq_factor',
                 'rope_high_freq_factor', 'rope_original_max_len', 'local_rope_base'):
      if s[name] != t[name]:
        raise GuideError(f'student model.{name}={s[name]!r} differs from the teacher\'s '
                         f'{t[name]!r}; the selected rotary frequencies must be the same')
  if guide_cfg.blocks == 'all' and s.n_layers > t.n_layers:
    raise GuideError(f"student model.n_layers={s.n_layers} exceeds the teacher's "
                     f"{t.n_layers}; guide.blocks='all' maps each student block to its own "
                     f"teacher block: lower model.n_layers or use guide.blocks='first'")
  if guide_cfg.blocks not in ('first', 'all'):
    raise GuideError(f"guide.blocks={guide_cfg.blocks!r} must be 'first' or 'all'")
  if guide_cfg.pca_rows not in ('embed', 'embed+pos'):
    raise GuideError(f"guide.pca_rows={guide_cfg.pca_rows!r} must be 'embed' or 'embed+pos'")
  if guide_cfg.pca_rows == 'embed+pos' and t.position != 'learned':
    raise GuideError("guide.pca_rows='embed+pos' needs learned positions (model.position)")


# --- 1. the projection M ----------------------------------------------------------------


def pca_basis(teacher_params: dict, d_student: int, center: bool, pca_rows: str,
              vocab_rows: int = 0):
  """(M [d_T, d_S], eigenvalues descending [d_T], explained variance).

  `vocab_rows` > 0 keeps only the first rows of E_T: a vocabulary padded beyond its
  tokenizer (Qwen-style) has rows no token produces, which must not shape M. They are
  masked, not sliced, so a vocabulary-sharded table stays sharded.
  """
  embedding = teacher_params['embedding'].astype(F32)
  used = None  # rows of E_T a token can produce (all, unless the table is padded)
  if vocab_rows and vocab_rows < embedding.shape[0]:
    used = jnp.arange(embedding.shape[0])[:, None] < vocab_rows
    embedding = jnp.where(used, embedding, 0.0)
  rows = [embedding]
  if pca_rows == 'embed+pos':
    rows.append(teacher_params['pos_embedding'].astype(F32))
  if center:
    # Centre the rows themselves: C - n mu mu^T would cancel two large numbers when the
    # rows' mean is large against their spread, losing the subspace in float32.
    n = (vocab_rows or rows[0].shape[0]) + sum(a.shape[0] for a in rows[1:])
    mean = sum(jnp.sum(a, axis=0) for a in rows) / n
    rows = [a - mean for a in rows]
    if used is not None:
      rows[0] = jnp.where(used, rows[0], 0.0)
  # C = A^T A: each row block contributes a matmul reduced over its (possibly sharded)
  # row axis; XLA reduces partial sums across shards instead of gathering the table.
  cov = sum(jnp.einsum('vd,ve->de', a, a, preferred_element_type=F32) for a in rows)
  eigvals, eigvecs = jnp.linalg.eigh(cov)                 # ascending
  eigvals, eigvecs = eigvals[::-1], eigvecs[:, ::-1]      # descending
  m = eigvecs[:, :d_student]
  # Deterministic signs: each column's largest-magnitude entry is positive.
  pivot = jnp.take_along_axis(m, jnp.argmax(jnp.abs(m), axis=0)[None], axis=0)
  m = m * jnp.where(pivot < 0, -1.0, 1.0)
  explained = jnp.sum(eigvals[:d_student]) / jnp.trace(cov)
  return m, eigvals, explained


# --- 2./3. mapping the leaves -----------------------------------------------------------


def _read(w, m, gain, scale):
  """Read weight [d_T, ...] -> [d_S, ...]: scale * M^T diag(gain) W."""
  return scale * jnp.einsum('ds,d...->s...', m, w * gain.reshape((-1,) + (1,) * (w.ndim - 1)))


def _write(w, m):
  """Write weight [..., d_T] -> [..., d_S]: W @ M."""
  return jnp.einsum('...d,ds->...s', w, m)


def unit_gain(s) -> Array:
  """The student norm scale whose gain (norm_scale_offset + scale) is 1."""
  return jnp.full((s.d_model,), 1.0 - s.norm_scale_offset, F32)


def _project_block(tb: dict, m, t, s, g) -> dict:
  """One teacher block's leaves (no layer axis) -> the student block's leaves."""
  q_heads, kv_heads = head_selection(t, s)
  dims = head_dim_selection(t, s)
  mlp_units = uniform_selection(t.mlp_dim, s.mlp_dim)
  fold = g.fold_norm
  norm_scale = math.sqrt(t.d_model / s.d_model) if fold else 1.0
  ones = lambda d: jnp.ones((d,), F32)

  def gain(norm):
    return t.norm_scale_offset + tb[norm]['scale'].astype(F32) if fold else ones(t.d_model)

  def norm_bias_through(norm, w_sel):
    """b_norm @ W_T[:, sel]: the teacher norm's bias, folded into the read bias."""
    if fold and t.norm == 'layernorm':
      return jnp.einsum('d,d...->...', tb[norm]['bias'].astype(F32), w_sel)
    return 0.0

  attn_t, mlp_t = tb['attn'], tb['mlp']
  q_scale = math.sqrt(t.head_dim / s.head_dim) if g.attn_logit_rescale else 1.0
  attn: dict = {}
  for name, heads, extra in (('wq', q_heads, q_scale), ('wk', kv_heads, 1.0),
                             ('wv', kv_heads, 1.0)):
    w_sel = attn_t[name].astype(F32)[:, heads][:, :, dims]
    attn[name] = extra * _read(w_sel, m, gain('norm1'), norm_scale)
    if s.use_bias or s.qkv_bias:
      b = attn_t['b' + name[1:]].astype(F32)[heads][:, dims]
      attn['b' + name[1:]] = extra * (b + norm_bias_through('norm1', w_sel))
  out_scale = t.n_heads / s.n_heads if g.rescale_outputs else 1.0
  attn['wo'] = out_scale * _write(attn_t['wo'].astype(F32)[q_heads][:, dims], m)
  if s.use_bias:
    attn['bo'] = _write(attn_t['bo'].astype(F32), m)
  if s.qk_norm:
    # Per-head q/k RMSNorm reads the head's own dims, not the residual stream: its gains
    # are kept at the selected dims. Exact when l_S = l_T; with fewer dims the RMS is
    # taken over the kept dims only, so the normalised q/k (and attn_logit_rescale's
    # correction) are approximate (docs: GUIDE and model features).
    for norm in ('q_norm', 'k_norm'):
      attn[norm] = {'scale': attn_t[norm]['scale'].astype(F32)[dims]}

  mlp: dict = {}
  for name in [k for k in mlp_t if k in ('w_in', 'w_gate', 'w_up')]:
    w_sel = mlp_t[name].astype(F32)[:, mlp_units]
    mlp[name] = _read(w_sel, m, gain('norm2'), norm_scale)
    if s.use_bias:
      mlp['b' + name[1:]] = mlp_t['b' + name[1:]].astype(F32)[mlp_units] + \
          norm_bias_through('norm2', w_sel)
  mlp_scale = t.mlp_dim / s.mlp_dim if g.rescale_outputs else 1.0
  mlp['w_out'] = mlp_scale * _write(mlp_t['w_out'].astype(F32)[mlp_units], m)
  if s.use_bias:
    mlp['b_out'] = _write(mlp_t['b_out'].astype(F32), m)

  block = {'attn': attn, 'mlp': mlp}
  for norm in ('norm1', 'norm2'):  # gains folded into the reads: the student's are 1
    block[norm] = {'scale': unit_gain(s)}
    if s.norm == 'layernorm':
      block[norm]['bias'] = jnp.zeros((s.d_model,), F32)
  if s.post_norms:
    for norm in ('post_attn_norm', 'post_mlp_norm'):
      gain_s = post_norm_gain(t.norm_scale_offset + tb[norm]['scale'].astype(F32), m,
                              math.sqrt(t.d_model / s.d_model))
      block[norm] = {'scale': gain_s - s.norm_scale_offset}
  return block


def post_norm_gain(gain_t, m, scale) -> Array:
  """The student gain of a norm that *writes* the residual stream (Gemma 2/3's post-
  attention and post-MLP norms): scale * diag(M^T diag(g_T) M), i.e. g_S[k] = scale *
  sum_d M[d, k]^2 g_T[d]. A gain applied after the normalisation cannot be folded into a
  weight, and M^T diag(g_T) M is a full matrix; its diagonal is the closest per-dim gain.
  Exact when g_T is uniform (then it is g_T), and `scale` = sqrt(d_T/d_S) is the norm's
  RMS over d_S instead of d_T, as in the read folding."""
  return scale * jnp.einsum('dk,d,dk->k', m, gain_t, m)


def project(teacher_params: dict, teacher_cfg: ml_collections.ConfigDict,
            student_cfg: ml_collections.ConfigDict, guide_cfg: ml_collections.ConfigDict,
            vocab_rows: int = 0) -> tuple[dict, dict]:
  """(guided student leaves in the student's param dtype, diagnostics). `vocab_rows`:
  the tokenizer's size when the teacher's vocabulary is padded beyond it (0 = all rows)."""
  t, s, g = teacher_cfg, student_cfg, guide_cfg
  m, eigvals, explained = pca_basis(teacher_params, s.d_model, g.center, g.pca_rows,
                                    vocab_rows)
  c_t = math.sqrt(t.d_model) if t.scale_embeddings else 1.0
  c_s = math.sqrt(s.d_model) if s.scale_embeddings else 1.0
  guided: dict = {'embedding': (c_t / c_s) * teacher_params['embedding'].astype(F32) @ m}
  if s.position == 'learned':
    guided['pos_embedding'] = teacher_params['pos_embedding'][:s.max_len].astype(F32) @ m

  _, t_layers = guided_layers(t, s, g)
  per_layer = [_project_block(jax.tree.map(lambda a, i=i: a[i], teacher_params['blocks']),
                              m, t, s, g) for i in t_layers]
  guided['blocks'] = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)

  if g.unembed and not s.tie_embeddings:
    w_u = (teacher_params['embedding'].T if t.tie_embeddings
           else teacher_params['unembed']).astype(F32)
    final_gain = t.norm_scale_offset + teacher_params['final_norm']['scale'].astype(F32)
    guided['unembed'] = _read(w_u, m, final_gain, math.sqrt(t.d_model / s.d_model))
    guided['final_norm'] = {'scale': unit_gain(s)}
    if s.norm == 'layernorm':  # a LayerNorm's final bias has no output bias to fold into
      guided['final_norm']['bias'] = jnp.zeros((s.d_model,), F32)

  dtype = jnp.dtype(s.param_dtype)
  guided = jax.tree.map(lambda x: x.astype(dtype), guided)
  diagnostics = {'explained_variance': explained, 'eigenvalues': eigvals,
                 'leaf_norms': jax.tree.map(jnp.linalg.norm, guided), 'projection': m}
  return guided, diagnostics
