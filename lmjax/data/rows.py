"""Packed rows by random access: held in memory, or read from `lmjax data prepare` shards (or
built on demand from an hf_datasets source, lmjax.data.pipeline.dataset_rows), or several of these
joined.

A row is three int32 vectors of `seq_len` (`input_ids`, `segment_ids`, `positions`, see
lmjax.data.examples.packing) and the index of the data source it came from. Rows are grouped by
source: source ids are sorted, so `source_ranges` gives each source's rows as one contiguous range,
which is what weighted mixtures draw from.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import grain
import numpy as np

ROW_FIELDS = ("input_ids", "segment_ids", "positions")


class Rows:
  """Random access to packed rows: `take(indices)` -> {field: [len(indices), seq_len] int32}."""

  source_ids: np.ndarray   # [num_rows] int32, sorted

  def __len__(self) -> int:
    return len(self.source_ids)

  def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def source_ranges(self, num_sources: int) -> tuple[np.ndarray, np.ndarray]:
    """(first row, number of rows) of each source id 0..num_sources-1."""
    ids = np.arange(num_sources)
    starts = np.searchsorted(self.source_ids, ids)
    return starts, np.searchsorted(self.source_ids, ids, side="right") - starts


@dataclasses.dataclass
class MemoryRows(Rows):
  """Rows held as numpy arrays (what on-the-fly tokenization produces): ROW_FIELDS, and for
  labelled examples token_type_ids [num_rows, seq_len] and labels [num_rows]."""

  arrays: dict[str, np.ndarray]   # field -> [num_rows, ...] int32
  source_ids: np.ndarray

  def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[indices] for k, v in self.arrays.items()}

  @classmethod
  def concatenate(cls, parts: Sequence[MemoryRows]) -> MemoryRows:
    return cls({k: np.concatenate([p.arrays[k] for p in parts]) for k in parts[0].arrays},
               np.concatenate([p.source_ids for p in parts]))

  def slice(self, start: int, stop: int) -> MemoryRows:
    return MemoryRows({k: v[start:stop] for k, v in self.arrays.items()},
                      self.source_ids[start:stop])


class ConcatenatedRows(Rows):
  """Several `Rows` one after the other: a mixture whose sources are held in different ways
  (in memory, read on demand). Row i is row i - start of the part it falls in."""

  def __init__(self, parts: Sequence[Rows]):
    self.parts = list(parts)
    self.source_ids = np.concatenate([p.source_ids for p in self.parts])
    self._starts = np.cumsum([0] + [len(p) for p in self.parts])  # [parts + 1]

  def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    part = np.searchsorted(self._starts, indices, side="right") - 1  # [n]
    taken = {k: self.parts[k].take(indices[part == k] - self._starts[k])
             for k in np.unique(part)} or {0: self.parts[0].take(indices)}
    first = next(iter(taken.values()))
    out = {key: np.empty((len(indices),) + v.shape[1:], v.dtype) for key, v in first.items()}
    for k, arrays in taken.items():
      for key, v in arrays.items():
        out[key][part == k] = v
    return out


class ArrayRecordRows(Rows):
  """Rows in array_record shards, one record per row (`encode_row`); read only when taken.

  files: the shards in order (row i of the whole is record i of their concatenation).
  source_ids: [num_rows] the source of each row, sorted.
  """

  def __init__(self, files: Sequence[str | os.PathLike], *, seq_len: int, source_ids: np.ndarray):
    self.files = [os.fspath(f) for f in files]
    self.seq_len = seq_len
    self.source_ids = np.asarray(source_ids, np.int32)
    self._source = grain.sources.ArrayRecordDataSource(self.files)
    if len(self._source) != len(self.source_ids):
      raise ValueError(f"the shards hold {len(self._source)} rows, the metadata says "
                       f"{len(self.source_ids)}")

  def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    records = self._source.__getitems__([int(i) for i in indices])  # batched reads
    stacked = np.stack([decode_row(r, self.seq_len) for r in records])  # [n, 3, seq_len]
    return {k: stacked[:, i] for i, k in enumerate(ROW_FIELDS)}

  def __getstate__(self):  # picklable for Grain worker processes: reopen the files there
    return {"files": self.files, "seq_len": self.seq_len, "source_ids": self.source_ids}

  def __setstate__(self, state):
    self.__init__(state["files"], seq_len=state["seq_len"], source_ids=state["source_ids"])


def encode_row(arrays: dict[str, np.ndarray], i: int) -> bytes:
  """Row `i` of `arrays` as one record: int32 [3, seq_len] in ROW_FIELDS order."""
  return np.stack([arrays[k][i] for k in ROW_FIELDS]).astype("<i4").tobytes()


def decode_row(record: bytes, seq_len: int) -> np.ndarray:
  return np.frombuffer(record, "<i4").reshape(len(ROW_FIELDS), seq_len)
