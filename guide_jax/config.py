"""The default config every experiment starts from, and its validation.

Experiment files (`experiments/*.py`) call `base_config()` and override fields. `validate`
runs before anything is built or written and raises `ConfigError` with a one-line message
naming the field and what would fix it; `main` turns that into exit code 2.
"""

from __future__ import annotations

import ml_collections

from guide_jax import errors, sharding
from guide_jax.models import attention
from guide_jax.models.transformer import REMAT_POLICIES
from guide_jax.data import sources
from guide_jax.losses import KD_KINDS, loss_config


ConfigError = errors.ConfigError  # raised here, and by every module that reads the config


# Hugging Face families a model can follow (guide_jax.hf.families maps each); '' = native.
FAMILIES = ('', 'gpt2', 'llama', 'mistral', 'qwen2', 'qwen3', 'gemma', 'gemma2',
            'gemma3_text')


# Model fields that change how a step is computed, not the parameters or their values: a
# run may resume with them changed (a new remat policy on a bigger slice, say).
EXECUTION_FIELDS = ('scan_layers', 'unroll_on_cpu', 'remat', 'query_chunks', 'attention_kernel',
                    'splash_block_q', 'splash_block_kv')


def complete_model(saved: dict) -> ml_collections.ConfigDict:
  """A model config saved by an older version, with the fields added since at their
  defaults (which reproduce the old architecture)."""
  m = model_config()
  m.update(saved)
  return m


def model_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.vocab_size = 4096        # tokens; the tokenizer's size (an HF tokenizer's may be smaller)
  m.d_model = 256            # residual width d
  m.n_layers = 4             # transformer blocks n
  m.n_heads = 4              # query heads h
  m.n_kv_heads = 4           # key/value heads h_kv (GQA when < n_heads; must divide n_heads)
  m.head_dim = 64            # per-head width l
  m.mlp_dim = 1024           # MLP hidden width f
  m.max_len = 256            # longest sequence (size of the learned position table)
  m.position = 'learned'     # 'learned' (absolute table P, as in the GUIDE paper) or 'rope'
  m.rope_base = 10000.0      # RoPE frequency base
  m.norm = 'rmsnorm'         # 'rmsnorm' or 'layernorm'
  m.norm_eps = 1e-6          # norm epsilon
  m.mlp = 'swiglu'           # 'gelu' (tanh GELU), 'swiglu' (SiLU-gated) or 'geglu' (GELU-gated)
  m.tie_embeddings = True    # output layer = E^T (else an untied W_U)
  m.scale_embeddings = False # x0 = sqrt(d) * E[z] (Gemma style) instead of E[z]
  m.use_bias = False         # biases on the attention and MLP projections
  m.qkv_bias = False         # biases on q/k/v only (Qwen2); implied by use_bias
  m.qk_norm = False          # RMSNorm over each head's q and k before RoPE (Qwen3)
  m.norm_scale_offset = 0.0  # norm gain = offset + scale: 0 (usual) or 1 (Gemma's 1 + w)
  m.rope_scaling = 'none'    # 'none', 'llama3' (Llama 3.1+ frequency rescaling, below) or
                             # 'linear' (every frequency / factor: Gemma 3's global layers)
  m.rope_scaling_factor = 8.0      # llama3, linear: slow-down of the (long) wavelengths
  m.rope_low_freq_factor = 1.0     # llama3: wavelengths > original/low are scaled fully
  m.rope_high_freq_factor = 4.0    # llama3: wavelengths < original/high are kept
  m.rope_original_max_len = 8192   # llama3: the context the frequencies were trained for
  m.sliding_window = 0       # attention window w (Mistral): query i sees keys i-w+1..i;
                             # 0 = none. Every layer's, or the local layers' (layer_types).
                             # Computed by every kernel and by the KV-cache sampler
  m.layer_types = ''         # per layer 'local' or 'global', comma-separated (n_layers of
                             # them): local layers attend within sliding_window with RoPE
                             # base local_rope_base and no rope_scaling; global layers attend
                             # everything with rope_base and rope_scaling. '' = all alike
  m.local_rope_base = 0.0    # RoPE base of the local layers (Gemma 3: 10k); 0 = rope_base
  m.attn_logit_softcap = 0.0 # c > 0: attention logits -> c * tanh(logits / c) (Gemma 2)
  m.query_pre_attn_scalar = 0.0  # s > 0: attention logits scaled by 1/sqrt(s), not
                             # 1/sqrt(head_dim) (Gemma 2/3)
  m.final_logit_softcap = 0.0  # c > 0: output logits -> c * tanh(logits / c) (Gemma 2)
  m.post_norms = False       # norms after the attention and the MLP too (Gemma 2/3's
                             # sandwich: x += Np(Attn(N(x)))); gains blocks.post_*_norm
  m.family = ''              # Hugging Face family ('gpt2', 'llama', 'mistral', 'qwen2',
                             # 'qwen3', 'gemma', 'gemma2', 'gemma3_text') the model follows;
                             # '' = native (export infers)
  m.init_std = 0.02          # std of the normal init (output projections scaled by depth)
  m.param_dtype = 'float32'  # storage dtype of parameters (and optimizer state)
  m.dtype = 'float32'        # compute dtype of matmuls ('bfloat16': f32 accumulation)
  m.scan_layers = True       # lax.scan over blocks: compile time flat in depth
  m.unroll_on_cpu = True     # but on a CPU mesh, a Python loop over them: XLA:CPU runs the
                             # scan's body 1.3-1.45x slower (benchmarks/README.md); compile time
                             # then grows with depth. No effect on TPU/GPU.
  m.query_chunks = 0         # xla kernel: causal chunks of the queries, each attending
                             # only the keys up to its end (the same result, fewer FLOPs);
                             # 0: up to 4 on a CPU mesh, 1 on TPU/GPU (attention.query_chunks)
  m.remat = 'none'           # rematerialisation: a transformer.REMAT_POLICIES name
  m.attention_kernel = 'auto'  # 'auto', 'xla', 'splash' (TPU Pallas), 'cudnn' (GPU). auto:
                             # splash on TPU, cuDNN on GPU where dtype and shapes allow
                             # (else xla, with a logged reason), xla on CPU (models/attention.py)
  m.splash_block_q = 512     # splash query block (forward and backward); min(block, seq_len)
                             # must divide the sequence
  m.splash_block_kv = 512    # splash key/value block; min(block, seq_len) must divide the
                             # sequence and be a multiple of 128
  return m


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = model_config()

  c.data = ml_collections.ConfigDict()
  c.data.backend = 'embedded'      # 'embedded' (stdlib corpus), 'files', 'synthetic', or 'seqio'
  # backend='files': globs (local or gs://) of .txt/.md/.py, .jsonl/.json (+.gz/.zst),
  # .parquet or .arrayrecord files. A mixture: 'glob,0.3;glob2,0.7', or in a config file
  # a list of {'files': glob, 'weight': w}. Weights are normalised and honoured per step.
  c.data.train_files = ml_collections.config_dict.placeholder(object)
  c.data.train_files = ''
  c.data.eval_files = ''           # globs; '' = hold out data.validation_percent of documents
  c.data.text_key = 'text'         # the JSON field / Parquet column holding the text
  c.data.file_format = 'auto'      # 'auto' (by suffix), 'text', 'jsonl', 'parquet', 'arrayrecord'
  c.data.workers = 0               # processes tokenizing the cache; 0 = one per core
  c.data.prefetch = 2              # batches computed ahead by grain threads; 0 = none
  c.data.seq_len = 256             # tokens per row
  c.data.global_batch_size = 16    # rows per step over all processes
  c.data.seed = 0                  # data order (per-epoch shuffles); independent of init
  c.data.cache_dir = ''            # tokenizer/token cache; '' = $GUIDE_JAX_CACHE or ~/.cache/guide_jax
  c.data.embedded_root = ''        # corpus root; '' = this interpreter's standard library
  c.data.validation_percent = 2    # documents whose key hash falls below this: validation
  c.data.test_percent = 0          # the next this-many percent: a held-out test split
  c.data.eval_split = 'validation' # what evaluation reads: 'validation' or 'test'
  c.data.tokenizer = ''            # a SentencePiece .model or a Hugging Face tokenizer.json;
                                   # '' = the teacher's, else train one (embedded)
  c.data.seqio_task = ''           # seqio Task/Mixture name for backend='seqio'
  c.data.seqio_train_split = 'train'
  c.data.seqio_eval_split = 'validation'
  c.data.eval_batches = 8          # batches per evaluation (fixed, unshuffled rows)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                 # data-parallel axis (-1 = all remaining devices)
  c.mesh.fsdp = 1                  # parameter/optimizer sharding axis (ZeRO-3)
  c.mesh.tensor = 1                # tensor-parallel axis (heads, mlp, vocab)
  # Across TPU slices (the data-center network): each axis above is within a slice, and
  # is multiplied by its DCN factor; dcn_data * dcn_fsdp must be the number of slices
  # (-1 fills one of them). Only data and fsdp cross slices, never tensor.
  c.mesh.dcn_data = 1
  c.mesh.dcn_fsdp = 1
  c.logical_rules = sharding.DEFAULT_RULES  # logical axis -> mesh axes
  c.topology = ''                  # smallest TPU slice this config fits ('v5p:4x4x2');
                                   # `python -m guide_jax.aot` compiles for it and checks

  c.distributed = ml_collections.ConfigDict()
  c.distributed.initialize = 'auto'   # 'auto' (when the environment says so), 'always', 'never'
  c.distributed.coordinator_address = ''
  c.distributed.num_processes = -1    # -1: let jax detect
  c.distributed.process_id = -1

  c.train = ml_collections.ConfigDict()
  c.train.steps = 200              # optimizer steps
  c.train.learning_rate = 3e-3     # peak learning rate
  c.train.warmup_steps = 20        # linear warmup, then cosine decay to min_lr_ratio * peak
  c.train.min_lr_ratio = 0.1
  c.train.weight_decay = 0.1       # AdamW decoupled weight decay (matrices only, not norms)
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.grad_clip = 1.0          # global-norm clipping (0 = off)
  c.train.on_nonfinite = 'stop'    # a NaN/Inf loss or gradient norm: 'stop' (one error line
                                   # naming the step; the last good checkpoint stays) or
                                   # 'skip' (that update is not applied, and counted)
  c.train.max_skips_in_a_row = 10  # 'skip': stop after this many non-finite steps in a row
  c.train.grad_accum = 1           # micro-batches per step (global_batch_size must divide)
  c.train.z_loss = 0.0             # weight of log(Z)^2 (PaLM z-loss)
  c.train.seed = 0                 # parameter init
  c.train.log_every = 10           # steps between train metric logs
  c.train.eval_every = 100         # steps between evaluations (and at the end)
  c.train.eval_at_start = False    # also evaluate at step 0 (curves show the head start)
  c.train.checkpoint_every = 100   # steps between checkpoints (and at the end)
  c.train.keep_checkpoints = 2     # how many checkpoints to keep
  c.train.async_checkpoints = True # write checkpoints in the background
  c.train.local_checkpoint_dir = ''  # a local tier on each host (RAM disk, local SSD); '' = none
  c.train.local_checkpoint_every = 0 # steps between local-tier checkpoints (with the dir)
  c.train.progress_bar = True      # console progress bar (process 0)
  c.train.peak_flops = 0.0         # per-device peak FLOP/s for MFU; 0 = known table or measure

  # Distillation: a teacher makes this a GUIDE/KD student run (else plain pretraining).
  c.teacher = ml_collections.ConfigDict()
  c.teacher.checkpoint = ''        # a teacher's workdir (model config + vocab read from it)
  c.teacher.pretrain = ml_collections.ConfigDict()  # or: a pretraining config, trained
                                   # into WORKDIR/teacher first when no teacher is there
  c.teacher.dtype = 'float32'      # teacher storage/compute dtype ('bfloat16' halves memory)
  c.teacher.attention_kernel = ''  # the teacher's attention kernel (model.attention_kernel's
                                   # values); '' = its own model config's
  c.teacher.logits_dir = ''        # an offline teacher-logits cache (python -m
                                   # guide_jax.teacher_logits): KD reads the teacher's
                                   # top-k from it and the teacher never runs; its params
                                   # are loaded only when GUIDE projects them
  c.teacher.cache_top_k = 0        # > 0: a study run that reads the study's shared cache
                                   # of this k (guide_jax.study builds one per data order
                                   # and sets teacher.logits_dir); 0 = online teacher
  c.guide = guide_config()
  c.loss = loss_config()
  return c


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def validate_model(m: ml_collections.ConfigDict, prefix: str = 'model') -> None:
  for name in ('vocab_size', 'd_model', 'n_layers', 'n_heads', 'n_kv_heads', 'head_dim',
               'mlp_dim', 'max_len'):
    _require(int(m[name]) > 0, f'{prefix}.{name}={m[name]} must be a positive integer')
  _require(m.n_heads % m.n_kv_heads == 0,
           f'{prefix}.n_heads={m.n_heads} is not divisible by {prefix}.n_kv_heads='
           f'{m.n_kv_heads}; choose n_kv_heads that divides n_heads')
  _require(m.position in ('learned', 'rope'),
           f"{prefix}.position={m.position!r} must be 'learned' or 'rope'")
  _require(m.position != 'rope' or m.head_dim % 2 == 0,
           f'{prefix}.head_dim={m.head_dim} must be even with rope (rotary pairs)')
  _require(m.norm in ('rmsnorm', 'layernorm'),
           f"{prefix}.norm={m.norm!r} must be 'rmsnorm' or 'layernorm'")
  _require(m.mlp in ('gelu', 'swiglu', 'geglu'),
           f"{prefix}.mlp={m.mlp!r} must be 'gelu', 'swiglu' or 'geglu'")
  _require(m.norm_scale_offset in (0.0, 1.0),
           f'{prefix}.norm_scale_offset={m.norm_scale_offset} must be 0 or 1')
  _require(m.rope_scaling in ('none', 'llama3', 'linear'),
           f"{prefix}.rope_scaling={m.rope_scaling!r} must be 'none', 'llama3' or 'linear'")
  _require(m.rope_scaling != 'linear' or m.rope_scaling_factor > 0,
           f'{prefix}.rope_scaling_factor={m.rope_scaling_factor} must be positive')
  _require(m.rope_scaling == 'none' or m.position == 'rope',
           f"{prefix}.rope_scaling={m.rope_scaling!r} needs {prefix}.position='rope'")
  if m.rope_scaling == 'llama3':
    _require(m.rope_scaling_factor > 0 and m.rope_original_max_len > 0
             and 0 < m.rope_low_freq_factor < m.rope_high_freq_factor,
             f'{prefix}.rope_scaling_factor/rope_original_max_len must be positive and '
             f'0 < rope_low_freq_factor < rope_high_freq_factor')
  _require(m.sliding_window >= 0, f'{prefix}.sliding_window={m.sliding_window} must be >= 0')
  if m.layer_types:
    kinds = [k.strip() for k in m.layer_types.split(',')]
    _require(len(kinds) == m.n_layers and set(kinds) <= {'local', 'global'},
             f'{prefix}.layer_types={m.layer_types!r} must name each of the {m.n_layers} '
             f"layers 'local' or 'global', comma-separated")
    _require('local' not in kinds or m.sliding_window > 0,
             f'{prefix}.layer_types has local layers but {prefix}.sliding_window=0; set the '
             f'local layers\' window')
  for name in ('local_rope_base', 'query_pre_attn_scalar', 'final_logit_softcap'):
    _require(m[name] >= 0, f'{prefix}.{name}={m[name]} must be >= 0 (0 = off)')
  _require(m.attn_logit_softcap >= 0,
           f'{prefix}.attn_logit_softcap={m.attn_logit_softcap} must be >= 0 (0 = off)')
  _require(m.attention_kernel in attention.KERNELS,
           f'{prefix}.attention_kernel={m.attention_kernel!r} must be one of '
           f'{attention.KERNELS}')
  for name in ('splash_block_q', 'splash_block_kv'):
    _require(m[name] > 0, f'{prefix}.{name}={m[name]} must be positive')
  _require(m.family in FAMILIES, f'{prefix}.family={m.family!r} must be one of {FAMILIES}')
  _require(m.query_chunks >= 0, f'{prefix}.query_chunks={m.query_chunks} must be >= 0 '
           '(0: chosen by platform)')
  _require(m.remat in REMAT_POLICIES,
           f"{prefix}.remat={m.remat!r} must be one of {', '.join(REMAT_POLICIES)}")
  for name in ('param_dtype', 'dtype'):
    _require(m[name] in ('float32', 'bfloat16'),
             f"{prefix}.{name}={m[name]!r} must be 'float32' or 'bfloat16'")


def validate_kernel(m: ml_collections.ConfigDict, seq_len: int, platform: str,
                    prefix: str = 'model') -> None:
  """The attention kernel `m` asks for can run seq_len tokens on `platform` (the devices'
  'cpu', 'gpu' or 'tpu'); 'auto' always can (it falls back to xla)."""
  try:
    attention.choose(m, seq_len, platform, prefix)
  except attention.AttentionError as e:
    raise ConfigError(str(e)) from None


def validate(c: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1,
             platform: str | None = None, num_slices: int = 1) -> None:
  """Raise ConfigError for a config that cannot work on `num_devices` devices of
  `platform` (checks that depend on it are skipped when None), spread over `num_slices`
  TPU slices."""
  validate_model(c.model)
  if platform:
    validate_kernel(c.model, c.data.seq_len, platform)
  d, t = c.data, c.train
  _require(d.backend in ('embedded', 'files', 'synthetic', 'seqio'),
           f"data.backend={d.backend!r} must be 'embedded', 'files', 'synthetic' or 'seqio'")
  if d.backend == 'files':
    _require(bool(d.train_files), "data.train_files is empty; give a glob of your data "
             "files for data.backend='files'")
    try:
      sources.parse_mixture(d.train_files, 'data.train_files')
      if d.eval_files:
        sources.parse_mixture(d.eval_files, 'data.eval_files')
    except sources.DataError as e:
      raise ConfigError(str(e)) from None
    _require(bool(d.text_key), 'data.text_key is empty; name the JSON field or Parquet '
             'column that holds the text')
  _require(d.file_format in sources.FILE_FORMATS,
           f'data.file_format={d.file_format!r} must be one of '
           f'{", ".join(map(repr, sources.FILE_FORMATS))}')
  _require(d.workers >= 0, f'data.workers={d.workers} must be >= 0 (0 = one per core)')
  _require(d.prefetch >= 0, f'data.prefetch={d.prefetch} must be >= 0')
  _require(d.backend != 'seqio' or bool(d.seqio_task),
           "data.seqio_task is empty; name a registered seqio Task or Mixture for backend='seqio'")
  _require(d.backend != 'seqio' or not d.tokenizer.endswith('.json'),
           f'data.tokenizer={d.tokenizer!r} is a Hugging Face tokenizer, which the seqio '
           f'backend cannot read; use a SentencePiece .model or data.backend=embedded')
  _require(d.seq_len > 0, f'data.seq_len={d.seq_len} must be positive')
  _require(c.model.max_len >= d.seq_len,
           f'model.max_len={c.model.max_len} is smaller than data.seq_len={d.seq_len}; '
           f'raise model.max_len or lower data.seq_len')
  _require(d.global_batch_size > 0, f'data.global_batch_size={d.global_batch_size} must be positive')
  _require(0 < d.validation_percent < 100,
           f'data.validation_percent={d.validation_percent} must be in (0, 100)')
  _require(0 <= d.test_percent < 100 - d.validation_percent,
           f'data.test_percent={d.test_percent} must be in [0, {100 - d.validation_percent})')
  _require(d.eval_split in ('validation', 'test'),
           f"data.eval_split={d.eval_split!r} must be 'validation' or 'test'")
  _require(d.eval_split != 'test' or (d.backend in ('embedded', 'files') and
                                      d.test_percent > 0 and not d.eval_files),
           "data.eval_split='test' needs data.test_percent > 0 and the embedded or files "
           "backend without data.eval_files (seqio evaluates data.seqio_eval_split)")
  _require(d.eval_batches > 0, f'data.eval_batches={d.eval_batches} must be positive')
  chunk = c.loss.chunk_len
  _require(chunk in (-1, 0) or (chunk > 0 and d.seq_len % chunk == 0),
           f'loss.chunk_len={chunk} must be -1 (auto), 0 (off) or divide '
           f'data.seq_len={d.seq_len}')
  validate_on_policy(c)
  try:
    dcn = sharding.resolve_dcn_shape(c.mesh, num_slices)
    mesh_shape = sharding.resolve_mesh_shape(c.mesh, num_devices // num_slices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  batch_shards = mesh_shape[0] * mesh_shape[1] * dcn[0] * dcn[1]
  _require(t.grad_accum >= 1, f'train.grad_accum={t.grad_accum} must be >= 1')
  micro = d.global_batch_size // t.grad_accum
  _require(d.global_batch_size % t.grad_accum == 0,
           f'data.global_batch_size={d.global_batch_size} is not divisible by '
           f'train.grad_accum={t.grad_accum}')
  _require(micro % batch_shards == 0,
           f'data.global_batch_size/train.grad_accum={micro} is not divisible by the '
           f'batch shards mesh.data*mesh.fsdp*mesh.dcn_data*mesh.dcn_fsdp={batch_shards}; '
           f'change the batch or the mesh')
  _require(d.global_batch_size % num_processes == 0,
           f'data.global_batch_size={d.global_batch_size} is not divisible by the '
           f'{num_processes} processes')
  _require(t.steps > 0, f'train.steps={t.steps} must be positive')
  _require(t.learning_rate > 0, f'train.learning_rate={t.learning_rate} must be positive')
  _require(0 <= t.warmup_steps < t.steps,
           f'train.warmup_steps={t.warmup_steps} must be in [0, train.steps={t.steps})')
  _require(0 <= t.min_lr_ratio <= 1, f'train.min_lr_ratio={t.min_lr_ratio} must be in [0, 1]')
  for name in ('log_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints'):
    _require(t[name] > 0, f'train.{name}={t[name]} must be positive')
  _require(bool(t.local_checkpoint_dir) == (t.local_checkpoint_every > 0),
           f'train.local_checkpoint_dir={t.local_checkpoint_dir!r} and '
           f'train.local_checkpoint_every={t.local_checkpoint_every}: set both (a directory '
           f'on each host, e.g. /dev/shm/guide_jax, and a positive interval) or neither')
  _require('://' not in t.local_checkpoint_dir,
           f'train.local_checkpoint_dir={t.local_checkpoint_dir!r} is remote; the local tier '
           f'is a disk of each host (a RAM disk or local SSD): the persistent tier is the '
           f'workdir')
  _require(t.grad_clip >= 0, f'train.grad_clip={t.grad_clip} must be >= 0')
  _require(t.on_nonfinite in ('stop', 'skip'),
           f"train.on_nonfinite={t.on_nonfinite!r} must be 'stop' or 'skip'")
  _require(t.max_skips_in_a_row >= 1,
           f'train.max_skips_in_a_row={t.max_skips_in_a_row} must be >= 1')
  _require(t.z_loss >= 0, f'train.z_loss={t.z_loss} must be >= 0')
  rule_names = {name for name, _ in c.logical_rules}
  for name, target in c.logical_rules:
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    for axis in targets:
      _require(axis in sharding.MESH_AXES,
               f'logical_rules: {name!r} maps to unknown mesh axis {axis!r}; '
               f'use one of {sharding.MESH_AXES}')
  missing = {'vocab', 'embed', 'act_batch'} - rule_names
  _require(not missing, f'logical_rules lacks {sorted(missing)}; add a rule for each')
  _require(c.teacher.attention_kernel in ('', *attention.KERNELS),
           f'teacher.attention_kernel={c.teacher.attention_kernel!r} must be one of '
           f"{('', *attention.KERNELS)} ('' = the teacher model's own)")
  if c.teacher.checkpoint or c.teacher.pretrain or c.teacher.logits_dir:
    validate_guide(c)
  _require(c.teacher.cache_top_k >= 0,
           f'teacher.cache_top_k={c.teacher.cache_top_k} must be >= 0')
  _require(not c.teacher.cache_top_k or c.teacher.logits_dir,
           f'teacher.cache_top_k={c.teacher.cache_top_k} is read by guide_jax.study, which '
           f'builds the shared cache; outside a study, build one with python -m '
           f'guide_jax.teacher_logits --top_k={c.teacher.cache_top_k} and set '
           f'teacher.logits_dir')
  if c.teacher.logits_dir:
    _require(c.data.backend != 'seqio',
             "teacher.logits_dir needs the grain pipeline (data.backend embedded, files or "
             "synthetic); seqio has no random access to a step's rows")


GUIDE_CHOICES = {'init': ('none', 'embeddings', 'blocks'), 'blocks': ('first', 'all'),
                 'pca_rows': ('embed', 'embed+pos')}


def validate_guide(c: ml_collections.ConfigDict) -> None:
  """GUIDE's settings of a distillation run: no value that would be ignored silently."""
  g = c.guide
  for name, choices in GUIDE_CHOICES.items():
    _require(g[name] in choices, f'guide.{name}={g[name]!r} must be one of {choices}')
  _require(not (g.unembed and c.model.tie_embeddings),
           'guide.unembed=True needs an untied student (model.tie_embeddings=False); with '
           'tied embeddings the output layer follows the guided embedding already')
  match = c.loss.match
  _require(g.init != 'none' or (match.value == 0 and match.end_value == 0),
           "loss.match > 0 with guide.init='none' pulls toward nothing; set guide.init to "
           "'embeddings' or 'blocks', or loss.match.value=0")


def validate_on_policy(c: ml_collections.ConfigDict) -> None:
  """loss.on_policy (train/on_policy.py): a prompt and its sample fit one row, and a
  teacher that runs is there to grade them."""
  op = c.loss.on_policy
  _require(0 <= op.fraction <= 1, f'loss.on_policy.fraction={op.fraction} must be in [0, 1] '
           f'(the share of each batch the student samples; 0: KD on data only)')
  _require(op.kind in KD_KINDS, f'loss.on_policy.kind={op.kind!r} must be one of {KD_KINDS}')
  _require(0 < op.beta < 1, f'loss.on_policy.beta={op.beta} must be in (0, 1)')
  _require(op.temperature >= 0, f'loss.on_policy.temperature={op.temperature} must be >= 0 '
           f'(0: greedy)')
  _require(0 < op.top_p <= 1, f'loss.on_policy.top_p={op.top_p} must be in (0, 1] (1: off)')
  _require(op.eval_batches > 0, f'loss.on_policy.eval_batches={op.eval_batches} must be '
           f'positive')
  _require(op.start_step >= 0, f'loss.on_policy.start_step={op.start_step} must be >= 0')
  _require(op.fraction == 0 or op.start_step < c.train.steps,
           f'loss.on_policy.start_step={op.start_step} is not below train.steps='
           f'{c.train.steps}: no step would be on-policy; lower it or set fraction=0')
  _require(op.prompt_len >= 0 and op.new_tokens >= 0,
           f'loss.on_policy.prompt_len={op.prompt_len} and new_tokens={op.new_tokens} must '
           f'be >= 0')
  if op.fraction == 0 and op.new_tokens == 0:
    return
  _require(op.prompt_len > 0 and op.new_tokens > 0,
           f'loss.on_policy needs prompt_len > 0 and new_tokens > 0 to sample (got '
           f'{op.prompt_len} and {op.new_tokens})')
  total = op.prompt_len + op.new_tokens
  # (data.seq_len <= model.max_len is checked above, so this keeps to max_len too)
  _require(total <= c.data.seq_len,
           f'loss.on_policy.prompt_len + new_tokens = {total} exceeds data.seq_len='
           f'{c.data.seq_len}: a prompt and its sample must fit one row; lower them')
  _require(bool(c.teacher.checkpoint or c.teacher.pretrain) and not c.teacher.logits_dir,
           'loss.on_policy samples from the student for a teacher to grade: it needs '
           'teacher.checkpoint or teacher.pretrain, and no teacher.logits_dir (a cache holds '
           'no logits for new samples); set loss.on_policy.fraction=0 and new_tokens=0')
  kd = c.loss.kd
  _require(op.fraction == 0 or kd.value > 0 or (kd.kind != 'constant' and kd.end_value > 0),
           f'loss.on_policy.fraction={op.fraction} weights its rows by w_kd(t), which '
           f'loss.kd makes 0 everywhere; set loss.kd.value > 0')


def guide_config() -> ml_collections.ConfigDict:
  """GUIDE_METHOD.md's flags; defaults are the paper's choices where it states them."""
  g = ml_collections.ConfigDict()
  g.init = 'blocks'              # overwrite the random init with: 'none', 'embeddings', 'blocks'
  g.center = False               # PCA of E_T minus its row mean
  g.pca_rows = 'embed'           # 'embed' or 'embed+pos' (E_T rows stacked on P_T)
  g.fold_norm = True             # fold the teacher's norm gains into the read weights
  g.blocks = 'first'             # guided blocks: 'first' (the paper) or 'all' (US over depth)
  g.attn_logit_rescale = False   # W_Q,S *= sqrt(l_T / l_S)
  g.rescale_outputs = False      # W_O,S *= h_T / h_S and W_out,S *= f_T / f_S
  g.unembed = False              # untied student: W_U,S from the teacher's output layer
  g.approx_teacher_eval = True   # log the eval loss of the teacher with E_T -> E_T M M^T
  return g


def load_experiment_module(name: str):
  """The module experiments/NAME.py (for configs built on a sibling config, and tests)."""
  import pathlib
  from guide_jax import experiment_file
  return experiment_file.load_module(pathlib.Path(__file__).resolve().parent.parent / 'experiments'
                           / f'{name}.py')
