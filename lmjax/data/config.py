"""The `data` section of a run config: where documents come from and how they are read.

The data layer owns its section (the run config in lmjax.config assembles the sections), so
that reading data needs nothing from the model or the trainer.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, ClassVar, Mapping

from lmjax.errors import UserError
from lmjax.ranges import POSITIVE, Range, check_ranges
from lmjax.storage import check_path, url_scheme


class Source(enum.Enum):
  """The kinds of document source (`data.source`)."""

  BUILTIN = "builtin"  # CPython's documentation topics, shipped with every Python
  TEXT = "text"        # one document per file
  JSONL = "jsonl"      # one document per line, from a string field of a JSON object
  CSV = "csv"          # one document per row, from a column (a header row names them); TSV
                       # for files ending .tsv or .tab
  PARQUET = "parquet"  # one document per row, from a string column (needs pyarrow)
  TFDS = "tfds"        # one document per example, from a text feature of a TFDS dataset
  HF_DATASETS = "hf_datasets"  # one document per row of a Hugging Face `datasets` split (local)
  PREPARED = "prepared"  # packed rows that `lmjax data prepare` wrote
                         # (lmjax.data.pipeline.prepared)


class EncodingErrors(enum.Enum):
  """What to do with bytes that are not UTF-8 (`data.encoding_errors`)."""

  STRICT = "strict"    # a UserError naming the file and the byte offset
  REPLACE = "replace"  # undecodable bytes become U+FFFD


class BadRecords(enum.Enum):
  """What to do with one unreadable record (`data.bad_records`): a JSON Lines line that is not a
  JSON object with a string field, or a line or TFDS example holding bytes that are not UTF-8
  (under `data.encoding_errors: strict`)."""

  ERROR = "error"      # stop with a UserError naming the file and line
  SKIP = "skip"        # leave the record out, count it (logged, and in metrics.jsonl)


@dataclasses.dataclass(frozen=True)
class DataSource:
  """One component of a weighted mixture (`data.mixture`)."""

  RANGES: ClassVar[Mapping[str, Range]] = {"weight": POSITIVE}

  source: str = "builtin"
  paths: tuple[str, ...] = ()
  field: str = "text"
  split: str = "train"
  data_dir: str | None = None
  weight: float = 1.0                  # relative share of training rows drawn from it


_DATA_RANGES = {
    "workers": Range(0, why="0: a background thread, else a number of worker processes"),
    "eval_fraction": Range(0, 1, low_open=True, high_open=True),
}


@dataclasses.dataclass(frozen=True)
class DataConfig:
  RANGES: ClassVar[Mapping[str, Range]] = _DATA_RANGES  # lmjax.ranges: checked on creation

  source: str = "builtin"              # builtin (CPython's pydoc) | text | jsonl | csv | parquet
                                       # | tfds | prepared (a directory `lmjax data prepare` wrote)
  paths: tuple[str, ...] = ()          # files or globs; for tfds: names name[/config][:version]
  field: str = "text"                  # JSON field, CSV/Parquet column or TFDS feature: the text
  split: str = "train"                 # TFDS split (slicing works: train[:90%])
  data_dir: str | None = None          # TFDS data_dir (default: TFDS's own)
  tokenizer: str | None = None         # byte | bpe (trained on the corpus) | a tokenizer.json,
                                       # sentencepiece .model or
                                       # HF tokenizer dir; unset: model.init_from's, else bpe
  # Fine-tuning (model.init_from) uses the source's tokenizer; another one (data.tokenizer) is
  # refused unless this says the replacement is meant, and then it must have as many tokens.
  replace_tokenizer: bool = False
  encoding_errors: EncodingErrors = EncodingErrors.STRICT
  bad_records: BadRecords = BadRecords.ERROR  # error | skip (and count) a bad JSON Lines record
  workers: int = 0                     # Grain worker processes assembling batches (0: a thread)
  eval_fraction: float = 0.05          # packed rows held out for evaluation (of each source)
  # A weighted mixture replaces source/paths/field: [{source, paths, field, weight}, ...]; each
  # training row comes from source i with probability weight_i / sum(weights).
  mixture: tuple[DataSource, ...] = ()
  # Labelled examples (the classify objective: a model with a classification head).
  label_field: str = "label"           # the field/column holding each example's label
  pair_field: str | None = None        # a second text (pair tasks: [CLS] a [SEP] b [SEP])
  labels: tuple[Any, ...] = ()         # the label set, in index order; empty: the training
                                       # split's labels, sorted (saved in the run's config.yaml)
  eval_paths: tuple[str, ...] = ()     # held-out examples from these files instead of a
  eval_split: str | None = None        # stratified eval_fraction of the training ones (TFDS:
                                       # a split, e.g. test)
  # Instruction tuning (train.objective=sft): "default" (ChatML), a Jinja file, or a directory
  # with a tokenizer_config.json; None: the tokenizer's own (data.tokenizer's directory), else
  # the default.
  chat_template: str | None = None

  def __post_init__(self):
    object.__setattr__(self, "labels", _label_names(self.labels))
    check_ranges(self, "data", self.RANGES)
    for i, component in enumerate(self.mixture):
      check_ranges(component, f"data.mixture[{i}]", component.RANGES)
    if self.mixture and (self.paths or self.source != DataConfig.source):
      raise UserError("data.mixture replaces data.source and data.paths: give the sources inside "
                      "the mixture only.")
    for component in self.sources:  # TFDS and HF dataset names are not paths
      if component.source not in (Source.TFDS.value, Source.HF_DATASETS.value):
        check_path(component.paths, what="data.paths")
      if url_scheme(component.data_dir or "") == "s3":
        raise UserError(
            f"data.data_dir {component.data_dir}: TFDS's array_record shards are read by "
            f"array_record's own reader, which opens local files and gs:// only: copy the "
            f"prepared dataset to a local directory (aws s3 cp --recursive) or to gs://, or "
            f"mount the bucket (mountpoint-s3 or s3fs-fuse) and pass the mounted path.")
      check_path(component.data_dir, what="data.data_dir")
    check_path(self.eval_paths, what="data.eval_paths")

  @property
  def sources(self) -> tuple[DataSource, ...]:
    """The mixture, or the single source as a one-component mixture."""
    return self.mixture or (DataSource(source=self.source, paths=self.paths, field=self.field,
                                       split=self.split, data_dir=self.data_dir),)


def _label_names(labels: tuple[Any, ...]) -> tuple[str, ...]:
  """`data.labels` as the strings examples' labels are compared with (integers as digits)."""
  names = []
  for i, label in enumerate(labels):
    if isinstance(label, bool) or not isinstance(label, (str, int)):
      raise UserError(f"data.labels[{i}]={label!r}: labels are strings or integers.")
    names.append(str(label))
  if len(set(names)) != len(names):
    raise UserError(f"data.labels={list(labels)} names a label twice.")
  if len(names) == 1:
    raise UserError(f"data.labels={list(labels)} has one label; classification needs two or more.")
  return tuple(names)
