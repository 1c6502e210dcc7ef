"""Checkpoint arrays made one at a time: imports write a checkpoint without holding all of it.

A `DeferredArray` leaf is made (`make()`) only when Orbax writes it and dropped right after, so
`Checkpointer.save_streamed` holds one array (and its compressed copy) at a time instead of the
whole tree. The files are those of an ordinary np.ndarray leaf and restore like one.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import functools
from typing import Callable, Sequence

import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import future as ocp_future


@dataclasses.dataclass(frozen=True)
class DeferredArray:
  """A host array that `Checkpointer.save_streamed` makes (`make()`) only when it writes it."""

  shape: tuple[int, ...]
  dtype: np.dtype
  make: Callable[[], np.ndarray]

  @property
  def size(self) -> int:
    return int(np.prod(self.shape))

  @property
  def nbytes(self) -> int:
    return self.size * np.dtype(self.dtype).itemsize


class _DeferredArrayHandler(ocp.type_handlers.NumpyHandler):
  """Writes DeferredArrays in turn, each made just before its write and dropped after it.

  Orbax writes all the arrays of a tree at once (and compresses each into a second buffer),
  which needs about twice the tree in memory; one at a time, memory holds one array and its
  compressed copy. Written as NumpyHandler writes np.ndarrays, they restore like any array.
  """

  def __init__(self):
    super().__init__(deepcopy_host_arrays=False)  # each array is made for this write alone

  async def serialize(self, values: Sequence[DeferredArray], infos, args=None):
    args = args or [ocp.SaveArgs()] * len(values)
    write_now = super().serialize

    async def write_in_turn() -> None:
      for value, info, arg in zip(values, infos, args):
        array = value.make()
        if array.shape != tuple(value.shape) or array.dtype != value.dtype:
          raise ValueError(f"{info.name}: made {array.dtype}{list(array.shape)}, declared "
                           f"{np.dtype(value.dtype)}{list(value.shape)}")
        writes = await write_now([array], [info], [arg])
        del array
        for write in writes:
          await asyncio.to_thread(write.result)
        _return_freed_memory()

    return [ocp_future.CommitFutureAwaitingContractedSignals(write_in_turn(),
                                                            name="deferred_arrays")]


def streaming_handlers() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  """Checkpoint handlers for `save_streamed`: Orbax's defaults plus DeferredArray leaves (in a
  registry of their own, so that no other save or restore sees them)."""
  defaults = [(ty, ocp.type_handlers.get_type_handler(ty))
              for ty in ocp.type_handlers.supported_types()]
  # DeferredArray first: its typestr is np.ndarray's, whose handler the defaults then restore.
  types = ocp.type_handlers.create_type_handler_registry(
      (DeferredArray, _DeferredArrayHandler()), *defaults)
  handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
  handlers.add("state", ocp.args.PyTreeSave,
               ocp.PyTreeCheckpointHandler(type_handler_registry=types))
  handlers.add("record", ocp.args.JsonSave, ocp.JsonCheckpointHandler())
  return handlers


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
  try:
    return ctypes.CDLL(None).malloc_trim  # glibc
  except (AttributeError, OSError):
    return None


def _return_freed_memory() -> None:
  """Hands freed heap memory back to the OS where the C library keeps it (glibc).

  TensorStore compresses an array into many small buffers on its pool threads; once they are
  freed, glibc keeps them in per-thread arenas, so each array written added its compressed size
  to the process (a 2.5 GiB import peaked at 2.40 GiB resident without this, 1.28 GiB with it).
  """
  trim = _malloc_trim()
  if trim is not None:
    trim(0)
