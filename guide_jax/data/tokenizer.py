"""Vocabularies: SentencePiece (trained offline on the embedded corpus, cached, reused) or a
Hugging Face `tokenizer.json` (a pretrained teacher's), behind one interface:
`path`, `fingerprint`, `size`, `eos_id`, `encode`, `encode_batch`, `decode`.
`load(path)` picks the kind from the path.

SentencePiece ids follow the T5/seqio convention (pad 0, eos 1, unk 2) so the same .model file works
as a `seqio.SentencePieceVocabulary`. Newlines are a piece of their own and whitespace is
kept verbatim (identity normalisation), so decoded Python code round-trips exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import shutil
import tempfile

import numpy as np
import sentencepiece as spm

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
# Threads of one `encode_batch` call: every core, except in the cache's pool workers,
# which are one per core already and set this to 1.
ENCODE_THREADS = os.cpu_count() or 1


def default_cache_dir(configured: str = '') -> pathlib.Path:
  return pathlib.Path(configured or os.environ.get('GUIDE_JAX_CACHE')
                      or pathlib.Path.home() / '.cache' / 'guide_jax')


class Vocabulary:
  """A loaded SentencePiece model with the path it came from."""

  def __init__(self, model_path: str | os.PathLike):
    self.path = str(model_path)
    if not os.path.isfile(self.path):
      raise FileNotFoundError(f'tokenizer model {self.path!r} does not exist')
    with open(self.path, 'rb') as f:
      data = f.read()
    self.fingerprint = hashlib.sha256(data).hexdigest()[:16]
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.LoadFromSerializedProto(data)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError by version
      raise ValueError(f'{self.path} is not a SentencePiece model ({type(e).__name__}); '
                       f'data.tokenizer takes a .model file or a tokenizer.json') from None
    self.size = self._sp.get_piece_size()
    # The model's own EOS (1 in the T5 convention our trained models use, 2 in Llama's).
    self.eos_id = self._sp.eos_id()
    if self.eos_id < 0:
      raise ValueError(f'{self.path} defines no EOS piece; documents need a separator')

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return self._sp.encode(texts, num_threads=ENCODE_THREADS)

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in ids])

  def token_bytes(self) -> np.ndarray:
    """UTF-8 bytes each id adds to the text [size]: 1 for a byte piece, 0 for control
    pieces (EOS, pad) and unknown; what bits per byte divides by."""
    out = np.zeros(self.size, np.int64)
    for i in range(self.size):
      if self._sp.is_byte(i):
        out[i] = 1
      elif not (self._sp.is_control(i) or self._sp.is_unknown(i)):
        out[i] = len(self._sp.id_to_piece(i).replace('\u2581', ' ').encode())
    return out


class HFVocabulary:
  """A Hugging Face `tokenizer.json` (through the `tokenizers` library, no transformers).

  Special tokens follow the tokenizer's own convention: `encode` applies its
  post-processor (Llama's and Gemma's add BOS; GPT-2's and Qwen's add nothing); the data
  pipeline then ends every document with EOS, read from tokenizer_config.json's
  `eos_token` or config.json's `eos_token_id` beside the file.
  """

  def __init__(self, path: str | os.PathLike):
    from tokenizers import Tokenizer
    self.path = str(path)
    if os.path.isdir(self.path):
      self.path = os.path.join(self.path, 'tokenizer.json')
    if not os.path.isfile(self.path):
      raise FileNotFoundError(f'tokenizer {self.path!r} does not exist')
    with open(self.path, 'rb') as f:
      data = f.read()
    self.fingerprint = hashlib.sha256(data).hexdigest()[:16]
    try:
      self._tok = Tokenizer.from_str(data.decode())
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
      raise ValueError(f'{self.path} is not a Hugging Face tokenizer.json ({e})') from None
    self.size = self._tok.get_vocab_size(with_added_tokens=True)
    self.eos_id = self._find_eos()

  def _find_eos(self) -> int:
    folder = os.path.dirname(self.path)
    tok_cfg = os.path.join(folder, 'tokenizer_config.json')
    if os.path.isfile(tok_cfg):
      with open(tok_cfg) as f:
        eos = json.load(f).get('eos_token')
      if isinstance(eos, dict):
        eos = eos.get('content')
      if eos and self._tok.token_to_id(eos) is not None:
        return self._tok.token_to_id(eos)
    for name in ('generation_config.json', 'config.json'):
      if os.path.isfile(os.path.join(folder, name)):
        with open(os.path.join(folder, name)) as f:
          eos = json.load(f).get('eos_token_id')
        if isinstance(eos, list):
          eos = eos[0] if eos else None
        if isinstance(eos, int):
          return eos
    raise ValueError(f'{self.path}: no EOS token found (tokenizer_config.json eos_token or '
                     f'config.json eos_token_id beside it); documents need a separator')

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text).ids

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(texts)]

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

  def token_bytes(self) -> np.ndarray:
    """UTF-8 bytes each id adds to the text [size] (0 for special tokens). Byte-level BPE
    (GPT-2, Llama 3, Qwen) spells a byte as one character; SentencePiece-style vocabularies
    (Llama 2, Gemma) have U+2581 for a space and <0xNN> byte pieces."""
    spec = json.loads(self._tok.to_str())
    byte_level = 'ByteLevel' in json.dumps(spec.get('decoder'))
    added = self._tok.get_added_tokens_decoder()
    out = np.zeros(self.size, np.int64)
    for token, i in self._tok.get_vocab(with_added_tokens=True).items():
      if i in added:
        out[i] = 0 if added[i].special else len(token.encode())
      elif byte_level:
        out[i] = len(token)
      elif re.fullmatch(r'<0x[0-9A-Fa-f]{2}>', token):
        out[i] = 1
      else:
        out[i] = len(token.replace('\u2581', ' ').encode())
    return out


AnyVocabulary = Vocabulary | HFVocabulary


def is_hf_tokenizer(path: str) -> bool:
  return str(path).endswith('.json') or os.path.isdir(path)


def load(path: str | os.PathLike) -> Vocabulary | HFVocabulary:
  """A SentencePiece `.model` or a Hugging Face `tokenizer.json` (or its directory)."""
  return HFVocabulary(path) if is_hf_tokenizer(str(path)) else Vocabulary(path)


def train_or_load(lines_fn, fingerprint: str, vocab_size: int,
                  cache_dir: pathlib.Path) -> Vocabulary:
  """The cached model for (corpus fingerprint, vocab size), training it on first use.

  `lines_fn()` yields the training sentences. Training writes into a temporary directory
  and renames it into place, so an interrupted or concurrent run never sees a partial model.
  """
  target = cache_dir / 'tokenizers' / f'{fingerprint}_v{vocab_size}'
  model_path = target / 'spm.model'
  if model_path.exists():
    return Vocabulary(model_path)
  with staged_directory(target) as tmp:
    _train_sentencepiece(lines_fn(), tmp, vocab_size)
  return Vocabulary(model_path)


@contextlib.contextmanager
def staged_directory(final: pathlib.Path):
  """A temporary sibling of `final` to fill, renamed to `final` when the block succeeds
  and removed either way: an interrupted writer leaves nothing half-written under
  `final`, and when concurrent writers race, the first rename wins and the rest use it."""
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=final.parent, prefix=f'.{final.name}.'))
  try:
    yield tmp
    try:
      os.rename(tmp, final)
    except OSError:  # another process finished first: use theirs
      pass
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _train_sentencepiece(lines, tmp: pathlib.Path, vocab_size: int) -> None:
  failed = []  # SentencePiece reports an error of the iterator as its own RuntimeError

  def reading():
    try:
      yield from lines
    except Exception as e:  # noqa: BLE001 -- re-raised below, as it was
      failed.append(e)
      raise

  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=reading(), model_prefix=str(tmp / 'spm'), vocab_size=vocab_size,
        model_type='unigram', byte_fallback=True, pad_id=PAD_ID, eos_id=EOS_ID,
        unk_id=UNK_ID, bos_id=-1, normalization_rule_name='identity',
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        user_defined_symbols=['\n'], input_sentence_size=200_000,
        shuffle_input_sentence=True, seed_sentencepiece_size=200_000,
        character_coverage=0.9995, num_threads=os.cpu_count() or 1, minloglevel=2)
  except RuntimeError as e:
    if failed:  # the corpus, not the vocabulary size
      raise failed[0] from None
    reason = str(e).strip().splitlines()[-1].split('] ')[-1]
    raise ValueError(f'model.vocab_size={vocab_size}: cannot train a SentencePiece tokenizer '
                     f'of this size on the train text ({reason}); change model.vocab_size or '
                     f'give data.tokenizer') from None
