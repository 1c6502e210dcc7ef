"""From documents to step-indexed batches: tokenize, pack, split, shuffle, mask.

The batch for step k is a pure function of (seed, k): rows are drawn from a fresh seeded
permutation each epoch, and each row's MLM mask from a generator seeded by (seed, k, its position
in the batch). The data position a checkpoint needs is therefore the step itself, a resumed run
sees exactly the batches an uninterrupted one would have, and on a pod each host builds only the
rows its devices hold yet gets the same rows one host would.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Iterable, Iterator

import numpy as np

from lmjax.config import Config
from lmjax.data.packing import pack_documents
from lmjax.data.rows import ArrayRecordRows, MemoryRows, Rows
from lmjax.data.sources import ReadStats, iter_documents, read_documents
from lmjax.data.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.model.config import Head
from lmjax.objectives import mask_tokens_for_mlm

@dataclasses.dataclass(frozen=True)
class BatchSource:
  """Deterministic batches over packed rows; each process asks only for the rows it holds."""

  rows: Rows
  batch_size: int             # global, in rows
  seed: int
  head: Head
  tokenizer: Tokenizer
  vocab_size: int
  mlm_probability: float = 0.15
  # Mixture weights by `rows.source_ids`; empty: one source, read in seeded epochs.
  weights: tuple[float, ...] = ()

  @property
  def num_rows(self) -> int:
    return len(self.rows)

  def row_indices(self, step: int) -> np.ndarray:
    """Global row indices of step `step`'s batch: [batch_size].

    One source: each epoch is a fresh seeded permutation of all rows. A mixture: each row
    draws its source with probability proportional to the weights, then a uniformly random row
    of that source (sampling with replacement), from a generator seeded by (seed, step).
    """
    if self.weights:
      rng = np.random.default_rng([self.seed, step, 2])
      probabilities = np.asarray(self.weights) / np.sum(self.weights)
      chosen = rng.choice(len(probabilities), size=self.batch_size, p=probabilities)
      starts, counts = self.rows.source_ranges(len(probabilities))
      return starts[chosen] + rng.integers(0, counts[chosen])
    flat = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
    epochs, offsets = np.divmod(flat, self.num_rows)
    out = np.empty_like(flat)
    for epoch in np.unique(epochs):
      permutation = np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_rows)
      out[epochs == epoch] = permutation[offsets[epochs == epoch]]
    return out

  def batch(self, step: int, *, shuffle: bool = True, positions: np.ndarray | None = None
            ) -> dict[str, np.ndarray]:
    """Rows `positions` (default: all) of the global batch of `step`: [len(positions), seq_len].

    A row's content depends only on (seed, step, its position in the batch), MLM masks
    included, so processes that each build their own positions agree with one process that
    builds them all.
    """
    positions = np.arange(self.batch_size) if positions is None else np.asarray(positions)
    indices = self.row_indices(step) if shuffle else (
        np.arange(step * self.batch_size, (step + 1) * self.batch_size) % self.num_rows)
    batch = self.rows.take(indices[positions])
    if self.head is Head.MASKED_LM:
      special = np.fromiter(self.tokenizer.special_ids, np.int64)
      maskable = (batch["segment_ids"] != 0) & ~np.isin(batch["input_ids"], special)
      masked = [mask_tokens_for_mlm(
                    np.random.default_rng([self.seed, step, 1, int(p)]),
                    batch["input_ids"][i:i + 1], maskable=maskable[i:i + 1],
                    mask_id=self.tokenizer.mask_id, vocab_size=self.vocab_size,
                    probability=self.mlm_probability)
                for i, p in enumerate(positions)]
      batch.update({k: np.concatenate([m[k] for m in masked]) for k in masked[0]})
    return batch


def batch_fields(head: Head) -> dict[str, np.dtype]:
  """The arrays of a batch for `head` and their dtypes; each is [batch, seq_len]."""
  fields = {"input_ids": np.dtype(np.int32), "segment_ids": np.dtype(np.int32),
            "positions": np.dtype(np.int32)}
  if head is Head.MASKED_LM:
    fields.update(targets=np.dtype(np.int32), target_weights=np.dtype(np.float32))
  return fields


def packing_ids(head: Head, tokenizer: Tokenizer) -> tuple[int | None, int | None]:
  """(bos, eos) ids around each packed document: text<eos> for causal LM, <bos>text<eos> (the
  tokenizer's CLS/SEP where it has them) for MLM."""
  if head is not Head.MASKED_LM:
    return None, tokenizer.eos_id
  bos = tokenizer.cls_id if tokenizer.cls_id is not None else tokenizer.bos_id
  return bos, tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id


def pack_for(head: Head, tokenizer: Tokenizer, token_docs: list[list[int]], seq_len: int
             ) -> dict[str, np.ndarray]:
  """Packs documents as the objective expects (see `packing_ids`)."""
  bos, eos = packing_ids(head, tokenizer)
  return pack_documents(token_docs, seq_len=seq_len, eos_id=eos, bos_id=bos)


def build_tokenizer(config: Config, documents: Iterable[str]) -> Tokenizer:
  """The tokenizer `data.tokenizer` names: byte, bpe (trained on `documents`) or a path.

  Unset, it is the tokenizer of `model.init_from` when fine-tuning, else a trained BPE.
  """
  kind = config.data.tokenizer
  if kind is None and config.model.init_from:
    source = pathlib.Path(config.model.init_from)
    return Tokenizer.load(source / "tokenizer" if (source / "config.yaml").is_file() else source)
  if kind is None or kind == "bpe":
    return Tokenizer.train_bpe(documents, vocab_size=config.model.vocab_size)
  if kind == "byte":
    return Tokenizer.byte_level()
  return Tokenizer.from_file(kind)


def check_tokenizer(config: Config, tokenizer: Tokenizer) -> None:
  if tokenizer.vocab_size > config.model.vocab_size:
    raise UserError(
        f"the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is "
        f"{config.model.vocab_size}: raise model.vocab_size to at least {tokenizer.vocab_size} "
        f"(a multiple of 128 is fastest), or use a smaller tokenizer.")
  if config.model.head is Head.MASKED_LM and tokenizer.mask_id is None:
    raise UserError("masked-LM training needs a mask token, and the tokenizer has none: use "
                    "data.tokenizer=bpe or byte, or a tokenizer with [MASK]/<mask>.")


def iter_corpus(config: Config, stats: ReadStats | None = None) -> Iterator[str]:
  """Every document of every source of `config`, read one file at a time."""
  for s in config.data.sources:
    for chunk in iter_documents(source=s.source, paths=s.paths, field=s.field, split=s.split,
                                data_dir=s.data_dir, encoding_errors=config.data.encoding_errors.value,
                                bad_records=config.data.bad_records.value, stats=stats):
      yield from chunk


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Packed training and held-out rows, the tokenizer that made them and the mixture weights."""

  tokenizer: Tokenizer
  train: Rows
  held_out: Rows
  weights: tuple[float, ...] = ()   # by source id; () for one source
  skipped_records: int = 0          # bad records left out under data.bad_records=skip


def load_corpus(config: Config, tokenizer: Tokenizer | None = None) -> Corpus:
  """Reads, tokenizes and packs the corpus, or opens prepared rows (`data.source: prepared`).

  Each source's last `data.eval_fraction` of packed rows (at least one) is held out for
  evaluation. Rows carry the index of their source in `data.sources`, sorted. Pass `tokenizer`
  to reuse one (a resumed run keeps its own); otherwise one is built from all text.
  """
  data = config.data
  kinds = {s.source == "prepared" for s in data.sources}
  if kinds == {True}:
    return _open_prepared(config, tokenizer)
  if len(kinds) > 1:
    raise UserError("data.mixture mixes 'prepared' sources with document sources; prepare the "
                    "others too (lmjax data prepare), or tokenize all of them on the fly.")
  stats = ReadStats()
  documents = [read_documents(source=s.source, paths=s.paths, field=s.field, split=s.split,
                              data_dir=s.data_dir, encoding_errors=data.encoding_errors.value,
                              bad_records=data.bad_records.value, stats=stats)
               for s in data.sources]
  if stats.skipped:
    print(f"lmjax: skipped {stats.skipped} bad record(s) (data.bad_records=skip); the first: "
          f"{stats.first_problem}", file=sys.stderr)
  tokenizer = tokenizer or build_tokenizer(config, [d for docs in documents for d in docs])
  check_tokenizer(config, tokenizer)
  train, held_out = [], []
  for i, docs in enumerate(documents):
    packed = pack_for(config.model.head, tokenizer, tokenizer.encode_batch(docs),
                      config.train.seq_len)
    num_rows = len(packed["input_ids"])
    if num_rows < 2:
      named = f"data.mixture[{i}]" if data.mixture else "the corpus"
      raise UserError(
          f"{named} makes only {num_rows} row(s) of train.seq_len={config.train.seq_len} tokens; "
          f"training and evaluation need at least 2: add data or lower train.seq_len.")
    rows = MemoryRows(packed, np.full(num_rows, i, np.int32))
    num_eval = min(max(1, round(num_rows * data.eval_fraction)), num_rows - 1)
    train.append(rows.slice(0, num_rows - num_eval))
    held_out.append(rows.slice(num_rows - num_eval, num_rows))
  return Corpus(tokenizer, MemoryRows.concatenate(train), MemoryRows.concatenate(held_out),
                tuple(s.weight for s in data.mixture), stats.skipped)


def _open_prepared(config: Config, tokenizer: Tokenizer | None) -> Corpus:
  """Rows of prepared directories: one directory keeps its own sources and weights; a mixture
  of directories makes each one source with the mixture's weight."""
  from lmjax.data.prepared import open_prepared  # pylint: disable=import-outside-toplevel
  paths = [p for s in config.data.sources for p in s.paths]
  if not paths or (config.data.mixture and any(len(s.paths) != 1 for s in config.data.sources)):
    raise UserError("A 'prepared' source needs the directory `lmjax data prepare` wrote, one per "
                    "source: `data.paths: [DIR]` (or one path in each data.mixture entry).")
  opened = [open_prepared(p) for p in paths]
  first = opened[0]
  for p in opened:
    if p.meta["seq_len"] != config.train.seq_len:
      raise UserError(f"{p.path} holds rows of {p.meta['seq_len']} tokens but train.seq_len is "
                      f"{config.train.seq_len}: set train.seq_len={p.meta['seq_len']}, or prepare "
                      f"the data again with train.seq_len={config.train.seq_len}.")
    if (p.meta["bos_id"], p.meta["eos_id"]) != packing_ids(config.model.head, p.tokenizer):
      raise UserError(f"{p.path} was packed for a {p.meta['head']} model, not for this "
                      f"{config.model.head.value} one: prepare it with this model's config.")
    if p.tokenizer.to_dict() != first.tokenizer.to_dict():
      raise UserError(f"{p.path} and {first.path} were made with different tokenizers; prepare "
                      f"them with the same data.tokenizer.")
  if tokenizer is not None and tokenizer.to_dict() != first.tokenizer.to_dict():
    raise UserError(f"this run's tokenizer (RUN_DIR/tokenizer) differs from the one {first.path} "
                    f"was prepared with; resume with the same data, or start a new run directory.")
  check_tokenizer(config, first.tokenizer)
  skipped = sum(s["skipped_records"] for p in opened for s in p.meta["sources"])
  if len(opened) == 1:
    weights = tuple(first.meta["weights"])
    return Corpus(first.tokenizer, first.train, first.held_out, weights, skipped)
  def joined(part: str) -> ArrayRecordRows:
    parts = [getattr(p, part) for p in opened]
    return ArrayRecordRows([f for r in parts for f in r.files], seq_len=config.train.seq_len,
                           source_ids=np.repeat(np.arange(len(parts)), [len(r) for r in parts]))
  return Corpus(first.tokenizer, joined("train"), joined("held_out"),
                tuple(s.weight for s in config.data.mixture), skipped)


def batch_sources(config: Config, corpus: Corpus) -> tuple[BatchSource, BatchSource]:
  """Train and eval BatchSources."""
  common = dict(batch_size=config.train.batch_size, head=config.model.head,
                tokenizer=corpus.tokenizer, vocab_size=config.model.vocab_size,
                mlm_probability=config.train.mlm_probability)
  return (BatchSource(corpus.train, seed=config.train.seed, weights=corpus.weights, **common),
          BatchSource(corpus.held_out, seed=config.train.seed + 1, **common))
