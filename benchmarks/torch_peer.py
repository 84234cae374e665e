"""A plain eager PyTorch loop of the same model and step as a guide_jax config: the peer
`python -m guide_jax.bench --peer` times beside guide_jax, round by round.

Never imported by the package's training path: the bench loads this file by path, and
only with --peer (torch comes with the `hf-parity` extra). It mirrors guide_jax's
transformer (models/transformer.py) for the fields the benchmark configs use: learned
absolute positions, pre-norm blocks (LayerNorm or RMSNorm, no biases), multi-head or
grouped-query causal attention through F.scaled_dot_product_attention, a GELU (tanh) or
SwiGLU MLP, a tied or untied output layer; AdamW with the config's betas, weight decay
(matrices only) and global-norm clipping. Steps:

  lm  next-token cross-entropy, one AdamW update
  kd  cross-entropy + forward KL to a frozen teacher's logits (its forward under no_grad),
      as guide_jax's default `loss.kd` (weight 1, temperature 1)

bfloat16 (`model.dtype`) runs the matmuls under CPU autocast with float32 parameters, as
guide_jax's compute dtype does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _Norm(nn.Module):

  def __init__(self, d: int, kind: str, eps: float):
    super().__init__()
    self.kind, self.eps = kind, eps
    self.scale = nn.Parameter(torch.ones(d))
    self.bias = nn.Parameter(torch.zeros(d)) if kind == 'layernorm' else None

  def forward(self, x):
    if self.kind == 'layernorm':
      return F.layer_norm(x, (x.shape[-1],), self.scale, self.bias, self.eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


class _Block(nn.Module):

  def __init__(self, m):
    super().__init__()
    d, h, kv, l, f = m.d_model, m.n_heads, m.n_kv_heads, m.head_dim, m.mlp_dim
    self.h, self.kv, self.l, self.mlp = h, kv, l, m.mlp
    self.norm1, self.norm2 = _Norm(d, m.norm, m.norm_eps), _Norm(d, m.norm, m.norm_eps)
    self.wq = nn.Linear(d, h * l, bias=False)
    self.wkv = nn.Linear(d, 2 * kv * l, bias=False)
    self.wo = nn.Linear(h * l, d, bias=False)
    gated = m.mlp in ('swiglu', 'geglu')
    self.w_in = nn.Linear(d, (2 if gated else 1) * f, bias=False)
    self.w_out = nn.Linear(f, d, bias=False)

  def forward(self, x):
    b, s, _ = x.shape
    y = self.norm1(x)
    q = self.wq(y).view(b, s, self.h, self.l).transpose(1, 2)
    k, v = self.wkv(y).view(b, s, 2, self.kv, self.l).permute(2, 0, 3, 1, 4)
    att = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                         enable_gqa=self.kv != self.h)
    x = x + self.wo(att.transpose(1, 2).reshape(b, s, self.h * self.l))
    y = self.w_in(self.norm2(x))
    if self.mlp == 'swiglu':
      gate, up = y.chunk(2, dim=-1)
      y = F.silu(gate) * up
    elif self.mlp == 'geglu':
      gate, up = y.chunk(2, dim=-1)
      y = F.gelu(gate, approximate='tanh') * up
    else:
      y = F.gelu(y, approximate='tanh')
    return x + self.w_out(y)


class Transformer(nn.Module):

  def __init__(self, m):
    super().__init__()
    if m.position != 'learned':
      raise ValueError(f'the torch peer mirrors learned positions only (model.position='
                       f'{m.position!r})')
    self.embedding = nn.Embedding(m.vocab_size, m.d_model)
    self.pos_embedding = nn.Embedding(m.max_len, m.d_model)
    self.blocks = nn.ModuleList(_Block(m) for _ in range(m.n_layers))
    self.final_norm = _Norm(m.d_model, m.norm, m.norm_eps)
    self.unembed = None if m.tie_embeddings else nn.Linear(m.d_model, m.vocab_size, bias=False)
    for p in self.parameters():
      if p.dim() > 1:
        nn.init.normal_(p, std=m.init_std)

  def forward(self, tokens, positions):
    x = self.embedding(tokens) + self.pos_embedding(positions)
    for block in self.blocks:
      x = block(x)
    x = self.final_norm(x)
    return x @ self.embedding.weight.T if self.unembed is None else self.unembed(x)


def _optimizer(model: nn.Module, t) -> torch.optim.Optimizer:
  decay = [p for p in model.parameters() if p.dim() > 1]
  rest = [p for p in model.parameters() if p.dim() <= 1]
  return torch.optim.AdamW([{'params': decay, 'weight_decay': t.weight_decay},
                            {'params': rest, 'weight_decay': 0.0}],
                           lr=t.learning_rate, betas=(t.b1, t.b2))


def make_steps(student_cfg, teacher_cfg, train_cfg, batch: dict[str, np.ndarray],
               threads: int = 0) -> dict:
  """{'lm': step(), 'kd': step()}: each call runs one full training step on `batch` (the
  same tokens guide_jax's arms see). `threads` > 0 sets torch's intra-op threads."""
  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(0)
  tokens = torch.from_numpy(np.asarray(batch['inputs'], np.int64))
  targets = torch.from_numpy(np.asarray(batch['targets'], np.int64))
  positions = torch.from_numpy(np.asarray(batch['positions'], np.int64))
  bf16 = student_cfg.dtype == 'bfloat16'
  teacher = Transformer(teacher_cfg).eval()
  for p in teacher.parameters():
    p.requires_grad_(False)
  teacher_bf16 = teacher_cfg.dtype == 'bfloat16'

  def make(kd: bool):
    student = Transformer(student_cfg)
    opt = _optimizer(student, train_cfg)

    def step():
      opt.zero_grad(set_to_none=True)
      with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        logits = student(tokens, positions)
      logits = logits.float()
      loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
      if kd:
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=teacher_bf16):
          teacher_logits = teacher(tokens, positions).float()
        log_t = F.log_softmax(teacher_logits, -1)
        log_s = F.log_softmax(logits, -1)
        loss = loss + (log_t.exp() * (log_t - log_s)).sum(-1).mean()
      loss.backward()
      if train_cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(student.parameters(), train_cfg.grad_clip)
      opt.step()
      return loss.item()

    return step

  return {'lm': make(False), 'kd': make(True)}


def parameter_count(model_cfg) -> int:
  return sum(math.prod(p.shape) for p in Transformer(model_cfg).parameters())
