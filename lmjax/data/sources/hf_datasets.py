"""Hugging Face `datasets` as a source (`data.source: hf_datasets`), read from local disk.

Each `data.paths` entry is a directory written by `Dataset.save_to_disk` /
`DatasetDict.save_to_disk`, or what `datasets.load_dataset` reads locally: a data file (.jsonl,
.json, .csv, .tsv, .parquet, .txt, .arrow) or a directory of them. `data.split` picks the split
(slicing works: `train[:90%]`), `data.field` the text column (and `data.label_field`,
`data.pair_field` for labelled examples). The Arrow files are memory-mapped: a `TextColumn` reads
a batch of rows at a time when streamed, or just the rows asked for by number, which is how
training reads documents on demand (lmjax.data.pipeline.dataset_rows). Labelled examples are read
whole, as every labelled source is. Nothing is downloaded: the Hub is not consulted.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from lmjax.errors import UserError
from lmjax.extras import require

# load_dataset's builder for a data file, by suffix
_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
             ".txt": "text", ".arrow": "arrow"}
_ROWS_PER_READ = 4096


def _datasets():
  return require("datasets", extra="datasets", needed_for="data.source: hf_datasets")


def _is_saved(path: pathlib.Path) -> bool:
  return path.is_dir() and any((path / name).is_file() for name in
                               ("dataset_dict.json", "state.json", "dataset_info.json"))


def open_split(path: str, *, split: str):
  """The `split` of the dataset at `path` (module docstring) as a memory-mapped Dataset."""
  datasets = _datasets()
  where = pathlib.Path(os.path.expanduser(path))
  if not where.exists():
    raise UserError(f"data.paths names {path!r}, which does not exist: give a directory written "
                    f"by save_to_disk, or local data files for load_dataset.")
  base, _, _ = split.partition("[")
  try:
    if _is_saved(where):
      saved = datasets.load_from_disk(str(where))
      if isinstance(saved, datasets.DatasetDict):
        if base not in saved:
          raise UserError(f"The dataset at {path!r} has no split {base!r}; it has "
                          f"{', '.join(map(repr, saved))}. Set `data.split` to one of them.")
        dataset = saved[base]
      elif base != "train":
        raise UserError(f"The dataset at {path!r} is a single split (saved from a Dataset, not "
                        f"a DatasetDict), so `data.split` {split!r} names nothing: set it to "
                        f"'train'.")
      else:
        dataset = saved
      return dataset if base == split else dataset.select(_slice(dataset, split))
    if where.is_file():
      builder = _BUILDERS.get(where.suffix.lower())
      if builder is None:
        raise UserError(f"data.paths names {path!r}, which datasets cannot read as a data file "
                        f"(suffixes: {', '.join(sorted(_BUILDERS))}).")
      kwargs = {"delimiter": "\t"} if where.suffix.lower() == ".tsv" else {}
      return datasets.load_dataset(builder, data_files={"train": str(where)}, split=split,
                                   **kwargs)
    return datasets.load_dataset(str(where), split=split)
  except UserError:
    raise
  except IndexError:  # datasets cannot open a split saved with no rows (no Arrow shard)
    raise UserError(f"The dataset at {path!r} holds no rows: give a dataset (or split) with "
                    f"some, or another data.paths.") from None
  except ValueError as e:  # an unknown split names the ones there are
    if "split" in str(e).lower():
      raise UserError(f"The dataset at {path!r} has no split {split!r} ({e}). Set `data.split` "
                      f"to one of its splits.") from None
    raise UserError(f"datasets could not read {path!r}: {e}") from None
  except (OSError, FileNotFoundError, TypeError) as e:
    raise UserError(f"datasets could not read {path!r} ({type(e).__name__}: {e}): give a "
                    f"directory written by save_to_disk or local data files.") from None


def _slice(dataset, split: str) -> range:
  """The rows of a sliced split name (train[:90%], train[10:20]) of a saved DatasetDict."""
  datasets = _datasets()
  instruction = datasets.ReadInstruction.from_spec(split)
  absolute = instruction.to_absolute({split.partition("[")[0]: dataset.num_rows})[0]
  return range(absolute.from_ or 0, absolute.to if absolute.to is not None else dataset.num_rows)


def _check_columns(dataset, path: str, columns: Sequence[str], text_columns: Sequence[str],
                   key: str) -> None:
  names = list(dataset.column_names)
  for column in columns:
    if column not in names:
      raise UserError(f"The dataset at {path!r} has no column {column!r} (columns: "
                      f"{', '.join(map(repr, names)) or 'none'}). Set `{key}` (and the other "
                      f"column keys) to columns of the dataset.")
  for column in text_columns:
    feature = dataset.features[column]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
      raise UserError(f"Column {column!r} of the dataset at {path!r} holds "
                      f"{getattr(feature, 'dtype', None) or type(feature).__name__}, not "
                      f"strings. Set `{key}` to a text column.")


def read_columns(path: str, *, split: str, columns: Sequence[str],
                 text_columns: Sequence[str] = (), key: str = "data.field"
                 ) -> tuple[dict[str, list], list[str]]:
  """The named columns of a dataset split (nulls as None), read in batches of rows, and each
  row's "path[split] row N"."""
  dataset = open_split(path, split=split)
  columns = list(dict.fromkeys(columns))
  _check_columns(dataset, path, columns, text_columns, key)
  values: dict[str, list] = {c: [] for c in columns}
  view = dataset.select_columns(columns)
  for start in range(0, view.num_rows, _ROWS_PER_READ):
    batch = view[start:start + _ROWS_PER_READ]  # one slice of the memory-mapped Arrow table
    for c in columns:
      values[c].extend(batch[c])
  where = [f"{path}[{split}] row {n}" for n in range(view.num_rows)]
  return values, where


class TextColumn:
  """The text column `field` of one dataset split, opened (and checked) when first read.

  Its documents are the column's non-empty strings, known by their row numbers in the split.
  Picklable: a Grain worker process reopens the memory-mapped files by path, never copies them.
  """

  def __init__(self, path: str, *, split: str, field: str):
    self.path, self.split, self.field = path, split, field
    self._view = None  # the split with only `field`: a view of the memory-mapped table

  def _opened(self):
    if self._view is None:
      dataset = open_split(self.path, split=self.split)
      _check_columns(dataset, self.path, [self.field], [self.field], "data.field")
      self._view = dataset.select_columns([self.field])
    return self._view

  def check(self) -> TextColumn:
    """Opens the split now, so that a missing split or column is reported before any work."""
    self._opened()
    return self

  def batches(self) -> Iterator[tuple[np.ndarray, list[str]]]:
    """The documents in row order, `_ROWS_PER_READ` rows at a time: (row numbers [n], texts)."""
    view = self._opened()
    for start in range(0, view.num_rows, _ROWS_PER_READ):
      values = view[start:start + _ROWS_PER_READ][self.field]  # one slice of the Arrow table
      kept = [n for n, text in enumerate(values) if text is not None and text.strip()]
      yield np.asarray(kept, np.int64) + start, [values[n] for n in kept]

  def texts(self, rows: np.ndarray) -> list[str]:
    """The texts of rows `rows` [n] (any order, repeats allowed), read from the Arrow files."""
    return self._opened()[[int(n) for n in rows]][self.field]

  def __getstate__(self):
    return {"path": self.path, "split": self.split, "field": self.field}

  def __setstate__(self, state):
    self.__init__(state["path"], split=state["split"], field=state["field"])


def read_hf_texts(path: str, *, split: str, field: str) -> list[str]:
  """The documents of a dataset split: the non-empty strings of column `field`."""
  return [text for _, texts in TextColumn(path, split=split, field=field).batches()
          for text in texts]
