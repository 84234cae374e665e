"""Hugging Face interop: import, export, parity with transformers, GUIDE from HF teachers.

Every model is a tiny random one built offline by tests/hf_models.py; transformers and
torch are the reference (the hf-parity extra, installed by `make test`).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('transformers')
import torch  # noqa: E402
import transformers  # noqa: E402

import hf_models  # noqa: E402
from guide_jax import config as config_lib  # noqa: E402
from guide_jax import guide, saved_model  # noqa: E402
from guide_jax.hf import checkpoint as hf_checkpoint  # noqa: E402
from guide_jax.hf import export, families, parity  # noqa: E402
from guide_jax.models import transformer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hf_logits(directory, tokens):
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
  with torch.no_grad():
    return model(input_ids=torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def batch(model, seed=0):
  return parity.batch_for(model, model.vocab_size, 2, 24, seed)


@pytest.fixture(scope='module', params=hf_models.FAMILIES)
def family_dir(request, tmp_path_factory):
  directory = str(tmp_path_factory.mktemp(request.param))
  return request.param, hf_models.make(request.param, directory)


def test_import_matches_transformers(family_dir):
  family, directory = family_dir
  model = hf_checkpoint.model_config(directory)
  assert model.family == hf_models.FAMILY_OF.get(family, family)
  if family == 'llama3':
    assert model.rope_scaling == 'llama3' and model.rope_original_max_len == 32
  if family in ('qwen2_window', 'gemma2', 'gemma3_text'):
    assert 0 < model.sliding_window < 24  # the window is computed, not skipped
  if family == 'gemma3_text':
    assert model.layer_types == ','.join(['local'] * 5 + ['global'])
    assert (model.rope_base, model.local_rope_base, model.rope_scaling) == (1e6, 1e4, 'linear')
  tokens = batch(model)
  ours = parity.guide_jax_logits(directory, tokens)
  ref = hf_logits(directory, tokens['inputs'])
  assert np.abs(ref).max() > 1.0  # random weights large enough for the check to mean much
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_mistral_window_shorter_than_the_sequence_matches_transformers(tmp_path):
  """64 tokens through a 32-token sliding window: guide_jax's windowed attention (the
  model's default kernel) gives transformers' logits; full attention would not."""
  directory = hf_models.make('mistral', str(tmp_path / 'mistral'))
  model = hf_checkpoint.model_config(directory)
  assert model.sliding_window == 32
  tokens = parity.batch_for(model, model.vocab_size, 2, 64, 0)
  assert tokens['inputs'].shape == (2, 64)
  ref = hf_logits(directory, tokens['inputs'])
  np.testing.assert_allclose(parity.guide_jax_logits(directory, tokens), ref, atol=1e-4,
                             rtol=0)
  model.sliding_window = 0
  params = saved_model.load(directory).params
  unwindowed = np.asarray(transformer.apply(model, params, tokens))
  assert np.abs(unwindowed[:, 32:] - ref[:, 32:]).max() > 1e-3


@pytest.mark.parametrize('family', ['gpt2', 'qwen3'])
def test_import_onto_a_sharded_mesh_equals_one_device(family, tmp_path):
  """Teacher shards assembled by make_array_from_callback (fsdp=4 x tensor=2) hold the
  same values as the one-device import, in bfloat16 (teacher.dtype) too."""
  from etils import epath
  from guide_jax import sharding
  from guide_jax.train import teacher as teacher_lib
  directory = hf_models.make(family, str(tmp_path))
  reference = saved_model.load(directory).params
  cfg = config_lib.base_config()
  cfg.mesh.update(dict(data=1, fsdp=4, tensor=2))
  mesh, rules = sharding.make_mesh(cfg.mesh), tuple(cfg.logical_rules)
  with jax.set_mesh(mesh), sharding.use_rules(rules):
    for dtype in ('float32', 'bfloat16'):
      t = teacher_lib.load(epath.Path(directory), mesh, rules, dtype)
      assert t.params['blocks']['mlp']['w_out'].sharding.spec == \
          jax.sharding.PartitionSpec(None, 'tensor', 'fsdp')
      want = jax.tree.map(lambda a, d=dtype: np.asarray(a).astype(jnp.dtype(d)), reference)
      jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), t.params,
                   want)


def test_export_loads_in_transformers_and_round_trips_bitwise(family_dir, tmp_path):
  family, directory = family_dir
  model = hf_checkpoint.model_config(directory)
  params = saved_model.load(directory).params
  out = tmp_path / 'export'
  out.mkdir()
  export.write_hf_dir(model, params, out, {'eos_token_id': 1}, 'float32', 2 << 30)
  tokens = batch(model, seed=1)
  ours = np.asarray(transformer.apply(model, params, tokens))
  np.testing.assert_allclose(hf_logits(str(out), tokens['inputs']), ours, atol=1e-5, rtol=0)
  again = saved_model.load(str(out)).params
  assert hf_checkpoint.model_config(str(out)) == model
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               params, again)


def test_export_shards_above_the_limit(tmp_path):
  directory = hf_models.make('llama', str(tmp_path / 'hf'))
  model = hf_checkpoint.model_config(directory)
  params = saved_model.load(directory).params
  out = tmp_path / 'sharded'
  out.mkdir()
  files = export.write_hf_dir(model, params, out, {}, 'bfloat16', 20_000)
  index = json.loads((out / hf_checkpoint.SAFETENSORS_INDEX).read_text())
  shards = sorted(set(index['weight_map'].values()))
  assert len(shards) > 2 and all(f in files for f in shards)
  assert all((out / f).stat().st_size < 20_000 + 8_192 for f in shards[:-1])
  loaded = saved_model.load(str(out)).params
  want = jax.tree.map(lambda a: np.asarray(a.astype(jnp.bfloat16)).astype(np.float32), params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), loaded, want)


def _guide_exact_student(model):
  """Student = teacher sizes: M is square and orthogonal, every block guided."""
  g = config_lib.guide_config()
  g.update(dict(blocks='all', unembed=not model.tie_embeddings))
  return g


@pytest.mark.parametrize('family', [  # by default llama and gemma3_text, which has every
    # rule but the untied output layer's (llama's); the other families are slow
    f if f in ('llama', 'gemma3_text') else pytest.param(f, marks=pytest.mark.slow)
    for f in hf_models.FAMILIES if f != 'gpt2'])
def test_guide_from_hf_teacher_is_exact_at_equal_width(family, tmp_path):
  """RMSNorm families: d_S = d_T, every block guided, untied output with guide.unembed (or
  tied with final gain 1): the student's logits equal the teacher's."""
  directory = hf_models.make(family, str(tmp_path), unit_final_gain=True,
                             uniform_post_gains=True)
  t = hf_checkpoint.model_config(directory)
  t.norm_eps = 1e-12  # folding is exact only up to the norm's epsilon
  tp = saved_model.load(directory).params
  s = config_lib.model_config()
  s.update(t.to_dict())
  guided, diag = guide.project(tp, t, s, _guide_exact_student(t))
  layers, _ = guide.guided_layers(t, s, _guide_exact_student(t))
  sp = guide.apply(transformer.init_params(s, jax.random.key(1)), guided, layers)
  tokens = batch(t)
  want = transformer.apply(t, tp, tokens)
  np.testing.assert_allclose(transformer.apply(s, sp, tokens), want, atol=1e-4, rtol=1e-4)
  assert float(jnp.abs(diag['projection'] - jnp.eye(t.d_model)).max()) > 0.1  # M != I


def test_guide_gpt2_layernorm_keeps_the_embedding_property(tmp_path):
  """LayerNorm's mean subtraction does not commute with M, so logits are not exact for
  GPT-2; what holds is x0_S = x0_T M (token and learned position embeddings)."""
  directory = hf_models.make('gpt2', str(tmp_path))
  t = hf_checkpoint.model_config(directory)
  tp = saved_model.load(directory).params
  s = config_lib.model_config()
  s.update(t.to_dict())
  s.update(dict(d_model=16, n_heads=2, n_kv_heads=2, head_dim=8, mlp_dim=64))
  guided, diag = guide.project(tp, t, s, config_lib.guide_config())
  sp = guide.apply(transformer.init_params(s, jax.random.key(1)), guided, np.array([0]))
  tokens = batch(t)
  m = diag['projection']
  x0_t = transformer.bind(t, tp).embed_inputs(tokens['inputs'], tokens['positions'])
  x0_s = transformer.bind(s, sp).embed_inputs(tokens['inputs'], tokens['positions'])
  np.testing.assert_allclose(x0_s, x0_t @ m, atol=1e-5, rtol=1e-5)


def test_guide_qk_norm_keeps_selected_gains_when_heads_shrink(tmp_path):
  """Qwen3 with a narrower head: q/k norm gains are the teacher's at the kept dims (the
  RMS is then over fewer dims: approximate, documented)."""
  directory = hf_models.make('qwen3', str(tmp_path))
  t = hf_checkpoint.model_config(directory)
  tp = saved_model.load(directory).params
  s = config_lib.model_config()
  s.update(t.to_dict())
  s.update(dict(d_model=16, head_dim=4, n_heads=2, n_kv_heads=1, mlp_dim=24, n_layers=1))
  guided, _ = guide.project(tp, t, s, config_lib.guide_config())
  dims = guide.head_dim_selection(t, s)
  np.testing.assert_array_equal(guided['blocks']['attn']['q_norm']['scale'][0],
                                np.asarray(tp['blocks']['attn']['q_norm']['scale'][0])[dims])


def test_padded_vocabulary_rows_stay_out_of_the_pca(tmp_path):
  directory = hf_models.make('qwen2', str(tmp_path))
  tp = saved_model.load(directory).params
  padded = dict(tp, embedding=tp['embedding'].at[80:].set(100.0))
  m_ref, _, _ = guide.pca_basis(dict(tp, embedding=tp['embedding'][:80]), 16, True, 'embed')
  m_pad, _, _ = guide.pca_basis(padded, 16, True, 'embed', vocab_rows=80)
  np.testing.assert_allclose(m_pad, m_ref, atol=1e-5)
  m_all, _, _ = guide.pca_basis(padded, 16, True, 'embed')
  assert float(jnp.abs(m_all - m_ref).max()) > 0.1


@pytest.mark.parametrize('hf,field', [
    (dict(model_type='gemma3'), 'model_type'),
    (dict(model_type='mistral', layer_types=['sliding_attention', 'full_attention']),
     'layer_types'),
    (dict(model_type='llama', layer_types=['sliding_attention', 'full_attention']),
     'layer_types'),
    (dict(model_type='gemma2', hidden_activation='gelu_pytorch_tanh',
          layer_types=['sliding_attention', 'chunked_attention']), 'layer_types'),
    (dict(model_type='gemma3_text', hidden_activation='gelu_pytorch_tanh', rope_parameters={
        'full_attention': {'rope_type': 'yarn', 'factor': 2.0},
        'sliding_attention': {'rope_type': 'default'}}),
     'rope_parameters.full_attention.rope_type'),
    (dict(model_type='mixtral'), 'model_type'),
    (dict(model_type='falcon'), 'model_type'),
    (dict(model_type='llama', rope_parameters={'rope_type': 'yarn', 'factor': 4.0}),
     'rope_parameters.rope_type'),
    (dict(model_type='llama', attention_bias=True, mlp_bias=False), 'attention_bias'),
    (dict(model_type='llama', hidden_act='gelu'), 'hidden_act'),
    (dict(model_type='llama', use_sliding_window=True), 'use_sliding_window'),
    (dict(model_type='qwen3', num_experts=8), 'num_experts'),
])
def test_unsupported_configs_are_refused_by_name(hf, field):
  base = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=48)
  with pytest.raises(families.HFError, match=f'config.json {field}='):
    families.model_config({**base, **hf})


def test_native_model_without_hf_equivalent_is_refused_by_field():
  m = config_lib.model_config()  # learned positions + RMSNorm + SwiGLU: no family has it
  with pytest.raises(families.HFError, match=r'model\.norm=.* no equivalent .*gpt2'):
    families.export_family(m)
  m.update(dict(position='rope'))
  assert families.export_family(m).name == 'llama'


def _run(*args, cwd):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                        env=env, timeout=600)


def test_distill_hf_end_to_end_then_export_and_generate(tmp_path):
  """Tiny HF Llama teacher (padded vocabulary, BPE tokenizer) -> GUIDE+KD student ->
  export -> transformers loads it, generates greedily, and parity holds."""
  teacher = tmp_path / 'teacher'
  hf_models.make_tokenizer(str(teacher), vocab_size=300)  # 256 bytes + specials + merges
  hf_models.make('llama', str(teacher), vocab_size=320, bos_token_id=0, eos_token_id=1)
  work, out = tmp_path / 'run', tmp_path / 'student'
  overrides = ['--config.train.steps=4', '--config.train.warmup_steps=1',
               '--config.train.log_every=2', '--config.train.eval_every=4',
               '--config.train.checkpoint_every=4', '--config.data.seq_len=32',
               '--config.data.global_batch_size=8', '--config.data.eval_batches=1',
               f'--config.data.embedded_root={hf_models.sysconfig.get_paths()["stdlib"]}/email',
               '--config.data.validation_percent=20', '--config.train.progress_bar=False',
               '--config.train.peak_flops=1e11']
  r = _run('-m', 'guide_jax.main', f'--config=experiments/distill_hf.py:{teacher}',
           f'--workdir={work}', *overrides, cwd=REPO)
  assert r.returncode == 0, r.stderr[-3000:]
  run_config = json.loads((work / 'config.json').read_text())
  assert run_config['model']['family'] == 'llama' and run_config['model']['d_model'] == 16
  assert run_config['data']['tokenizer'] == str(teacher / 'tokenizer.json')
  r = _run('-m', 'guide_jax.export', f'--workdir={work}', f'--out={out}', cwd=REPO)
  assert r.returncode == 0, r.stderr[-3000:]
  assert {'config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json',
          'tokenizer_config.json'} <= set(os.listdir(out))
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
  prompt = tokenizer('def parse(', return_tensors='pt')
  generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
  assert generated.shape[1] > prompt['input_ids'].shape[1]
  r = _run('-m', 'guide_jax.parity', f'--hf={out}', f'--workdir={work}', '--atol=1e-5',
           cwd=REPO)
  assert r.returncode == 0, r.stdout + r.stderr[-2000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  assert result['ok'] and result['family'] == 'llama' and result['max_abs_diff'] <= 1e-5
  assert result['length'] > 0


def test_a_truncated_safetensors_file_is_an_hf_error_naming_it(tmp_path):
  """An interrupted download: one HFError (an `error:` line from every command) naming
  the file, not safetensors' traceback."""
  from guide_jax.hf import checkpoint as hf_checkpoint
  hf_models.make('llama', str(tmp_path))
  weights = tmp_path / 'model.safetensors'
  weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
  with pytest.raises(families.HFError, match=f'{weights} is not a readable safetensors '
                                             'file .*incomplete metadata.*download it again'):
    hf_checkpoint.SafetensorsReader(tmp_path)


@pytest.mark.parametrize('case', ['gemma3', 'export_exists'])
def test_refusals_exit_2_with_one_line_and_write_nothing(case, tmp_path):
  work = tmp_path / 'run'
  if case == 'export_exists':
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'keep.txt').write_text('mine')
    hf_models.make('llama', str(tmp_path / 'hf'))
    r = _run('-m', 'guide_jax.export', f'--workdir={tmp_path / "hf"}',
             f'--out={tmp_path / "out"}', cwd=REPO)
    field = '--out='
    assert (tmp_path / 'out' / 'keep.txt').read_text() == 'mine'
  else:
    teacher = tmp_path / 'teacher'
    teacher.mkdir()
    (teacher / 'config.json').write_text(json.dumps({'model_type': 'gemma3'}))
    extra, field = [], 'model_type'
    r = _run('-m', 'guide_jax.main', f'--config=experiments/distill_hf.py:{teacher}',
             f'--workdir={work}', *extra, cwd=REPO)
    assert not work.exists()
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [line for line in r.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith('error:') and field in lines[0], lines


def test_exported_gemma3_student_generates_as_transformers_does(tmp_path):
  """A Gemma-3-shaped guide_jax model (5 local layers with a 6-token window, 1 global,
  sandwich and q/k norms, two RoPE bases) exported, then greedy-decoded past its window by
  guide_jax's KV-cache sampler and by transformers' `generate` on the same directory."""
  from guide_jax import sharding
  from guide_jax.infer import sampler as sampler_lib
  model = hf_checkpoint.model_config(hf_models.make('gemma3_text', str(tmp_path / 'shape')))
  params = jax.tree.map(lambda x: 4.0 * x, transformer.init_params(model, jax.random.key(7)))
  out = tmp_path / 'student'
  out.mkdir()
  eos = 95
  export.write_hf_dir(model, params, out, {'eos_token_id': eos, 'bos_token_id': None,
                                           'pad_token_id': 0}, 'float32', 2 << 30)
  prompts = [[5, 17, 33, 2, 41], [60, 7, 7, 12, 90, 3, 44, 21]]
  saved = saved_model.load(str(out), dtype='float32')
  mesh = sharding.make_mesh(config_lib.base_config().mesh, jax.devices()[:1])
  sampler = sampler_lib.Sampler(saved.model, saved.params, eos, mesh)
  ours = sampler.generate(prompts, sampler_lib.Sampling(max_new_tokens=14))
  reference = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
  for prompt, row in zip(prompts, ours):
    generated = reference.generate(torch.tensor([prompt]), max_new_tokens=14, do_sample=False,
                                   eos_token_id=eos, pad_token_id=0)[0, len(prompt):].tolist()
    assert row == generated
  assert max(len(p) + len(r) for p, r in zip(prompts, ours)) > 2 * model.sliding_window


def test_distill_hf_students_keep_the_teacher_pattern_of_local_and_global_layers():
  from guide_jax import experiment_file
  distill_hf = experiment_file.load_module(f'{REPO}/experiments/distill_hf.py')
  gemma3 = ','.join((['local'] * 5 + ['global']) * 4 + ['local'] * 2)  # 26 layers
  assert distill_hf.student_layer_types(gemma3, 13) == ','.join(
      ['local'] * 5 + ['global'] + ['local'] * 5 + ['global', 'local'])
  assert distill_hf.student_layer_types('local,global,local,global', 2) == 'local,global'
  qwen2 = ','.join(['global'] * 2 + ['local'] * 6)  # max_window_layers=2
  assert distill_hf.student_layer_types(qwen2, 4) == 'global,local,local,local'
  assert distill_hf.student_layer_types('', 4) == ''
