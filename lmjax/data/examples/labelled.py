"""Labelled examples: a text (and, for pair tasks, a second text) with a label, per record.

Read from JSON Lines (fields), CSV/TSV and Parquet (columns) or TFDS (features): `data.field`
holds the text, `data.pair_field` the optional second text and `data.label_field` the label, a
string or an integer (compared as its digits, so 1 and "1" are one label). Every example keeps
where it came from ("file:line"), which errors about it name. Under `data.bad_records: skip` a
record without its text or label is left out and counted, as document sources do.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import numpy as np

from lmjax.data.config import BadRecords, EncodingErrors, Source
from lmjax.data.sources.documents import ReadStats, find_units
from lmjax.data.sources.file_readers import is_blank, read_text
from lmjax.data.sources.hf_datasets import read_columns
from lmjax.data.sources.tables import parse_csv, read_parquet
from lmjax.data.sources.tfds import read_tfds_examples
from lmjax.errors import UserError

LABELLED_SOURCES = (Source.JSONL, Source.CSV, Source.PARQUET, Source.TFDS, Source.HF_DATASETS)


@dataclasses.dataclass
class Examples:
  """Parallel lists, one entry per example."""

  texts: list[str]
  pairs: list[str] | None    # None for single-text tasks
  labels: list[str | None]   # label names as strings ("1" for the integer 1); None: unlabelled
  where: list[str]           # "file:line" (or a dataset's split and index)

  def __len__(self) -> int:
    return len(self.texts)

  def take(self, indices: Sequence[int]) -> Examples:
    pick = lambda values: [values[i] for i in indices]
    return Examples(pick(self.texts), None if self.pairs is None else pick(self.pairs),
                    pick(self.labels), pick(self.where))

  @staticmethod
  def concatenate(parts: Sequence[Examples]) -> Examples:
    join = lambda name: [v for p in parts for v in getattr(p, name)]
    pairs = None if parts[0].pairs is None else join("pairs")
    return Examples(join("texts"), pairs, join("labels"), join("where"))


@dataclasses.dataclass(frozen=True)
class Fields:
  """Which field holds what, and how to treat a bad record."""

  text: str = "text"
  pair: str | None = None
  label: str = "label"
  encoding_errors: EncodingErrors = EncodingErrors.STRICT
  bad_records: BadRecords = BadRecords.ERROR
  labels_required: bool = True         # False: a record without a label reads as unlabelled

  def __post_init__(self):  # their config spellings ("skip") work too
    object.__setattr__(self, "encoding_errors", EncodingErrors(self.encoding_errors))
    object.__setattr__(self, "bad_records", BadRecords(self.bad_records))


def read_examples(source: str, paths: Sequence[str], *, fields: Fields, split: str = "train",
                  data_dir: str | None = None, stats: ReadStats | None = None) -> Examples:
  """Every example of a labelled source, in order (files in `data.paths` order)."""
  kind = Source(source) if source in {s.value for s in Source} else None
  if kind not in LABELLED_SOURCES:
    raise UserError(
        f"data.source={source!r} holds no labels; a classification model trains on labelled "
        f"records: data.source {', '.join(s.value for s in LABELLED_SOURCES)} with "
        f"data.field (text) and data.label_field (label).")
  stats = stats if stats is not None else ReadStats()
  parts = []
  for unit in find_units(source=kind, paths=paths):
    if unit.globbed and kind not in (Source.TFDS, Source.HF_DATASETS) and is_blank(unit.name):
      stats.skip_file(unit.name, "empty")  # a glob's empty file is left out
                                           # (lmjax.data.sources.documents)
      continue
    parts.append(_read_unit(unit.name, kind, fields=fields, split=split, data_dir=data_dir,
                            stats=stats))
  examples = Examples.concatenate(parts) if parts else Examples([], None, [], [])
  if not len(examples):
    raise UserError(f"The {kind.value} source yielded no labelled examples from `data.paths` "
                    f"{list(paths)}" + (" (all were skipped)" if stats.total else "") + ".")
  return examples


def _read_unit(unit: str, kind: Source, *, fields: Fields, split: str, data_dir: str | None,
               stats: ReadStats) -> Examples:
  skip = stats.skip if fields.bad_records is BadRecords.SKIP else None
  if kind is Source.TFDS:
    texts, pairs, labels, where = read_tfds_examples(
        unit, split=split, data_dir=data_dir, field=fields.text, pair_field=fields.pair,
        label_field=fields.label, errors=fields.encoding_errors.value, skip=skip)
    return _checked(texts, pairs, labels, where, fields=fields, skip=skip)
  columns = [c for c in (fields.text, fields.pair, fields.label) if c is not None]
  if kind is Source.JSONL:
    return _read_jsonl(unit, fields=fields, skip=skip)
  if kind is Source.HF_DATASETS:
    values, where = read_columns(unit, split=split, columns=columns,
                                 text_columns=[c for c in (fields.text, fields.pair) if c])
  elif kind is Source.CSV:
    values, where = parse_csv(read_text(unit, errors=fields.encoding_errors), file=unit,
                              columns=columns)
  else:
    values, where = read_parquet(unit, columns=columns,
                                 text_columns=[c for c in (fields.text, fields.pair) if c])
  return _checked(values[fields.text], values.get(fields.pair), values[fields.label], where,
                  fields=fields, skip=skip)


def _read_jsonl(file: str, *, fields: Fields, skip) -> Examples:
  texts, pairs, labels, where = [], [] if fields.pair else None, [], []
  for number, line in enumerate(read_text(file, errors=fields.encoding_errors).split("\n"), 1):
    if not line.strip():
      continue
    here = f"{file}:{number}"
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      _bad(f"Line {here} is not valid JSON ({e.msg} at column {e.colno})", skip)
      continue
    if not isinstance(record, dict):
      _bad(f"Line {here} holds a JSON {type(record).__name__}, not an object", skip)
      continue
    required = (fields.text, fields.pair, fields.label if fields.labels_required else None)
    missing = [f for f in required if f and f not in record]
    if missing:
      _bad(f"Line {here} has no field {missing[0]!r} (keys present: "
           f"{', '.join(map(repr, record)) or 'none'}); set data.field / data.pair_field / "
           f"data.label_field to its keys", skip)
      continue
    texts.append(record[fields.text])
    labels.append(record.get(fields.label))
    where.append(here)
    if pairs is not None:
      pairs.append(record[fields.pair])
  return _checked(texts, pairs, labels, where, fields=fields, skip=skip)


def _checked(texts, pairs, labels, where, *, fields: Fields, skip) -> Examples:
  """The examples whose texts are strings and labels strings or integers (others: an error
  naming the record, or skipped)."""
  keep = []
  for i, here in enumerate(where):
    unlabelled = labels[i] is None and not fields.labels_required
    problem = _problem(texts[i], fields.text, "a string") or (
        pairs is not None and _problem(pairs[i], fields.pair, "a string")) or (
            not unlabelled and _label_problem(labels[i], fields.label))
    if problem:
      _bad(f"{here}: {problem}", skip)
    else:
      keep.append(i)
  pick = lambda values: [values[i] for i in keep]
  return Examples(pick(texts), None if pairs is None else pick(pairs),
                  [None if labels[i] is None else label_name(labels[i]) for i in keep],
                  pick(where))


def _problem(value, field: str, kind: str) -> str | None:
  if isinstance(value, str):
    return None
  return f"field {field!r} holds {'null' if value is None else type(value).__name__}, not {kind}"


def _label_problem(value, field: str) -> str | None:
  if isinstance(value, str) and value.strip():
    return None
  if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
    return None
  shown = "null" if value is None else repr(value)
  return f"the label (field {field!r}) is {shown}; labels are non-empty strings or integers"


def label_name(value) -> str:
  """A label as the string labels are compared by: integers as their digits."""
  return value if isinstance(value, str) else str(int(value))


def _bad(problem: str, skip) -> None:
  if skip is None:
    raise UserError(f"{problem}. Fix that record, or set `data.bad_records: skip` to leave such "
                    f"records out.")
  skip(problem)
