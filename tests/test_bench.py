"""The benchmark harness: its JSON fields and its error exits (never its timings)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

FIELDS = ('step_time_s', 'tokens_per_sec', 'mfu', 'compile_s')


def run_bench(*args):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', 'guide_jax.bench', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


PEER_SMALL = ['--config.model.d_model=64', '--config.model.n_heads=1',
              '--config.model.n_kv_heads=1', '--config.model.mlp_dim=256',
              '--config.data.seq_len=32', '--config.data.global_batch_size=4',
              '--config.teacher.pretrain.data.seq_len=32',
              '--config.teacher.pretrain.model.d_model=128',
              '--config.teacher.pretrain.model.n_heads=2',
              '--config.teacher.pretrain.model.n_kv_heads=2',
              '--config.teacher.pretrain.model.mlp_dim=512']


def test_bench_reports_every_arm_and_the_pytorch_peer_as_json():
  arms = ('baseline', 'kd')  # bench.ARMS has more: the same code paths
  out = run_bench('--config=experiments/bench_peer.py', '--steps=2', '--compile_depths=1,2',
                  f'--arms={",".join(arms)}', '--peer', *PEER_SMALL)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(result['arms']) == set(arms) and set(result['ratios']) == set(arms)
  for arm in arms:
    r = result['arms'][arm]
    assert all(r[k] > 0 for k in FIELDS), r
    assert 0 < r['mfu_student'] <= r['mfu']
    assert result['ratios'][arm] == r['step_time_s'] / result['arms']['baseline']['step_time_s']
  assert result['ratios']['baseline'] == 1.0
  assert result['peak_flops'] > 0
  assert result['kd_theory_ratio'] == 1 + (result['teacher_forward_flops_per_step'] /
                                           result['student_train_flops_per_step'])
  assert result['arms']['kd']['mfu'] > result['arms']['kd']['mfu_student']
  assert result['arms']['baseline']['mfu'] == result['arms']['baseline']['mfu_student']
  assert set(result['compile_s_by_depth']) == {'1', '2'}
  # The PyTorch peer of each arm, timed in the same rounds.
  assert set(result['peer']) == {'lm', 'kd'}
  for kind, arm in (('lm', 'baseline'), ('kd', 'kd')):
    p = result['peer'][kind]
    assert p['jax_tokens_per_sec'] == result['arms'][arm]['tokens_per_sec']
    assert p['ratio'] == pytest.approx(p['jax_tokens_per_sec'] / p['torch_tokens_per_sec'],
                                       rel=1e-12)
    assert p['torch_tokens_per_sec'] > 0 and p['torch_mfu'] > 0


@pytest.mark.slow  # ~6 s; test_cli's every-command check has bench's bad --arms
def test_bench_without_teacher_or_bad_arm_exits_2():
  out = run_bench('--config=experiments/lm_tiny.py', '--steps=1')
  assert out.returncode == 2 and 'teacher' in out.stderr.strip().splitlines()[-1]
  out = run_bench('--config=experiments/guide_tiny.py', '--arms=baseline,nope')
  assert out.returncode == 2 and "unknown ['nope']" in out.stderr


@pytest.mark.parametrize('mlp,norm,tied', [('gelu', 'layernorm', True),
                                           ('swiglu', 'rmsnorm', False)])
def test_torch_peer_computes_the_same_model(mlp, norm, tied):
  """The peer is a fair comparison: with guide_jax's weights it gives guide_jax's logits."""
  import jax
  import torch
  from guide_jax import config as config_lib, experiment_file
  from guide_jax.models import transformer
  peer = experiment_file.load_module(f'{REPO}/benchmarks/torch_peer.py')
  m = config_lib.model_config()
  m.update(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
           mlp_dim=48, max_len=16, mlp=mlp, norm=norm, tie_embeddings=tied)
  params = jax.device_get(transformer.init_params(m, jax.random.key(0)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(x.dtype), params)
  model = peer.Transformer(m)
  t = lambda x: torch.from_numpy(np.ascontiguousarray(x, np.float32))
  sd = {'embedding.weight': t(params['embedding']),
        'pos_embedding.weight': t(params['pos_embedding']),
        'final_norm.scale': t(params['final_norm']['scale'])}
  if norm == 'layernorm':
    sd['final_norm.bias'] = t(params['final_norm']['bias'])
  if not tied:
    sd['unembed.weight'] = t(params['unembed'].T)
  b = params['blocks']
  d, h, kv, l = m.d_model, m.n_heads, m.n_kv_heads, m.head_dim
  for i in range(m.n_layers):
    a, mp = {k: v[i] for k, v in b['attn'].items()}, {k: v[i] for k, v in b['mlp'].items()}
    pre = f'blocks.{i}.'
    sd[pre + 'wq.weight'] = t(a['wq'].reshape(d, h * l).T)
    sd[pre + 'wkv.weight'] = t(np.concatenate([a['wk'].reshape(d, kv * l).T,
                                               a['wv'].reshape(d, kv * l).T]))
    sd[pre + 'wo.weight'] = t(a['wo'].reshape(h * l, d).T)
    w_in = (np.concatenate([mp['w_gate'].T, mp['w_up'].T]) if mlp == 'swiglu'
            else mp['w_in'].T)
    sd[pre + 'w_in.weight'], sd[pre + 'w_out.weight'] = t(w_in), t(mp['w_out'].T)
    for n in ('norm1', 'norm2'):
      sd[f'{pre}{n}.scale'] = t(b[n]['scale'][i])
      if norm == 'layernorm':
        sd[f'{pre}{n}.bias'] = t(b[n]['bias'][i])
  model.load_state_dict(sd, strict=True)
  tokens = rng.integers(0, m.vocab_size, (2, 16))
  positions = np.broadcast_to(np.arange(16), (2, 16))
  expected = transformer.apply(m, params, {'inputs': tokens, 'positions': positions,
                                           'segment_ids': np.ones((2, 16), np.int32)})
  with torch.no_grad():
    got = model(torch.from_numpy(tokens), torch.from_numpy(positions.copy())).numpy()
  np.testing.assert_allclose(got, np.asarray(expected), atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # ~15 s: two compiled steps and a sampling
def test_bench_on_policy_arms_time_the_sampling_inside_the_step():
  from conftest import load_experiment
  from guide_jax import bench
  cfg = load_experiment('guide_tiny')
  cfg.data.backend = 'synthetic'
  result = bench.run_arms(cfg, 2, ['kd', 'mixed'], log=lambda *_: None)
  mixed = result['arms']['mixed']
  assert set(FIELDS) <= set(mixed) and 'sample_time_s' not in result['arms']['kd']
  assert 0 < mixed['sample_time_s'] < mixed['step_time_s']
