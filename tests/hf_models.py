"""Tiny random Hugging Face models of every supported family, built offline.

`make(family, directory)` saves a model whose every parameter is random (norm gains
around 1, Gemma's around 0, biases non-zero), so that a mapping that drops, transposes
or offsets any tensor shows in the logits. `make_tokenizer(directory)` trains a small
byte-level BPE `tokenizer.json` on the stdlib's `email` package.
"""

from __future__ import annotations

import json
import os
import sysconfig

VOCAB = 96

FAMILY_CONFIGS = {
    'gpt2': ('GPT2Config', dict(n_embd=32, n_layer=2, n_head=4, n_positions=64)),
    'llama': ('LlamaConfig', dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=8, intermediate_size=48,
                                  max_position_embeddings=64, tie_word_embeddings=False)),
    'llama3': ('LlamaConfig', dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16, intermediate_size=48,
                                   max_position_embeddings=64, tie_word_embeddings=True,
                                   rope_scaling={'rope_type': 'llama3', 'factor': 8.0,
                                                 'low_freq_factor': 1.0,
                                                 'high_freq_factor': 4.0,
                                                 'original_max_position_embeddings': 32})),
    'mistral': ('MistralConfig', dict(hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      head_dim=8, intermediate_size=48,
                                      max_position_embeddings=64, sliding_window=32)),
    'qwen2': ('Qwen2Config', dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=48,
                                  max_position_embeddings=64, tie_word_embeddings=True)),
    'qwen3': ('Qwen3Config', dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=8, intermediate_size=48,
                                  max_position_embeddings=64, tie_word_embeddings=False)),
    'gemma': ('GemmaConfig', dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=1, head_dim=16, intermediate_size=48,
                                  max_position_embeddings=64)),
    # windows shorter than the tests' sequences (24 tokens), soft-caps low enough to bite
    'qwen2_window': ('Qwen2Config', dict(hidden_size=32, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         intermediate_size=48, max_position_embeddings=64,
                                         use_sliding_window=True, sliding_window=6,
                                         max_window_layers=1, tie_word_embeddings=False)),
    'gemma2': ('Gemma2Config', dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=16, intermediate_size=48,
                                    max_position_embeddings=64, sliding_window=6,
                                    query_pre_attn_scalar=12, attn_logit_softcapping=4.0,
                                    final_logit_softcapping=6.0)),
    'gemma3_text': ('Gemma3TextConfig', dict(
        hidden_size=32, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=48, max_position_embeddings=64, sliding_window=6,
        query_pre_attn_scalar=20, rope_parameters={
            'sliding_attention': {'rope_type': 'default', 'rope_theta': 10_000.0},
            'full_attention': {'rope_type': 'linear', 'factor': 4.0, 'rope_theta': 1e6}})),
}
# the family each of them imports as
FAMILY_OF = {'llama3': 'llama', 'qwen2_window': 'qwen2'}
FAMILIES = list(FAMILY_CONFIGS)


def hf_config(family: str, vocab_size: int = VOCAB, **overrides):
  import transformers
  cls, kw = FAMILY_CONFIGS[family]
  return getattr(transformers, cls)(vocab_size=vocab_size, **{**kw, **overrides})


def make(family: str, directory: str, vocab_size: int = VOCAB, seed: int = 0,
         unit_final_gain: bool = False, uniform_post_gains: bool = False,
         **overrides) -> str:
  """Save a random model of `family` into `directory`; returns the directory.
  `unit_final_gain`: the final norm's gain is 1 (what GUIDE's tied exactness needs);
  `uniform_post_gains`: each of Gemma 2/3's post-norms has one gain for all its dims, a
  random one per norm (what GUIDE's exactness needs there)."""
  import torch
  import transformers
  torch.manual_seed(seed)
  config = hf_config(family, vocab_size, **overrides)
  model = transformers.AutoModelForCausalLM.from_config(config)
  offset = 0.0 if config.model_type.startswith('gemma') else 1.0
  post_norms = config.model_type in ('gemma2', 'gemma3_text')
  with torch.no_grad():
    for name, p in model.named_parameters():
      is_norm = p.ndim == 1 and ('norm' in name or '.ln_' in name) and name.endswith('weight')
      p.copy_(0.2 * torch.randn_like(p) + (offset if is_norm else 0.0))
      if unit_final_gain and is_norm and ('model.norm' in name or 'ln_f' in name):
        p.fill_(offset)  # gain 1: weight 1, or 0 for Gemma's 1 + w
      if uniform_post_gains and post_norms and (
          'post_attention_layernorm' in name or 'post_feedforward_layernorm' in name):
        p.fill_(float(0.3 * torch.randn(())))
  model.save_pretrained(directory)
  return directory


def make_tokenizer(directory: str, vocab_size: int = VOCAB) -> str:
  """A byte-level BPE tokenizer.json (+ tokenizer_config.json naming BOS/EOS)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=['<s>', '</s>'],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  root = os.path.join(sysconfig.get_paths()['stdlib'], 'email')
  files = sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith('.py'))
  tok.train(files, trainer)
  bos = tok.token_to_id('<s>')
  tok.post_processor = processors.TemplateProcessing(single='<s> $A', special_tokens=[
      ('<s>', bos)])
  os.makedirs(directory, exist_ok=True)
  tok.save(os.path.join(directory, 'tokenizer.json'))
  with open(os.path.join(directory, 'tokenizer_config.json'), 'w') as f:
    json.dump({'bos_token': '<s>', 'eos_token': '</s>',
               'tokenizer_class': 'PreTrainedTokenizerFast'}, f)
  return directory
