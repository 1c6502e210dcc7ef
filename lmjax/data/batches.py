"""From documents to step-indexed batches: tokenize, pack, split, shuffle, mask.

The batch for step k is a pure function of (seed, k): rows are drawn from a fresh seeded
permutation each epoch, and MLM masks from a generator seeded by (seed, k). The data position a
checkpoint needs is therefore the step itself, and a resumed run sees exactly the batches an
uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from lmjax.config import Config
from lmjax.data.packing import pack_documents
from lmjax.data.sources import read_documents
from lmjax.data.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.model.config import Head
from lmjax.objectives import mask_tokens_for_mlm

Rows = dict[str, np.ndarray]  # input_ids, segment_ids, positions: [num_rows, seq_len] int32


@dataclasses.dataclass(frozen=True)
class BatchSource:
  """Deterministic batches over packed rows. `process_index/count` pick this host's share."""

  rows: Rows
  batch_size: int             # global, in rows
  seed: int
  head: Head
  tokenizer: Tokenizer
  vocab_size: int
  mlm_probability: float = 0.15
  process_index: int = 0
  process_count: int = 1

  @property
  def num_rows(self) -> int:
    return len(self.rows["input_ids"])

  def row_indices(self, step: int) -> np.ndarray:
    """Global row indices of step `step`'s batch: [batch_size]."""
    flat = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
    epochs, offsets = np.divmod(flat, self.num_rows)
    out = np.empty_like(flat)
    for epoch in np.unique(epochs):
      permutation = np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_rows)
      out[epochs == epoch] = permutation[offsets[epochs == epoch]]
    return out

  def batch(self, step: int, *, shuffle: bool = True) -> dict[str, np.ndarray]:
    """This process's rows of the global batch for `step` (all rows with one process)."""
    indices = self.row_indices(step) if shuffle else (
        np.arange(step * self.batch_size, (step + 1) * self.batch_size) % self.num_rows)
    batch = {k: v[indices] for k, v in self.rows.items()}
    if self.head is Head.MASKED_LM:
      rng = np.random.default_rng([self.seed, step, 1])
      special = np.isin(batch["input_ids"], np.fromiter(self.tokenizer.special_ids, np.int64))
      batch.update(mask_tokens_for_mlm(
          rng, batch["input_ids"], maskable=(batch["segment_ids"] != 0) & ~special,
          mask_id=self.tokenizer.mask_id, vocab_size=self.vocab_size,
          probability=self.mlm_probability))
    per_process = self.batch_size // self.process_count
    start = self.process_index * per_process
    return {k: v[start:start + per_process] for k, v in batch.items()}


def pack_for(head: Head, tokenizer: Tokenizer, token_docs: list[list[int]], seq_len: int) -> Rows:
  """Packs documents as the objective expects: text<eos> for causal LM, <bos>text<eos> for MLM."""
  bos = None
  if head is Head.MASKED_LM:
    bos = tokenizer.cls_id if tokenizer.cls_id is not None else tokenizer.bos_id
  eos = tokenizer.sep_id if head is Head.MASKED_LM and tokenizer.sep_id is not None else tokenizer.eos_id
  return pack_documents(token_docs, seq_len=seq_len, eos_id=eos, bos_id=bos)


def build_tokenizer(config: Config, documents: list[str]) -> Tokenizer:
  """The tokenizer `data.tokenizer` names: byte, bpe (trained on `documents`) or a path."""
  kind = config.data.tokenizer
  if kind == "byte":
    return Tokenizer.byte_level()
  if kind == "bpe":
    return Tokenizer.train_bpe(documents, vocab_size=config.model.vocab_size)
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


def load_corpus(config: Config, tokenizer: Tokenizer | None = None
                ) -> tuple[Tokenizer, Rows, Rows]:
  """Reads, tokenizes and packs the corpus; returns (tokenizer, train rows, eval rows).

  The last `data.eval_fraction` of the packed rows (at least one) are held out for evaluation.
  Pass `tokenizer` to reuse one (a resumed run keeps its own); otherwise one is built.
  """
  data = config.data
  documents = read_documents(source=data.source, paths=data.paths, field=data.field,
                             encoding_errors=data.encoding_errors.value)
  tokenizer = tokenizer or build_tokenizer(config, documents)
  check_tokenizer(config, tokenizer)
  rows = pack_for(config.model.head, tokenizer, tokenizer.encode_batch(documents),
                  config.train.seq_len)
  num_rows = len(rows["input_ids"])
  if num_rows < 2:
    raise UserError(
        f"the corpus makes only {num_rows} row(s) of train.seq_len={config.train.seq_len} tokens; "
        f"training and evaluation need at least 2: add data or lower train.seq_len.")
  num_eval = min(max(1, round(num_rows * data.eval_fraction)), num_rows - 1)
  train = {k: v[:-num_eval] for k, v in rows.items()}
  held_out = {k: v[-num_eval:] for k, v in rows.items()}
  return tokenizer, train, held_out


def batch_sources(config: Config, tokenizer: Tokenizer, train: Rows, held_out: Rows
                  ) -> tuple[BatchSource, BatchSource]:
  """Train and eval BatchSources for this process."""
  common = dict(batch_size=config.train.batch_size, head=config.model.head, tokenizer=tokenizer,
                vocab_size=config.model.vocab_size, mlm_probability=config.train.mlm_probability,
                process_index=jax.process_index(), process_count=jax.process_count())
  return (BatchSource(train, seed=config.train.seed, **common),
          BatchSource(held_out, seed=config.train.seed + 1, **common))
