"""The KV-cache sampler against full forward passes, sharded and not."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from guide_jax import config as config_lib
from guide_jax import sharding
from guide_jax.infer import sampler as sampler_lib
from guide_jax.train import checkpointing
from guide_jax.models import transformer

PROMPTS = [[5, 9, 3], [7, 1, 2, 8, 11, 4, 6, 30, 31, 32, 40, 41, 50, 51, 52, 53, 54], [12],
           [3, 3, 3, 3, 3, 3]]
VARIANTS = {
    'learned-mha': dict(position='learned', n_kv_heads=4),
    'rope-gqa': dict(position='rope', n_kv_heads=2),
    'rope-mqa-qk_norm-bias-geglu-offset': dict(
        position='rope', n_kv_heads=1, qk_norm=True, qkv_bias=True, mlp='geglu',
        norm_scale_offset=1.0, norm='rmsnorm', tie_embeddings=False),
    # windows of 4 keys: the prompts (up to 17 tokens) and their 8 new tokens go past them
    'rope-window': dict(position='rope', n_kv_heads=2, sliding_window=4),
    'gemma3-local-global': dict(
        position='rope', n_kv_heads=2, layer_types='local,global', sliding_window=4,
        rope_base=1e6, local_rope_base=1e4, rope_scaling='linear', rope_scaling_factor=4.0,
        post_norms=True, qk_norm=True, norm_scale_offset=1.0, mlp='geglu',
        scale_embeddings=True, query_pre_attn_scalar=12.0, attn_logit_softcap=3.0,
        final_logit_softcap=5.0),
}


def model(variant: str) -> ml_collections.ConfigDict:
  m = config_lib.model_config()
  m.update(vocab_size=64, d_model=32, n_layers=2, n_heads=4, head_dim=8, mlp_dim=48,
           max_len=64)
  m.update(VARIANTS[variant])
  config_lib.validate_model(m)
  return m


def mesh_of(sharded: bool):
  if sharded:
    cfg = ml_collections.ConfigDict({'data': 2, 'fsdp': 2, 'tensor': 2})
    return sharding.make_mesh(cfg)
  return sharding.make_mesh(ml_collections.ConfigDict({'data': 1, 'fsdp': 1, 'tensor': 1}),
                            jax.devices()[:1])


@functools.lru_cache(maxsize=None)
def placed(variant: str, sharded: bool):
  cfg, mesh = model(variant), mesh_of(sharded)
  _, shardings = transformer.abstract_params_and_shardings(cfg, mesh, sharding.DEFAULT_RULES)
  params = jax.device_put(transformer.init_params(cfg, jax.random.key(3)), shardings)
  # a larger init makes the next-token distribution peaked, so argmaxes are not near-ties
  params = jax.tree.map(lambda x: x * 4.0, params)
  return cfg, params, mesh


def greedy_by_full_forward(cfg, params, prompt, n):
  """Argmax of a fresh forward pass over prompt + generated-so-far, at every step."""
  width = len(prompt) + n
  forward = jax.jit(lambda p, x: transformer.apply(cfg, p, {
      'inputs': x, 'positions': jnp.arange(width)[None], 'segment_ids': jnp.ones_like(x)}))
  ids = list(prompt)
  for _ in range(n):
    x = np.zeros((1, width), np.int32)
    x[0, :len(ids)] = ids  # later positions cannot influence earlier ones (causal)
    ids.append(int(jnp.argmax(forward(params, x)[0, len(ids) - 1])))
  return ids[len(prompt):]


@pytest.mark.parametrize('variant,sharded', [  # the sharded runs cover the unsharded ones'
    pytest.param('learned-mha', False, marks=pytest.mark.slow), ('learned-mha', True),
    pytest.param('rope-gqa', False, marks=pytest.mark.slow),
    pytest.param('rope-gqa', True, marks=pytest.mark.slow),  # gemma3-local-global: rope, gqa
    # gemma3-local-global covers rope, gqa, q/k norms, geglu and the 1 + w gains by default
    pytest.param('rope-mqa-qk_norm-bias-geglu-offset', False, marks=pytest.mark.slow),
    pytest.param('rope-window', False, marks=pytest.mark.slow),
    ('gemma3-local-global', False),  # windows in the local layer only; the slow one: all
    pytest.param('gemma3-local-global', True, marks=pytest.mark.slow)])
def test_greedy_equals_argmax_of_full_forward(variant, sharded):
  cfg, params, mesh = placed(variant, sharded)
  sampler = sampler_lib.Sampler(cfg, params, eos_id=-1, mesh=mesh)
  got = sampler.generate(PROMPTS, sampler_lib.Sampling(max_new_tokens=8))
  for prompt, row in zip(PROMPTS, got):
    assert row == greedy_by_full_forward(cfg, params, prompt, 8)


def test_eos_stops_its_row_while_the_others_continue():
  cfg, params, mesh = placed('rope-gqa', False)
  free = sampler_lib.Sampler(cfg, params, eos_id=-1, mesh=mesh).generate(
      PROMPTS, sampler_lib.Sampling(max_new_tokens=10))
  eos = free[0][2]
  others = [b for b in range(1, 4) if eos not in free[b]]
  assert others, 'the test needs a row that never produces the chosen EOS'
  got = sampler_lib.Sampler(cfg, params, eos_id=eos, mesh=mesh).generate(
      PROMPTS, sampler_lib.Sampling(max_new_tokens=10))
  assert got[0] == free[0][:free[0].index(eos) + 1]
  for b in others:
    assert got[b] == free[b]


def test_sampling_is_reproducible_and_top_k_1_is_greedy():
  cfg, params, mesh = placed('learned-mha', False)
  sampler = sampler_lib.Sampler(cfg, params, eos_id=-1, mesh=mesh)
  hot = sampler_lib.Sampling(max_new_tokens=8, temperature=3.0, seed=1)
  first, again = sampler.generate(PROMPTS, hot), sampler.generate(PROMPTS, hot)
  assert first == again
  other = sampler.generate(PROMPTS, sampler_lib.Sampling(8, temperature=3.0, seed=2))
  assert other != first
  greedy = sampler.generate(PROMPTS, sampler_lib.Sampling(8))
  assert sampler.generate(PROMPTS, sampler_lib.Sampling(8, temperature=3.0, top_k=1)) == greedy


def test_top_k_and_top_p_restrict_the_draw():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 512))
  keys = jax.random.split(jax.random.key(0), 8)
  draws = lambda **kw: set(np.concatenate([  # noqa: E731
      np.asarray(sampler_lib.choose(logits, k, 1.0, **kw)) for k in keys]).tolist())
  assert draws(top_k=0, top_p=1.0) == {0, 1, 2, 3}
  assert draws(top_k=2, top_p=1.0) == {0, 1}
  assert draws(top_k=0, top_p=0.7) == {0, 1}      # 0.5 < 0.7 <= 0.5 + 0.3
  assert draws(top_k=0, top_p=0.5) == {0}


def test_bad_requests_are_config_errors():
  cfg, params, mesh = placed('learned-mha', False)
  sampler = sampler_lib.Sampler(cfg, params, eos_id=-1, mesh=mesh)
  with pytest.raises(config_lib.ConfigError, match='exceeds the model.s max_len=64'):
    sampler.generate([[1] * 60], sampler_lib.Sampling(max_new_tokens=8))
  with pytest.raises(config_lib.ConfigError, match='top_p=0 must be in'):
    sampler.generate(PROMPTS, sampler_lib.Sampling(top_p=0))


def test_generate_cli_streams_the_greedy_completion(tmp_path):
  import subprocess
  import sys
  import hf_models
  from conftest import REPO
  hf_models.make('llama', str(tmp_path), vocab_size=320)
  hf_models.make_tokenizer(str(tmp_path), vocab_size=300)

  def generate(*flags):
    return subprocess.run([sys.executable, '-m', 'guide_jax.generate', f'--workdir={tmp_path}',
                           *flags], cwd=REPO, capture_output=True, text=True, timeout=300)

  out = generate('--prompt=def parse(', '--max_new_tokens=8')
  assert out.returncode == 0, out.stderr[-2000:]
  loaded = sampler_lib.load(str(tmp_path))
  new = loaded.sampler.generate([loaded.vocab.encode('def parse(')], sampler_lib.Sampling(8))
  assert out.stdout == 'def parse(' + loaded.decode(new[0]) + '\n'
  (tmp_path / 'prompts.txt').write_text('import \nclass A\n')
  out = generate(f'--prompts_file={tmp_path}/prompts.txt', '--max_new_tokens=4',
                 '--temperature=0.8', '--top_p=0.9', '--seed=3')
  assert out.returncode == 0, out.stderr[-2000:]
  assert sorted(line[:4] for line in out.stdout.splitlines()) == ['[0] ', '[1] ']
  bad = generate()
  assert bad.returncode == 2 and 'error: no prompt' in bad.stderr.strip().splitlines()[-1]
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"--workdir='.*none' has no checkpoints/ directory \(and no "
                           r"config.json of a Hugging Face model\)"):
    sampler_lib.load(str(tmp_path / 'none'))
