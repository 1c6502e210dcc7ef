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

import numpy as np

from lmjax.config import Config
from lmjax.data.packing import pack_documents
from lmjax.data.sources import read_documents
from lmjax.data.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.model.config import Head
from lmjax.objectives import mask_tokens_for_mlm

# input_ids, segment_ids, positions: [num_rows, seq_len] int32; source: [num_rows] int32
Rows = dict[str, np.ndarray]


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
  # Mixture weights by `rows["source"]` id; empty: one source, read in seeded epochs.
  weights: tuple[float, ...] = ()

  @property
  def num_rows(self) -> int:
    return len(self.rows["input_ids"])

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
      ids = self.rows["source"]
      starts = np.searchsorted(ids, np.arange(len(probabilities)))
      counts = np.searchsorted(ids, np.arange(len(probabilities)), side="right") - starts
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
    batch = {k: v[indices[positions]] for k, v in self.rows.items() if k != "source"}
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


def pack_for(head: Head, tokenizer: Tokenizer, token_docs: list[list[int]], seq_len: int) -> Rows:
  """Packs documents as the objective expects: text<eos> for causal LM, <bos>text<eos> for MLM."""
  bos = None
  if head is Head.MASKED_LM:
    bos = tokenizer.cls_id if tokenizer.cls_id is not None else tokenizer.bos_id
  eos = tokenizer.sep_id if head is Head.MASKED_LM and tokenizer.sep_id is not None else tokenizer.eos_id
  return pack_documents(token_docs, seq_len=seq_len, eos_id=eos, bos_id=bos)


def build_tokenizer(config: Config, documents: list[str]) -> Tokenizer:
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


def load_corpus(config: Config, tokenizer: Tokenizer | None = None
                ) -> tuple[Tokenizer, Rows, Rows]:
  """Reads, tokenizes and packs the corpus; returns (tokenizer, train rows, eval rows).

  Each source's last `data.eval_fraction` of packed rows (at least one) is held out for
  evaluation. Rows carry `source`, the index of their source in `data.sources`, sorted. Pass
  `tokenizer` to reuse one (a resumed run keeps its own); otherwise one is built from all text.
  """
  data = config.data
  documents = [read_documents(source=s.source, paths=s.paths, field=s.field, split=s.split,
                              data_dir=s.data_dir, encoding_errors=data.encoding_errors.value)
               for s in data.sources]
  tokenizer = tokenizer or build_tokenizer(config, [d for docs in documents for d in docs])
  check_tokenizer(config, tokenizer)
  train, held_out = [], []
  for i, docs in enumerate(documents):
    rows = pack_for(config.model.head, tokenizer, tokenizer.encode_batch(docs),
                    config.train.seq_len)
    num_rows = len(rows["input_ids"])
    if num_rows < 2:
      named = f"data.mixture[{i}]" if data.mixture else "the corpus"
      raise UserError(
          f"{named} makes only {num_rows} row(s) of train.seq_len={config.train.seq_len} tokens; "
          f"training and evaluation need at least 2: add data or lower train.seq_len.")
    rows["source"] = np.full(num_rows, i, np.int32)
    num_eval = min(max(1, round(num_rows * data.eval_fraction)), num_rows - 1)
    train.append({k: v[:-num_eval] for k, v in rows.items()})
    held_out.append({k: v[-num_eval:] for k, v in rows.items()})
  concat = lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  return tokenizer, concat(train), concat(held_out)


def batch_sources(config: Config, tokenizer: Tokenizer, train: Rows, held_out: Rows
                  ) -> tuple[BatchSource, BatchSource]:
  """Train and eval BatchSources."""
  common = dict(batch_size=config.train.batch_size, head=config.model.head, tokenizer=tokenizer,
                vocab_size=config.model.vocab_size, mlm_probability=config.train.mlm_probability)
  weights = tuple(s.weight for s in config.data.mixture)
  return (BatchSource(train, seed=config.train.seed, weights=weights, **common),
          BatchSource(held_out, seed=config.train.seed + 1, **common))
