"""Elements of a Grain dataset made ahead of their consumer, by a thread or worker processes."""

from __future__ import annotations

import grain
from absl import flags


def prefetched(dataset: grain.MapDataset, *, workers: int, buffer: int = 2) -> grain.IterDataset:
  """`dataset` in order, its elements made ahead by one thread (workers=0) or `workers` Grain
  worker processes, `buffer` ahead (per worker)."""
  iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=buffer))
  if not workers:
    return iterable
  if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; only absl's app.run parses them
    flags.FLAGS.mark_as_parsed()
  return iterable.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer))
