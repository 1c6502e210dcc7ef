"""From packed rows to step-indexed batches: shuffle, mix, mask.

The batch for step k is a pure function of (seed, k): rows are drawn from a fresh seeded
permutation each epoch, and each row's MLM mask from a generator seeded by (seed, k, its position
in the batch). The data position a checkpoint needs is therefore the step itself, a resumed run
sees exactly the batches an uninterrupted one would have, and on a pod each host builds only the
rows its devices hold yet gets the same rows one host would.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lmjax.data.examples.masking import mask_tokens_for_mlm
from lmjax.data.examples.packing import pack_documents
from lmjax.data.rows import Rows
from lmjax.data.spec import BatchSpec, Objective
from lmjax.data.tokenize.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class BatchSource:
  """Deterministic batches over packed rows; each process asks only for the rows it holds."""

  rows: Rows
  spec: BatchSpec
  tokenizer: Tokenizer
  # Mixture weights by `rows.source_ids`; empty: one source, read in seeded epochs.
  weights: tuple[float, ...] = ()

  @property
  def batch_size(self) -> int:
    return self.spec.batch_size

  @property
  def seed(self) -> int:
    return self.spec.seed

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
    in_order = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
    indices = self.row_indices(step) if shuffle else in_order % self.num_rows
    batch = self.rows.take(indices[positions])
    if self.spec.objective is Objective.MASKED_LM:
      batch.update(self._masked(batch, step, positions))
    if self.spec.objective is Objective.CLASSIFY and not shuffle:
      # Evaluation visits each example once: the rows past the last fill the final batch with
      # label -1, which no loss or metric counts.
      batch["labels"] = np.where(in_order[positions] < self.num_rows, batch["labels"], -1)
    return batch

  def eval_batches(self, default: int) -> int:
    """How many in-order batches an evaluation takes: every example once for classify (metrics
    are per example), else `default` (train.eval_batches)."""
    if self.spec.objective is Objective.CLASSIFY:
      return -(-self.num_rows // self.batch_size)
    return default

  def _masked(self, batch: dict[str, np.ndarray], step: int, positions: np.ndarray
              ) -> dict[str, np.ndarray]:
    special = np.fromiter(self.tokenizer.special_ids, np.int64)
    maskable = (batch["segment_ids"] != 0) & ~np.isin(batch["input_ids"], special)
    masked = [mask_tokens_for_mlm(
                  np.random.default_rng([self.seed, step, 1, int(p)]),
                  batch["input_ids"][i:i + 1], maskable=maskable[i:i + 1],
                  mask_id=self.tokenizer.mask_id, vocab_size=self.spec.vocab_size,
                  probability=self.spec.mlm_probability)
              for i, p in enumerate(positions)]
    return {k: np.concatenate([m[k] for m in masked]) for k in masked[0]}


def packing_ids(objective: Objective, tokenizer: Tokenizer) -> tuple[int | None, int | None]:
  """(bos, eos) ids around each packed document: text<eos> for causal LM, <bos>text<eos> (the
  tokenizer's CLS/SEP where it has them) for MLM."""
  if objective is not Objective.MASKED_LM:
    return None, tokenizer.eos_id
  bos = tokenizer.cls_id if tokenizer.cls_id is not None else tokenizer.bos_id
  return bos, tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id


def pack_for(objective: Objective, tokenizer: Tokenizer, token_docs: list[list[int]],
             seq_len: int) -> dict[str, np.ndarray]:
  """Packs documents as the objective expects (see `packing_ids`)."""
  bos, eos = packing_ids(objective, tokenizer)
  return pack_documents(token_docs, seq_len=seq_len, eos_id=eos, bos_id=bos)
