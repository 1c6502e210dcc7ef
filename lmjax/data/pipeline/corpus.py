"""A run's corpus: documents read, tokenized and packed into rows, or prepared rows opened.

Each source's last `data.eval_fraction` of packed rows (at least one) is held out for
evaluation; rows carry the index of their source, sorted, which weighted mixtures draw by.
Rows are held in memory, except an hf_datasets source's: those are built when a batch asks for
them, from its memory-mapped Arrow files (lmjax.data.pipeline.dataset_rows).

Building one says what it does in a few log lines before the first step: the files each source
found and their size, the tokenizer it trains (if it trains one), what was left out (one line
each for bad records and for empty or unusable files, see lmjax.data.sources.documents) and the
documents kept and rows packed.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Iterable

import numpy as np

from lmjax.data.config import DataConfig, DataSource, Source
from lmjax.data.examples.classification import encode_examples, example_tokenizer, read_labelled
from lmjax.data.examples.preference import FIELDS as PAIR_FIELDS, load_pairs
from lmjax.data.examples.prompts import FIELDS as PROMPT_FIELDS, Prompts, load_prompts
from lmjax.data.examples.sft import load_sft, read_sft_examples
from lmjax.data.pipeline.batches import BatchSource, pack_for, packing_ids
from lmjax.data.pipeline.dataset_rows import DatasetRows, DocumentIndex, index_documents, iter_texts
from lmjax.data.pipeline.prepared import Prepared, open_prepared
from lmjax.data.rows import ArrayRecordRows, ConcatenatedRows, MemoryRows, Rows
from lmjax.data.sources.documents import (ReadStats, describe_files, find_units, keep_tokenized,
                                 read_units)
from lmjax.data.sources.hf_datasets import TextColumn
from lmjax.data.spec import BatchSpec, Objective
from lmjax.data.tokenize.setup import build_tokenizer, check_tokenizer
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Packed training and held-out rows, the tokenizer that made them and the mixture weights."""

  tokenizer: Tokenizer
  train: Rows
  held_out: Rows
  weights: tuple[float, ...] = ()   # by source id; () for one source
  skipped_records: int = 0          # bad records and unusable files left out
                                    # (lmjax.data.sources.documents)
  labels: tuple[str, ...] = ()      # classify: the label names, by index
  truncated: int = 0                # classify: examples cut to train.seq_len
  prompts: Prompts | None = None    # grpo: the prompts (train and held_out then hold no rows)

  def batch_sources(self, spec: BatchSpec) -> tuple[BatchSource, BatchSource]:
    """Train and eval BatchSources (the held-out rows draw with seed + 1, unmixed)."""
    held_out = dataclasses.replace(spec, seed=spec.seed + 1)
    return (BatchSource(self.train, spec, self.tokenizer, self.weights),
            BatchSource(self.held_out, held_out, self.tokenizer))


def load_corpus(data: DataConfig, spec: BatchSpec, *, tokenizer: Tokenizer | None = None,
                tokenizer_choice: str | None = None) -> Corpus:
  """Reads, tokenizes and packs the corpus, or opens prepared rows (`data.source: prepared`).

  Pass `tokenizer` to reuse one (a resumed run keeps its own); otherwise the one
  `tokenizer_choice` names is built (see `build_tokenizer`; a BPE trains on all the text).
  """
  if spec.objective is Objective.CLASSIFY:
    return _load_labelled(data, spec, tokenizer, tokenizer_choice)
  if spec.objective in (Objective.SFT, Objective.GRPO) or spec.objective.is_preference:
    return _load_instructions(data, spec, tokenizer, tokenizer_choice)
  kinds = {s.source == Source.PREPARED.value for s in data.sources}
  if kinds == {True}:
    return _open_prepared(data, spec, tokenizer)
  if len(kinds) > 1:
    raise UserError("data.mixture mixes 'prepared' sources with document sources; prepare the "
                    "others too (lmjax data prepare), or tokenize all of them on the fly.")
  stats = ReadStats()
  # hf_datasets sources are read on demand (lmjax.data.pipeline.dataset_rows): opened and checked
  # here,
  # indexed once the tokenizer is known; the others are read whole and packed in memory.
  columns = {i: _text_columns(s) for i, s in enumerate(data.sources)
             if s.source == Source.HF_DATASETS.value}
  read = [([], []) if i in columns else _read_source(i, s, data, stats)
          for i, s in enumerate(data.sources)]
  tokenizer = tokenizer or build_tokenizer(tokenizer_choice, _documents(read, columns),
                                           vocab_size=spec.vocab_size)
  check_tokenizer(spec, tokenizer)
  bos_id, eos_id = packing_ids(spec.objective, tokenizer)
  token_sources = [
      index_documents(columns[i], tokenizer=tokenizer, seq_len=spec.seq_len, bos_id=bos_id,
                      eos_id=eos_id, stats=stats) if i in columns else
      _tokenized(names, per_unit, tokenizer, source=s.source, stats=stats)
      for i, (s, (names, per_unit)) in enumerate(zip(data.sources, read))]
  _report_skipped(stats)
  train, held_out = [], []
  for i, token_docs in enumerate(token_sources):
    named = f"data.mixture[{i}]" if data.mixture else "the corpus"
    if not len(token_docs):
      raise UserError(f"every document of {named} tokenizes to no tokens: check "
                      f"data.tokenizer, or point data.paths at other files.")
    if isinstance(token_docs, DocumentIndex):
      rows = DatasetRows(token_docs, source_id=i)
    else:
      packed = pack_for(spec.objective, tokenizer, token_docs, spec.seq_len)
      rows = MemoryRows(packed, np.full(len(packed["input_ids"]), i, np.int32))
    num_rows = len(rows)
    if num_rows < 2:
      raise UserError(
          f"{named} makes only {num_rows} row(s) of train.seq_len={spec.seq_len} tokens; "
          f"training and evaluation need at least 2: add data or lower train.seq_len.")
    num_eval = min(max(1, round(num_rows * data.eval_fraction)), num_rows - 1)
    train.append(rows.slice(0, num_rows - num_eval))
    held_out.append(rows.slice(num_rows - num_eval, num_rows))
  train, held_out = _joined(train), _joined(held_out)
  log.info("kept %d documents (%d tokens), packed into %d rows of %d tokens: %d to train on, "
           "%d held out", sum(map(len, token_sources)),
           sum(t.num_tokens if isinstance(t, DocumentIndex) else sum(map(len, t))
               for t in token_sources), len(train) + len(held_out),
           spec.seq_len, len(train), len(held_out))
  return Corpus(tokenizer, train, held_out, tuple(s.weight for s in data.mixture), stats.total)


def _read_source(i: int, s: DataSource, data: DataConfig, stats: ReadStats
                 ) -> tuple[list[str], list[list[str]]]:
  """One source's unit names and the documents of each, saying in the log what it found."""
  units = find_units(source=s.source, paths=s.paths)
  if s.source not in (Source.BUILTIN.value, Source.TFDS.value, Source.HF_DATASETS.value):
    named = f"data.mixture[{i}].paths" if data.mixture else "data.paths"
    log.info("reading %s from %s %s", describe_files(units), named, list(s.paths))
  per_unit = read_units(units, source=s.source, paths=s.paths, field=s.field, split=s.split,
                        data_dir=s.data_dir, encoding_errors=data.encoding_errors,
                        bad_records=data.bad_records, stats=stats)
  return [u.name for u in units], per_unit


def _text_columns(s: DataSource) -> list[TextColumn]:
  """An hf_datasets source's text columns, opened: a missing split or column is said now."""
  return [TextColumn(u.name, split=s.split, field=s.field).check()
          for u in find_units(source=s.source, paths=s.paths)]


def _documents(read: list[tuple[list[str], list[list[str]]]],
               columns: dict[int, list[TextColumn]]) -> Iterable[str]:
  """Every source's documents in order, for a BPE tokenizer to train on: a list, or a stream
  when some source is read on demand (its texts are never all in memory)."""
  if not columns:
    return [d for _, per_unit in read for docs in per_unit for d in docs]
  return itertools.chain.from_iterable(
      iter_texts(columns[i]) if i in columns else (d for docs in per_unit for d in docs)
      for i, (_, per_unit) in enumerate(read))


def _joined(parts: list[Rows]) -> Rows:
  """The sources' rows one after the other (in one set of arrays when all are in memory)."""
  if all(isinstance(p, MemoryRows) for p in parts):
    return MemoryRows.concatenate(parts)
  return parts[0] if len(parts) == 1 else ConcatenatedRows(parts)


def _tokenized(names: list[str], per_unit: list[list[str]], tokenizer: Tokenizer, *,
               source: str, stats: ReadStats) -> list[list[int]]:
  """A source's documents as token lists, in one batch (the tokenizer runs it in parallel),
  without those of no tokens (counted in `stats`, see `keep_tokenized`)."""
  flat = tokenizer.encode_batch([d for docs in per_unit for d in docs])
  token_docs, start = [], 0
  for name, docs in zip(names, per_unit):
    token_docs += keep_tokenized(name, flat[start:start + len(docs)], source=source, stats=stats)
    start += len(docs)
  return token_docs


def _report_skipped(stats: ReadStats) -> None:
  """One warning for the bad records left out, one for the files: never one per file."""
  if stats.skipped:
    log.warning("skipped %d bad record(s) (data.bad_records=skip); the first: %s",
                stats.skipped, stats.first_problem)
  if stats.skipped_files:
    log.warning("%s", stats.files_report())


def _load_instructions(data: DataConfig, spec: BatchSpec, tokenizer: Tokenizer | None,
                       tokenizer_choice: str | None) -> Corpus:
  """Instruction examples (lmjax.data.examples.sft), preference pairs (.preference) or GRPO
  prompts (.prompts), with the tokenizer given, or the one chosen (a BPE trains on their
  text)."""
  stats = ReadStats()
  pairs = spec.objective.is_preference
  fields = {Objective.SFT: None, Objective.GRPO: PROMPT_FIELDS}.get(spec.objective, PAIR_FIELDS)
  rows = (read_sft_examples(data, stats, objective=spec.objective.value, fields=fields)
          if fields else read_sft_examples(data, stats))
  if tokenizer is None:
    texts = [" ".join(str(v) for v in _texts(row)) for row, _ in rows]
    tokenizer = build_tokenizer(tokenizer_choice, texts, vocab_size=spec.vocab_size)
  check_tokenizer(spec, tokenizer)
  template = data.chat_template
  if template is None and tokenizer_choice and os.path.isdir(tokenizer_choice):
    template = tokenizer_choice  # the tokenizer's own chat template, when it has one
  if spec.objective is Objective.GRPO:
    prompts = load_prompts(data, rows, stats, tokenizer, seq_len=spec.seq_len,
                           max_new_tokens=spec.max_new_tokens, template_source=template)
    _report_skipped(stats)
    none = MemoryRows({}, np.zeros(0, np.int32))
    return Corpus(tokenizer, none, none, (), stats.total, prompts=prompts)
  if pairs:
    train, held_out, truncated = load_pairs(data, rows, stats, tokenizer, seq_len=spec.seq_len,
                                            template_source=template)
  else:
    train, held_out, truncated = load_sft(data, rows, stats, tokenizer, seq_len=spec.seq_len,
                                          template_source=template)
  _report_skipped(stats)
  if truncated:
    log.warning("%d %s were longer than train.seq_len=%d and were cut at the end", truncated,
                "preference pair(s)" if pairs else "instruction example(s)", spec.seq_len)
  return Corpus(tokenizer, train, held_out, (), stats.total, truncated=truncated)


def _texts(row: dict) -> list:
  def contents(value):
    if isinstance(value, list):
      return [m.get("content", "") for m in value if isinstance(m, dict)]
    return [value] if isinstance(value, str) else []
  return [t for k in ("messages", "prompt", "completion", "chosen", "rejected")
          for t in contents(row.get(k))]


def _load_labelled(data: DataConfig, spec: BatchSpec, tokenizer: Tokenizer | None,
                   tokenizer_choice: str | None) -> Corpus:
  """Labelled examples one per row (lmjax.data.examples.classification)."""
  if data.source == Source.PREPARED.value:
    raise UserError("prepared data holds packed language-model rows; a classifier reads its "
                    "labelled source directly (jsonl, csv, parquet or tfds).")
  stats = ReadStats()
  train, held_out, labels = read_labelled(data, spec, stats)
  _report_skipped(stats)
  if tokenizer is None:
    texts = train.texts + (train.pairs or [])
    tokenizer = build_tokenizer(tokenizer_choice, texts, vocab_size=spec.vocab_size)
  tokenizer = example_tokenizer(tokenizer, spec)
  check_tokenizer(spec, tokenizer)
  (train_rows, train_cut), (held_rows, held_cut) = (
      encode_examples(tokenizer, part, labels, spec) for part in (train, held_out))
  if train_cut or held_cut:
    log.warning("truncated %d of %d examples to train.seq_len=%d tokens (from the right, the "
                "longer text first)", train_cut + held_cut, len(train) + len(held_out),
                spec.seq_len)
  return Corpus(tokenizer, MemoryRows(train_rows, np.zeros(len(train), np.int32)),
                MemoryRows(held_rows, np.zeros(len(held_out), np.int32)),
                skipped_records=stats.skipped, labels=labels, truncated=train_cut + held_cut)


def _open_prepared(data: DataConfig, spec: BatchSpec, tokenizer: Tokenizer | None) -> Corpus:
  """Rows of prepared directories: one directory keeps its own sources and weights; a mixture
  of directories makes each one source with the mixture's weight."""
  paths = [p for s in data.sources for p in s.paths]
  if not paths or (data.mixture and any(len(s.paths) != 1 for s in data.sources)):
    raise UserError("A 'prepared' source needs the directory `lmjax data prepare` wrote, one per "
                    "source: `data.paths: [DIR]` (or one path in each data.mixture entry).")
  opened = [open_prepared(p) for p in paths]
  first = opened[0]
  for p in opened:
    _check_prepared(p, first, spec)
  if tokenizer is not None and tokenizer.to_dict() != first.tokenizer.to_dict():
    raise UserError(f"this run's tokenizer (RUN_DIR/tokenizer) differs from the one {first.path} "
                    f"was prepared with; resume with the same data, or start a new run directory.")
  check_tokenizer(spec, first.tokenizer)
  skipped = sum(s["skipped_records"] for p in opened for s in p.meta["sources"])
  if len(opened) == 1:
    weights = tuple(first.meta["weights"])
    return Corpus(first.tokenizer, first.train, first.held_out, weights, skipped)

  def joined(part: str) -> ArrayRecordRows:
    parts = [getattr(p, part) for p in opened]
    return ArrayRecordRows([f for r in parts for f in r.files], seq_len=spec.seq_len,
                           source_ids=np.repeat(np.arange(len(parts)), [len(r) for r in parts]))
  return Corpus(first.tokenizer, joined("train"), joined("held_out"),
                tuple(s.weight for s in data.mixture), skipped)


def _check_prepared(p: Prepared, first: Prepared, spec: BatchSpec) -> None:
  if p.meta["seq_len"] != spec.seq_len:
    raise UserError(f"{p.path} holds rows of {p.meta['seq_len']} tokens but train.seq_len is "
                    f"{spec.seq_len}: set train.seq_len={p.meta['seq_len']}, or prepare "
                    f"the data again with train.seq_len={spec.seq_len}.")
  if (p.meta["bos_id"], p.meta["eos_id"]) != packing_ids(spec.objective, p.tokenizer):
    raise UserError(f"{p.path} was packed for a {p.meta['head']} model, not for this "
                    f"{spec.objective.value} one: prepare it with this model's config.")
  if p.tokenizer.to_dict() != first.tokenizer.to_dict():
    raise UserError(f"{p.path} and {first.path} were made with different tokenizers; prepare "
                    f"them with the same data.tokenizer.")
