"""Token documents -> fixed-length rows of `input_ids`, `segment_ids` and `positions`.

Rows carry segment ids so that the model's attention masks keep documents apart: segment 0 is
padding, segments 1, 2, … are the document pieces of a row, and positions restart at 0 for each
piece. `pack_documents` fills rows end to end for pre-training; `pad_and_stack` puts one
document per row for fine-tuning and evaluation on short texts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lmjax.errors import UserError

Batch = dict[str, np.ndarray]  # {"input_ids", "segment_ids", "positions"}: int32 [rows, seq_len]


def pack_documents(token_docs: Sequence[Sequence[int]], *, seq_len: int, eos_id: int | None,
                   bos_id: int | None = None) -> Batch:
  """Concatenates documents greedily into rows of `seq_len` tokens, dropping nothing.

  token_docs: num_docs lists of token ids. Each document becomes [bos_id] + doc + [eos_id]
  (each id only when not None) and is appended where the previous one ended; a document that
  does not fit in what is left of a row continues at the start of the next, so a long document
  spans several rows. Within a row each piece gets its own segment id (1, 2, 3, …) and positions
  counting from 0. The tail of the last row is padding: input id 0, segment 0, position 0.

  Returns int32 arrays `input_ids`, `segment_ids`, `positions`, each [num_rows, seq_len].
  """
  packer = RowPacker(seq_len=seq_len, eos_id=eos_id, bos_id=bos_id)
  full, last = packer.add(token_docs), packer.finish()
  if not len(full["input_ids"]) and not len(last["input_ids"]):
    raise UserError(f"There are no tokens to pack ({len(token_docs)} documents, all empty). "
                    f"Check that the data source yields non-empty documents.")
  return {k: np.concatenate([full[k], last[k]]) for k in full}


class RowPacker:
  """`pack_documents` fed in chunks, for corpora that do not fit in memory at once.

  `add(docs)` returns the rows completed so far and keeps the unfinished one; `finish()` returns
  that last row, padded (or no rows). Feeding a corpus in any chunks gives exactly the rows
  `pack_documents` gives for all of it.
  """

  def __init__(self, *, seq_len: int, eos_id: int | None, bos_id: int | None = None):
    _check_seq_len(seq_len)
    self.seq_len = seq_len
    self._prefix = np.asarray([] if bos_id is None else [bos_id], dtype=np.int64)
    self._suffix = np.asarray([] if eos_id is None else [eos_id], dtype=np.int64)
    self._tokens = np.zeros(0, np.int64)     # the unfinished row's tokens
    self._doc_index = np.zeros(0, np.int64)  # and the document each came from
    self._num_docs = 0

  def add(self, token_docs: Sequence[Sequence[int]]) -> Batch:
    pieces = [np.concatenate([self._prefix, np.asarray(doc, dtype=np.int64).reshape(-1),
                              self._suffix]) for doc in token_docs]
    pieces = [p for p in pieces if p.size]
    doc_index = np.repeat(np.arange(self._num_docs, self._num_docs + len(pieces)),
                          [p.size for p in pieces])
    self._num_docs += len(pieces)
    tokens = np.concatenate([self._tokens, *pieces])
    doc_index = np.concatenate([self._doc_index, doc_index])
    done = tokens.size // self.seq_len * self.seq_len
    self._tokens, self._doc_index = tokens[done:], doc_index[done:]
    return _rows(tokens[:done], doc_index[:done], self.seq_len)

  def finish(self) -> Batch:
    tokens, doc_index = self._tokens, self._doc_index
    self._tokens, self._doc_index = tokens[:0], doc_index[:0]
    return _rows(tokens, doc_index, self.seq_len)


def packed_row(token_docs: Sequence[Sequence[int]], *, skip: int, seq_len: int,
               eos_id: int | None, bos_id: int | None = None) -> Batch:
  """One row of `pack_documents`, made without packing the documents before it.

  token_docs: the non-empty documents the row's tokens come from, in order; the row starts
  `skip` tokens into the first one's packed tokens ([bos_id] + doc + [eos_id]) and takes the
  next `seq_len` tokens (fewer, padded, when the documents end first: the corpus's last row).
  A row's segment ids and positions depend only on its own tokens, so this is exactly the row
  that packing the whole corpus gives. Returns int32 arrays [1, seq_len].
  """
  _check_seq_len(seq_len)
  prefix = [] if bos_id is None else [bos_id]
  suffix = [] if eos_id is None else [eos_id]
  pieces = [np.asarray(prefix + list(doc) + suffix, np.int64) for doc in token_docs]
  tokens = np.concatenate(pieces)[skip:skip + seq_len]
  doc_index = np.repeat(np.arange(len(pieces)), [p.size for p in pieces])[skip:skip + seq_len]
  return _rows(tokens, doc_index, seq_len)


def _rows(tokens: np.ndarray, doc_index: np.ndarray, seq_len: int) -> Batch:
  """Rows of `seq_len` from a token stream [total] and its document indices (the last row
  padded): segment ids count the pieces of each row, positions restart with each piece."""
  num_rows = -(-tokens.size // seq_len)
  pad = num_rows * seq_len - tokens.size
  tokens = np.pad(tokens, (0, pad)).reshape(num_rows, seq_len)            # [rows, seq_len]
  doc_index = np.pad(doc_index, (0, pad), constant_values=-1).reshape(num_rows, seq_len)
  is_token = doc_index >= 0
  # A piece starts at column 0 of a row and wherever the document changes within a row.
  starts = np.ones_like(is_token)
  starts[:, 1:] = doc_index[:, 1:] != doc_index[:, :-1]
  starts &= is_token
  segment_ids = np.cumsum(starts, axis=1) * is_token
  # Position = column - column where the current piece started.
  columns = np.broadcast_to(np.arange(seq_len), (num_rows, seq_len))
  piece_start = np.maximum.accumulate(np.where(starts, columns, 0), axis=1)
  positions = (columns - piece_start) * is_token
  return _as_batch(tokens, segment_ids, positions)


def pad_and_stack(token_docs: Sequence[Sequence[int]], *, seq_len: int, pad_id: int) -> Batch:
  """One document per row: truncated to `seq_len`, right-padded with `pad_id`.

  token_docs: num_docs lists of token ids. Tokens get segment 1 and positions 0..n-1; padding
  gets segment 0 and position 0. Returns int32 `input_ids`, `segment_ids`, `positions`, each
  [num_docs, seq_len].
  """
  _check_seq_len(seq_len)
  if len(token_docs) == 0:
    raise UserError("There are no documents to stack; check that the data source yields some.")
  input_ids = np.full((len(token_docs), seq_len), pad_id, dtype=np.int64)  # [docs, seq_len]
  lengths = np.zeros(len(token_docs), dtype=np.int64)
  for row, doc in enumerate(token_docs):
    doc = np.asarray(doc, dtype=np.int64)[:seq_len]
    input_ids[row, :doc.size] = doc
    lengths[row] = doc.size
  columns = np.arange(seq_len)[None, :]
  is_token = columns < lengths[:, None]                                   # [docs, seq_len]
  return _as_batch(input_ids, is_token, columns * is_token)


def _check_seq_len(seq_len: int) -> None:
  if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
    raise UserError(f"seq_len must be a positive integer (`train.seq_len`), got {seq_len!r}.")


def _as_batch(input_ids: np.ndarray, segment_ids: np.ndarray, positions: np.ndarray) -> Batch:
  return {"input_ids": input_ids.astype(np.int32),
          "segment_ids": segment_ids.astype(np.int32),
          "positions": positions.astype(np.int32)}
