"""Packing a token stream of concatenated documents into fixed-length rows.

A row is the window `stream[start : start + seq_len + 1]`: inputs are its first seq_len
tokens, targets the last seq_len. Documents meet inside rows (no padding), and the model
sees them as separate segments:
  segment_ids   1, 2, 3, ... per document piece in the row (attention stays inside one)
  positions     0, 1, ... restarting at each segment (what learned positions / RoPE read)
  loss_weights  1 where input and target belong to the same document, else 0 (the EOS
                that ends one document does not predict the next one's first token)
"""

from __future__ import annotations

import numpy as np

FIELDS = ('inputs', 'targets', 'segment_ids', 'positions', 'loss_weights')


def doc_ids_from_offsets(offsets: np.ndarray) -> np.ndarray:
  """doc_ids[t] = index of the document holding token t."""
  lengths = np.diff(offsets)
  return np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)


def pack_rows(tokens: np.ndarray, doc_ids: np.ndarray, starts: np.ndarray,
              seq_len: int) -> dict[str, np.ndarray]:
  """Rows starting at `starts` (each needs seq_len + 1 tokens), as [len(starts), seq_len]."""
  idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
  return pack_windows(tokens[idx], doc_ids[idx])


def pack_windows(window: np.ndarray, docs: np.ndarray) -> dict[str, np.ndarray]:
  """Rows from windows [n, seq_len + 1] of tokens and of the document each token is in."""
  seq_len = window.shape[1] - 1
  d_in, d_tgt = docs[:, :-1], docs[:, 1:]
  boundary = np.concatenate(
      [np.zeros((len(window), 1), bool), d_in[:, 1:] != d_in[:, :-1]], axis=1)
  segment_ids = np.cumsum(boundary, axis=1).astype(np.int32) + 1
  # position = column - column where the current segment started
  cols = np.broadcast_to(np.arange(seq_len), d_in.shape)
  seg_start = np.maximum.accumulate(np.where(boundary, cols, 0), axis=1)
  return {
      'inputs': window[:, :-1].astype(np.int32),
      'targets': window[:, 1:].astype(np.int32),
      'segment_ids': segment_ids,
      'positions': (cols - seg_start).astype(np.int32),
      'loss_weights': (d_in == d_tgt).astype(np.float32),
  }
