"""Import and export of a ~1B-parameter Hugging Face checkpoint: time and RSS.

  python benchmarks/hf_io.py --dir=/tmp/hf_io [--dtype=bfloat16] [--shape=llama|gemma3]

1. writes a checkpoint with random weights with numpy only (not timed), two safetensors
   shards + index: `llama` is Llama-3.2-1B-shaped (vocab 128256, d 2048, 16 blocks, 32
   heads / 8 kv heads of 64, SwiGLU 8192, tied); `gemma3` is Gemma-3-1B-shaped (vocab
   262144, d 1152, 26 blocks of 5 local (window 512) : 1 global, 4 heads / 1 kv head of
   256, GeGLU 6912, sandwich and q/k norms, RoPE bases 10k local / 1M global, tied);
2. import: a fresh process loads it as a teacher (guide_jax.train.teacher.load) onto a
   one-device mesh and waits for every array;
3. a fresh process imports it again and saves the params as a guide_jax run checkpoint
   (setup for 4, not timed);
4. export: `python -m guide_jax.export --workdir=RUN --out=DIR` in a fresh process.
Each timed step is its own child process; its peak RSS is that child's ru_maxrss
(os.wait4). Prints one JSON line with seconds, peak RSS and the checkpoint's size.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA = {'architectures': ['LlamaForCausalLM'], 'model_type': 'llama', 'vocab_size': 128256,
          'hidden_size': 2048, 'num_hidden_layers': 16, 'num_attention_heads': 32,
          'num_key_value_heads': 8, 'head_dim': 64, 'intermediate_size': 8192,
          'max_position_embeddings': 131072, 'rms_norm_eps': 1e-5, 'hidden_act': 'silu',
          'tie_word_embeddings': True, 'bos_token_id': 128000, 'eos_token_id': 128001,
          'rope_parameters': {'rope_type': 'llama3', 'rope_theta': 500000.0, 'factor': 32.0,
                              'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                              'original_max_position_embeddings': 8192}}
GEMMA3 = {'architectures': ['Gemma3ForCausalLM'], 'model_type': 'gemma3_text',
          'vocab_size': 262144, 'hidden_size': 1152, 'num_hidden_layers': 26,
          'num_attention_heads': 4, 'num_key_value_heads': 1, 'head_dim': 256,
          'intermediate_size': 6912, 'max_position_embeddings': 32768, 'rms_norm_eps': 1e-6,
          'hidden_activation': 'gelu_pytorch_tanh', 'query_pre_attn_scalar': 256,
          'sliding_window': 512, 'tie_word_embeddings': True, 'bos_token_id': 2,
          'eos_token_id': 1, 'pad_token_id': 0,
          'layer_types': ['full_attention' if (i + 1) % 6 == 0 else 'sliding_attention'
                          for i in range(26)],
          'rope_parameters': {'full_attention': {'rope_type': 'default', 'rope_theta': 1e6},
                              'sliding_attention': {'rope_type': 'default',
                                                    'rope_theta': 1e4}}}
SHAPES = {'llama': LLAMA, 'gemma3': GEMMA3}

WRITE = r'''
import json, os, sys, numpy as np, ml_dtypes
from safetensors.numpy import save_file
out, dtype = sys.argv[1], np.dtype(getattr(ml_dtypes, sys.argv[2], sys.argv[2]))
c = json.load(open(os.path.join(out, 'config.json')))
d, f, v, n = c['hidden_size'], c['intermediate_size'], c['vocab_size'], c['num_hidden_layers']
q, kv = c['num_attention_heads'] * c['head_dim'], c['num_key_value_heads'] * c['head_dim']
gemma = c['model_type'].startswith('gemma')
unit = 0.0 if gemma else 1.0  # Gemma's norm gain is 1 + w
norms = ['input_layernorm', 'post_attention_layernorm'] + (
    ['pre_feedforward_layernorm', 'post_feedforward_layernorm'] if gemma else [])
rng = np.random.default_rng(0)
def t(*shape): return (0.02 * rng.standard_normal(shape, np.float32)).astype(dtype)
shards = [{'model.embed_tokens.weight': t(v, d), 'model.norm.weight': np.full(d, unit, dtype)}, {}]
for i in range(n):
  p, s = f'model.layers.{i}.', shards[0 if i < n // 2 else 1]
  s.update({p + name + '.weight': np.full(d, unit, dtype) for name in norms})
  if gemma:
    s.update({p + f'self_attn.{x}_norm.weight': np.full(c['head_dim'], unit, dtype)
              for x in 'qk'})
  s.update({p + 'self_attn.q_proj.weight': t(q, d), p + 'self_attn.k_proj.weight': t(kv, d),
            p + 'self_attn.v_proj.weight': t(kv, d), p + 'self_attn.o_proj.weight': t(d, q),
            p + 'mlp.gate_proj.weight': t(f, d), p + 'mlp.up_proj.weight': t(f, d),
            p + 'mlp.down_proj.weight': t(d, f)})
weight_map = {}
for k, shard in enumerate(shards):
  name = f'model-{k + 1:05d}-of-00002.safetensors'
  save_file(shard, os.path.join(out, name), metadata={'format': 'pt'})
  weight_map.update({key: name for key in shard})
  shard.clear()
json.dump({'metadata': {}, 'weight_map': weight_map},
          open(os.path.join(out, 'model.safetensors.index.json'), 'w'))
'''

IMPORT = r'''
import sys, jax
jax.config.update('jax_platforms', 'cpu')
from etils import epath
from guide_jax import config as config_lib, sharding
from guide_jax.train import teacher
c = config_lib.base_config()
mesh = sharding.make_mesh(c.mesh)
rules = tuple(c.logical_rules)
with jax.set_mesh(mesh), sharding.use_rules(rules):
  t = teacher.load(epath.Path(sys.argv[1]), mesh, rules, sys.argv[2])
  jax.block_until_ready(t.params)
if len(sys.argv) > 3:  # save as a run checkpoint for the export step
  import json
  from guide_jax.train import checkpointing
  ck = checkpointing.Checkpointer(epath.Path(sys.argv[3]) / 'checkpoints', 1, False)
  state = {'params': t.params, 'opt_state': {}, 'step': jax.numpy.zeros((), 'int32')}
  ck.save(1, state, {'step': 1}, {'model': json.loads(t.model.to_json()), 'vocab_path': '',
                                  'vocab_size': t.model.vocab_size})
  ck.close()
'''


def timed(args: list[str]) -> dict:
  env = {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
  start = time.perf_counter()
  proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env)
  _, status, usage = os.wait4(proc.pid, 0)
  if status:
    raise SystemExit(f'{args[:2]} failed with status {status}')
  return {'seconds': round(time.perf_counter() - start, 1),
          'peak_rss_gib': round(usage.ru_maxrss / 2**20, 3)}  # ru_maxrss is KiB on Linux


def size_gib(directory: str, suffix: str = '') -> float:
  total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(directory)
              for f in fs if f.endswith(suffix))
  return round(total / 2**30, 3)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--dir', default='/tmp/hf_io')
  parser.add_argument('--dtype', default='bfloat16')
  parser.add_argument('--shape', default='llama', choices=sorted(SHAPES))
  a = parser.parse_args()
  shutil.rmtree(a.dir, ignore_errors=True)
  hf, run, out = (os.path.join(a.dir, n) for n in ('hf', 'run', 'export'))
  os.makedirs(hf)
  with open(os.path.join(hf, 'config.json'), 'w') as f:
    json.dump(SHAPES[a.shape], f)
  timed(['-c', WRITE, hf, a.dtype])
  result = {'shape': a.shape, 'checkpoint_gib': size_gib(hf, '.safetensors'),
            'dtype': a.dtype}
  result['import'] = timed(['-c', IMPORT, hf, a.dtype])
  timed(['-c', IMPORT, hf, a.dtype, run])
  result['run_checkpoint_gib'] = size_gib(run)
  result['export'] = timed(['-m', 'guide_jax.export', f'--workdir={run}', f'--out={out}'])
  result['export_gib'] = size_gib(out, '.safetensors')
  for step, base in (('import', 'checkpoint_gib'), ('export', 'run_checkpoint_gib')):
    result[step]['rss_minus_checkpoint_gib'] = round(result[step]['peak_rss_gib'] -
                                                     result[base], 3)
  print(json.dumps(result))


if __name__ == '__main__':
  main()
