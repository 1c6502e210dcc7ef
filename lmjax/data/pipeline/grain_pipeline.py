"""The training input pipeline as a Grain dataset: step-indexed, prefetched, checkpointable.

Element k of the dataset is this process's share of the global batch of step k
(`BatchSource.batch`): a pure function of (seed, k), so the pipeline is a random-access Grain
`MapDataset` and its iterator state is one position. Batches are assembled ahead of the trainer,
in a background thread (`data.workers: 0`) or in that many worker processes (MLM masking and
reads from prepared shards then run in parallel with the step). The iterator's state goes into
every checkpoint; restoring it yields exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from lmjax.data.pipeline.batches import BatchSource
from lmjax.data.pipeline.prefetch import prefetched


class _StepBatches:
  """A Grain random-access source: item k = rows `positions` of the global batch of step k."""

  def __init__(self, source: BatchSource, positions: np.ndarray, num_steps: int):
    self.source, self.positions, self.num_steps = source, np.asarray(positions), num_steps

  def __len__(self) -> int:
    return self.num_steps

  def __getitem__(self, step: int) -> dict[str, np.ndarray]:
    return self.source.batch(int(step), positions=self.positions)


class BatchIterator:
  """`next()` gives this process's rows of the next step's global batch: {field: [n, seq_len]}.

  num_steps: the length of the run (train.steps); start: the first step to yield; state: a
  `state()` saved at `start` (it also carries worker positions; one saved with another number
  of workers is ignored: the batches, a function of the step, are the same anyway).
  workers: 0 prefetches `prefetch` batches in one background thread; N > 0 uses N processes.
  """

  def __init__(self, source: BatchSource, positions: np.ndarray, *, num_steps: int,
               start: int = 0, workers: int = 0, prefetch: int = 2,
               state: dict[str, Any] | None = None):
    if state and state.get("workers") != workers:
      state = None
    # The dataset starts at `offset`; Grain's own state counts from there.
    self._offset, self._workers = (int(state["offset"]) if state else start), workers
    dataset = grain.MapDataset.source(_StepBatches(source, positions, num_steps))[self._offset:]
    self._iterator = iter(prefetched(dataset, workers=workers, buffer=prefetch))
    if state:
      self._iterator.set_state(state["grain"])

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)

  def close(self) -> None:
    """Stops the prefetching thread or worker processes and frees their buffers."""
    self._iterator.close()

  def state(self) -> dict[str, Any]:
    """The position after the last batch handed out (JSON-able), for `state=` on resume."""
    return {"offset": self._offset, "workers": self._workers,
            "grain": self._iterator.get_state()}
