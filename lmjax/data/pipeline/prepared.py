"""Pre-tokenized datasets: `lmjax data prepare` writes packed rows once, training reads them.

A prepared directory holds array_record shards of packed rows (one record per row, see
lmjax.data.rows), the tokenizer that made them and `prepared.json`:

    OUT_DIR/prepared.json               format, seq_len, packing ids, per-source row counts
    OUT_DIR/tokenizer/                  the tokenizer (training uses it, whatever data.tokenizer says)
    OUT_DIR/train-00000.array_record …  training rows, source by source
    OUT_DIR/eval-00000.array_record …   held-out rows: every round(1/data.eval_fraction)-th row
                                        of each source (its last row when it has fewer)

Preparing streams: documents are read one file (or TFDS dataset) at a time, tokenized in Grain
worker processes (`--workers`), packed exactly as on-the-fly training packs them and written as
they come, so memory holds a few files' tokens, never the corpus. Training reads rows by random
access; nothing is loaded up front.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import time
from collections.abc import Iterator

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from lmjax.data.config import DataConfig, DataSource, Source
from lmjax.data.examples.packing import Batch, RowPacker
from lmjax.data.pipeline.batches import packing_ids
from lmjax.data.pipeline.prefetch import prefetched
from lmjax.data.rows import ArrayRecordRows, encode_row
from lmjax.data.sources.documents import (ReadStats, Unit, describe_files, find_units, iter_sources,
                                 keep_tokenized, read_unit)
from lmjax.data.spec import BatchSpec, Objective
from lmjax.data.tokenize.setup import build_tokenizer, check_tokenizer
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.files import staged_directory

log = logging.getLogger(__name__)

META_FILE = "prepared.json"
FORMAT = "lmjax-prepared-rows-1"
TOKENIZER_DIR = "tokenizer"


def prepare(data: DataConfig, spec: BatchSpec, out_dir: str | os.PathLike, *,
            tokenizer_choice: str | None = None, workers: int = 0,
            rows_per_shard: int = 65536) -> dict:
  """Tokenizes and packs `data`'s sources into `out_dir` (new) as `spec` says (sequence length,
  objective, vocabulary size); returns the directory's metadata. `tokenizer_choice` as for
  `build_tokenizer`."""
  sources = data.sources
  if spec.objective is Objective.CLASSIFY:
    raise UserError("`lmjax data prepare` packs language-model rows; a classifier reads its "
                    "labelled examples directly (data.source jsonl, csv, parquet or tfds).")
  if spec.objective is Objective.SFT or spec.objective.is_preference:
    raise UserError(f"`lmjax data prepare` packs pre-training rows; instruction tuning and "
                    f"preference tuning (train.objective={spec.objective.value}) read their JSON "
                    f"Lines examples directly.")
  if any(s.source == Source.PREPARED.value for s in sources):
    raise UserError("`lmjax data prepare` reads documents; the config's data source is already "
                    "'prepared'. Point it at text/jsonl/parquet/tfds sources.")
  if rows_per_shard < 1:
    raise UserError(f"--rows-per-shard must be at least 1, got {rows_per_shard}.")
  units = [find_units(source=s.source, paths=s.paths) for s in sources]  # path errors first
  for i, (s, source_units) in enumerate(zip(sources, units)):
    if s.source not in (Source.BUILTIN.value, Source.TFDS.value, Source.HF_DATASETS.value):
      log.info("source %d: %s", i, describe_files(source_units))
  started = time.perf_counter()
  with staged_directory(out_dir) as staging:
    tokenizer = build_tokenizer(tokenizer_choice, iter_sources(data),  # a BPE trains on a stream
                                vocab_size=spec.vocab_size)
    check_tokenizer(spec, tokenizer)
    tokenizer.save(staging / TOKENIZER_DIR)
    bos_id, eos_id = packing_ids(spec.objective, tokenizer)
    period = max(2, round(1 / data.eval_fraction))
    with _Shards(staging, "train", rows_per_shard) as train, \
         _Shards(staging, "eval", rows_per_shard) as held_out:
      summaries = []
      for i, (source, source_units) in enumerate(zip(sources, units)):
        packer = RowPacker(seq_len=spec.seq_len, eos_id=eos_id, bos_id=bos_id)
        split = _HeldOut(period, train, held_out)
        stats, documents, tokens = ReadStats(), 0, 0
        for token_docs, unit_stats in _tokenized(data, source, source_units, tokenizer,
                                                 workers):
          stats.skipped += unit_stats.skipped
          stats.first_problem = stats.first_problem or unit_stats.first_problem
          stats.skipped_files += unit_stats.skipped_files
          documents += len(token_docs)
          tokens += sum(len(d) for d in token_docs)
          split.add(packer.add(token_docs))
        split.add(packer.finish())
        where = f"data.mixture[{i}]" if data.mixture else "the corpus"
        if stats.skipped_files:
          if not documents:
            raise UserError(f"{where} has no usable text ({stats.files_report()}): point "
                            f"data.paths at files that hold text, or give those some.")
          log.warning("source %d: %s", i, stats.files_report())
        split.finish(where=where, seq_len=spec.seq_len)
        summaries.append({"source": dataclasses.asdict(source), "documents": documents,
                          "tokens": tokens, "train_rows": split.num_train,
                          "eval_rows": split.num_eval, "skipped_records": stats.total,
                          "first_skipped": stats.first_problem,
                          "skipped_files": len(stats.skipped_files)})
        log.info("source %d: %d documents, %d tokens -> %d train + %d held-out rows%s", i,
                 documents, tokens, split.num_train, split.num_eval,
                 f"; skipped {stats.skipped} bad records (first: {stats.first_problem})"
                 if stats.skipped else "")
    # "head" keeps its name from when the objective was the model head's (the same values).
    meta = {"format": FORMAT, "seq_len": spec.seq_len, "head": spec.objective.value,
            "bos_id": bos_id, "eos_id": eos_id, "vocab_size": tokenizer.vocab_size,
            "train_files": train.files, "eval_files": held_out.files, "sources": summaries,
            "weights": [s.weight for s in data.mixture]}
    (staging / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
  log.info("wrote %s in %.1fs", out_dir, time.perf_counter() - started)
  return meta


@dataclasses.dataclass(frozen=True)
class _ReadAndTokenize:
  """One unit's documents as token arrays, with what reading left out: runs in Grain workers."""

  source: DataSource
  encoding_errors: str
  bad_records: str
  tokenizer: Tokenizer

  def __call__(self, unit: Unit) -> tuple[list[np.ndarray], ReadStats]:
    stats = ReadStats()
    s = self.source
    docs = read_unit(unit, source=s.source, field=s.field, split=s.split, data_dir=s.data_dir,
                     encoding_errors=self.encoding_errors, bad_records=self.bad_records,
                     stats=stats)
    token_docs = keep_tokenized(unit.name, self.tokenizer.encode_batch(docs), source=s.source,
                                stats=stats)
    return [np.asarray(d, np.int32) for d in token_docs], stats


def _tokenized(data: DataConfig, source: DataSource, units: list[Unit], tokenizer: Tokenizer,
               workers: int) -> Iterator[tuple[list[np.ndarray], ReadStats]]:
  """Each unit's token documents, in order; `workers` > 0 tokenizes in that many processes."""
  work = _ReadAndTokenize(source, data.encoding_errors.value, data.bad_records.value, tokenizer)
  if not workers:
    yield from map(work, units)
    return
  yield from prefetched(grain.MapDataset.source(units).map(work), workers=workers)


class _Shards:
  """Writes rows to `<prefix>-00000.array_record`, … , `rows_per_shard` rows a file."""

  def __init__(self, directory: pathlib.Path, prefix: str, rows_per_shard: int):
    self.directory, self.prefix, self.rows_per_shard = directory, prefix, rows_per_shard
    self.files: list[str] = []
    self._writer, self._in_shard = None, 0

  def write(self, row: bytes) -> None:
    if self._writer is None or self._in_shard == self.rows_per_shard:
      self.close()
      name = f"{self.prefix}-{len(self.files):05d}.array_record"
      self._writer, self._in_shard = ArrayRecordWriter(str(self.directory / name), "group_size:1"), 0
      self.files.append(name)
    self._writer.write(row)
    self._in_shard += 1

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self) -> _Shards:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class _HeldOut:
  """Routes one source's rows: every `period`-th to `held_out`, the others to `train`.

  The newest row waits until the next arrives, so that a source with fewer than `period` rows
  still holds out one row: its last.
  """

  def __init__(self, period: int, train: _Shards, held_out: _Shards):
    self.period, self.train, self.held_out = period, train, held_out
    self.num_train = self.num_eval = 0
    self._pending: bytes | None = None

  def add(self, rows: Batch) -> None:
    for i in range(len(rows["input_ids"])):
      if self._pending is not None:
        self._place(self._pending, to_eval=(self.num_train + self.num_eval + 1) % self.period == 0)
      self._pending = encode_row(rows, i)

  def finish(self, *, where: str, seq_len: int) -> None:
    total = self.num_train + self.num_eval + (self._pending is not None)
    if total < 2:
      raise UserError(
          f"{where} makes only {total} row(s) of train.seq_len={seq_len} tokens; training and "
          f"evaluation need at least 2: add data or lower train.seq_len.")
    self._place(self._pending, to_eval=self.num_eval == 0 or total % self.period == 0)
    self._pending = None

  def _place(self, row: bytes, *, to_eval: bool) -> None:
    if to_eval:
      self.held_out.write(row)
      self.num_eval += 1
    else:
      self.train.write(row)
      self.num_train += 1


@dataclasses.dataclass(frozen=True)
class Prepared:
  """An opened prepared directory."""

  path: pathlib.Path
  meta: dict
  tokenizer: Tokenizer
  train: ArrayRecordRows
  held_out: ArrayRecordRows


def open_prepared(path: str | os.PathLike) -> Prepared:
  """Reads a directory `prepare` wrote; UserError when it is not one."""
  path = pathlib.Path(os.path.expanduser(os.fspath(path)))
  meta_file = path / META_FILE
  if not meta_file.is_file():
    raise UserError(f"{path} is not a prepared dataset (it has no {META_FILE}): make one with "
                    f"`lmjax data prepare CONFIG {path}`, or fix `data.paths`.")
  meta = json.loads(meta_file.read_text(encoding="utf-8"))
  if meta.get("format") != FORMAT:
    raise UserError(f"{meta_file} has format {meta.get('format')!r}; this lmjax reads {FORMAT!r}. "
                    f"Prepare the data again with this version.")
  missing = [f for f in meta["train_files"] + meta["eval_files"] if not (path / f).is_file()]
  if missing:
    raise UserError(f"the prepared dataset {path} lacks {', '.join(missing)}: it was moved or "
                    f"damaged; prepare it again.")
  def rows(files: list[str], key: str) -> ArrayRecordRows:
    counts = [s[key] for s in meta["sources"]]
    return ArrayRecordRows([path / f for f in files], seq_len=meta["seq_len"],
                           source_ids=np.repeat(np.arange(len(counts)), counts))
  return Prepared(path, meta, Tokenizer.load(path / TOKENIZER_DIR),
                  rows(meta["train_files"], "train_rows"), rows(meta["eval_files"], "eval_rows"))
