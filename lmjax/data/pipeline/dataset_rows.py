"""An `hf_datasets` source's packed rows, built on demand from its memory-mapped Arrow files.

Packing is greedy over the source's whole token stream (lmjax.data.examples.packing), so where row r
starts depends on the length of every document before it. Opening a source therefore makes one
streamed pass over its texts, a batch of rows at a time, that tokenizes them and keeps only each
kept document's place: its dataset, its row number there and where its packed tokens end in
the stream (20 bytes a document). Texts and tokens are dropped as the pass goes.

Row r is then made when a batch asks for it: the documents its `seq_len` tokens overlap are
found by binary search, read by row number from the Arrow files, tokenized and cut exactly as
`pack_documents` would have cut them (`packed_row`). Rows are the same as packing everything
in memory gives, so the step-indexed pipeline (seeded epochs, exact resume, each process
asking only for the rows of its share of the batch) is unchanged; only the rows a process is
given are ever read after the pass, in that process or its Grain workers.

The price: a row tokenizes whole every document it overlaps, so a document many times longer
than `train.seq_len` is tokenized again for each row it spans. For corpora of such documents
(books), `lmjax data prepare` tokenizes once and training reads its rows as cheaply.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from lmjax.data.config import Source
from lmjax.data.examples.packing import packed_row
from lmjax.data.rows import ROW_FIELDS, Rows
from lmjax.data.sources.documents import ReadStats, keep_tokenized
from lmjax.data.sources.hf_datasets import TextColumn
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError


class DocumentIndex:
  """Where each kept document of a source lies: its column, its row there, its packed end.

  columns: the source's datasets, in order; tokenizer, seq_len, bos_id, eos_id: how it is
  packed. Built by `index_documents`; picklable (the columns reopen by path).
  """

  def __init__(self, columns: Sequence[TextColumn], *, tokenizer: Tokenizer, seq_len: int,
               bos_id: int | None, eos_id: int | None, doc_column: np.ndarray,
               doc_row: np.ndarray, ends: np.ndarray):
    self.columns, self.tokenizer, self.seq_len = list(columns), tokenizer, seq_len
    self.bos_id, self.eos_id = bos_id, eos_id
    self.doc_column = doc_column  # [docs] int32: the column each document is in
    self.doc_row = doc_row        # [docs] int64: its row number there
    self.ends = ends              # [docs] int64: where its packed tokens end in the stream

  def __len__(self) -> int:
    """The number of documents."""
    return len(self.ends)

  @property
  def num_rows(self) -> int:
    return -(-int(self.ends[-1]) // self.seq_len) if len(self) else 0

  @property
  def num_tokens(self) -> int:
    """Document tokens, without the bos/eos ids packing adds."""
    return int(self.ends[-1]) - len(self) * self._extra if len(self) else 0

  @property
  def _extra(self) -> int:
    return (self.bos_id is not None) + (self.eos_id is not None)

  def _begins(self, docs: np.ndarray) -> np.ndarray:
    """Where the packed tokens of documents `docs` [n] begin in the stream."""
    return np.where(docs > 0, self.ends[np.maximum(docs - 1, 0)], 0)

  def rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Packed rows `rows` [n] of the source: {field: [n, seq_len] int32}."""
    rows = np.asarray(rows, np.int64)
    starts = rows * self.seq_len                                       # [n] in the stream
    stops = np.minimum(starts + self.seq_len, self.ends[-1])
    first = np.searchsorted(self.ends, starts, side="right")          # the document of each
    last = np.searchsorted(self.ends, stops - 1, side="right")        # row's first, last token
    needed = np.unique(np.concatenate([np.arange(lo, hi + 1) for lo, hi in zip(first, last)]
                                      or [np.zeros(0, np.int64)]))
    tokens = dict(zip(needed.tolist(), self._tokenized(needed)))
    made = [packed_row([tokens[d] for d in range(lo, hi + 1)], skip=int(skip),
                       seq_len=self.seq_len, eos_id=self.eos_id, bos_id=self.bos_id)
            for skip, lo, hi in zip(starts - self._begins(first), first, last)]
    if not made:
      return {k: np.zeros((0, self.seq_len), np.int32) for k in ROW_FIELDS}
    return {k: np.concatenate([m[k] for m in made]) for k in ROW_FIELDS}

  def _tokenized(self, docs: np.ndarray) -> list[list[int]]:
    """The token ids of documents `docs` [n], read column by column, in `docs` order."""
    out: list[list[int]] = [[] for _ in docs]
    expected = self.ends[docs] - self._begins(docs) - self._extra   # [n] token counts
    for c in np.unique(self.doc_column[docs]):
      where = np.flatnonzero(self.doc_column[docs] == c)
      column = self.columns[c]
      encoded = self.tokenizer.encode_batch(column.texts(self.doc_row[docs[where]]))
      for i, ids in zip(where, encoded):
        if len(ids) != expected[i]:
          raise UserError(
              f"Row {self.doc_row[docs[i]]} of the dataset at {column.path!r} "
              f"[{column.split}] now tokenizes to {len(ids)} tokens, not the {expected[i]} it had "
              f"when the run opened it: the dataset changed while the run was reading it. Keep "
              f"a dataset unchanged while a run trains on it (save a new one elsewhere).")
        out[i] = ids
    return out


class DatasetRows(Rows):
  """Rows `start`, `start` + 1, … of a `DocumentIndex`, all of source `source_id`: each built
  when taken, never held."""

  def __init__(self, index: DocumentIndex, *, source_id: int, start: int = 0,
               stop: int | None = None):
    self.index, self.source_id, self.start = index, source_id, start
    stop = index.num_rows if stop is None else stop
    self.source_ids = np.full(stop - start, source_id, np.int32)

  def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return self.index.rows(self.start + np.asarray(indices, np.int64))

  def slice(self, start: int, stop: int) -> DatasetRows:
    return DatasetRows(self.index, source_id=self.source_id, start=self.start + start,
                       stop=self.start + stop)


def index_documents(columns: Sequence[TextColumn], *, tokenizer: Tokenizer, seq_len: int,
                    bos_id: int | None, eos_id: int | None, stats: ReadStats) -> DocumentIndex:
  """The `DocumentIndex` of a source's columns: one streamed pass, a batch of rows at a time.

  A document of no tokens is left out and counted in `stats`, as for every other source.
  """
  extra = (bos_id is not None) + (eos_id is not None)
  doc_column, doc_row, lengths = [], [], []
  for c, column in enumerate(columns):
    for rows, texts in column.batches():
      if not texts:
        continue
      encoded = tokenizer.encode_batch(texts)
      keep_tokenized(column.path, encoded, source=Source.HF_DATASETS, stats=stats)  # counts
      token_counts = np.fromiter(map(len, encoded), np.int64, len(encoded))
      kept = token_counts > 0
      doc_column.append(np.full(int(kept.sum()), c, np.int32))
      doc_row.append(rows[kept])
      lengths.append(token_counts[kept] + extra)
  if not lengths:
    raise UserError(
        f"The hf_datasets source {[c.path for c in columns]} has no text: every row of column "
        f"{columns[0].field!r} of split {columns[0].split!r} is empty or null. Set "
        f"`data.field` to the text column, or point `data.paths` at other datasets.")
  joined = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)
  return DocumentIndex(columns, tokenizer=tokenizer, seq_len=seq_len, bos_id=bos_id,
                       eos_id=eos_id, doc_column=joined(doc_column, np.int32),
                       doc_row=joined(doc_row, np.int64),
                       ends=np.cumsum(joined(lengths, np.int64)))


def iter_texts(columns: Sequence[TextColumn]) -> Iterator[str]:
  """Every document of the columns, in order, streamed (what a BPE tokenizer trains on)."""
  for column in columns:
    for _, texts in column.batches():
      yield from texts
