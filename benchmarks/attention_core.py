"""The attention core's forward+backward on this CPU (issue 13's attention lever): softmax
attention of q, k, v [16, 256, heads, 64] under the causal mask, as guide_jax computed it
before (head axes between t and l), heads-major (Attention.mix now), and heads-major in 2
or 4 causal query chunks (Attention.__call__ with model.query_chunks), against PyTorch's
F.scaled_dot_product_attention(is_causal=True), all timed in one process.

  python benchmarks/attention_core.py [heads] [rounds]   # 4 heads: d 256; 8: d 512
"""
import statistics
import sys
import time

from guide_jax import cli  # noqa: F401  the commands' XLA:CPU flags
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from guide_jax.models import attention

B, S, L = 16, 256, 64


def before(q, k, v, mask):
  """The formulation before heads-major (one key block, groups of 1)."""
  b, t, h, l = q.shape
  logits = jnp.where(mask, jnp.einsum('btkgl,bskl->bkgts', q.reshape(b, t, h, 1, l), k)
                     / jnp.sqrt(jnp.float32(l)), jnp.finfo(jnp.float32).min)
  return jnp.einsum('bkgts,bskl->btkgl', jax.nn.softmax(logits, -1), v).reshape(b, t, h, l)


def heads_major(q, k, v, mask):
  b, t, h, l = q.shape
  qh, kh, vh = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
  logits = jnp.where(mask[:, 0], jnp.einsum('bhtl,bhsl->bhts', qh, kh)
                     / jnp.sqrt(jnp.float32(l)), jnp.finfo(jnp.float32).min)
  return jnp.einsum('bhts,bhsl->bhtl', jax.nn.softmax(logits, -1), vh).transpose(0, 2, 1, 3)


def chunked(n):
  def attend(q, k, v, mask):
    c = S // n
    return jnp.concatenate([heads_major(q[:, i * c:(i + 1) * c], k[:, :(i + 1) * c],
                                        v[:, :(i + 1) * c],
                                        mask[..., i * c:(i + 1) * c, :(i + 1) * c])
                            for i in range(n)], axis=1)
  return attend


def main(heads: int, rounds: int) -> None:
  x = np.random.default_rng(0).standard_normal((B, S, heads, L)).astype(np.float32)
  q = jnp.asarray(x)
  mask = attention.attention_mask(jnp.zeros((B, S), jnp.int32))
  variants = {'before': before, 'heads-major': heads_major,
              'heads-major, 2 chunks': chunked(2), 'heads-major, 4 chunks': chunked(4)}
  reference = before(q, q * 0.5, q * 2.0, mask)
  steps = {}
  for name, attend in variants.items():
    np.testing.assert_allclose(attend(q, q * 0.5, q * 2.0, mask), reference, atol=2e-5)
    steps[name] = jax.jit(jax.grad(lambda y, f=attend: f(y, y * 0.5, y * 2.0, mask).sum()))
  xt = torch.from_numpy(x).requires_grad_()

  def torch_step():
    xt.grad = None
    a = xt.transpose(1, 2)
    F.scaled_dot_product_attention(a, a * 0.5, a * 2.0, is_causal=True).sum().backward()

  for step in steps.values():
    jax.block_until_ready(step(q))
  torch_step()
  times = {name: [] for name in list(steps) + ['PyTorch SDPA']}
  for _ in range(rounds):
    for name, step in steps.items():
      start = time.perf_counter()
      jax.block_until_ready(step(q))
      times[name].append(time.perf_counter() - start)
    start = time.perf_counter()
    torch_step()
    times['PyTorch SDPA'].append(time.perf_counter() - start)
  torch_s = statistics.median(times['PyTorch SDPA'])
  for name, t in times.items():
    t = statistics.median(t)
    print(f'{name:<24} {t * 1e3:7.1f} ms  {t / torch_s:4.2f}x PyTorch\'s time')


if __name__ == '__main__':
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 4, int(sys.argv[2]) if len(sys.argv) > 2 else 9)
