"""Memory: what arrays will take per device, what a device has free, and refusing up front what
cannot fit (a train state, a KV cache) with the size and the setting that makes it smaller,
rather than starting to allocate and dying of it.

    per_device_bytes(tree)    bytes one device holds of a tree of ShapeDtypeStructs (sharded
                              ones count their shard)
    free_bytes()              what the first local device has free: an accelerator's allocator
                              limit less what is in use; on CPU the host's available memory,
                              shared by all local (fake) CPU devices
    check_fits(...)           UserError naming the size, the room and the knobs

The estimates are lower bounds (what must be held, not XLA's temporaries), so a refusal is
certain; `lmjax train --compile-only` reports XLA's own estimate for a plan on other devices.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax

from lmjax.errors import UserError


def format_bytes(n: float) -> str:
  """1536 -> '1.5 KiB'."""
  if abs(n) >= 1024**7:  # past what any machine holds: the power of ten is the news
    return f"~10^{len(str(int(abs(n)))) - 1} B"
  for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
    if abs(n) < 1024 or unit == "EiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
    n /= 1024
  return f"{n} B"


def device_memory(device: jax.Device) -> int | None:
  """What `device`'s allocator may hold, in bytes; None where the backend does not say (CPU)."""
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001 -- backends without allocator stats (CPU) raise or return None
    return None
  return (stats or {}).get("bytes_limit")


def _host_available() -> int | None:
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (AttributeError, ValueError, OSError):
    return None


def free_bytes() -> tuple[int, str] | None:
  """(bytes one device can still hold, where) for the first local device; None if unknown."""
  device = jax.local_devices()[0]
  limit = device_memory(device)
  if limit is not None:
    in_use = (device.memory_stats() or {}).get("bytes_in_use", 0)
    return limit - in_use, f"one {device.device_kind}"
  available = _host_available()
  if available is None:
    return None
  shared = len(jax.local_devices())  # fake CPU devices share the host's memory
  return available // shared, ("the host" if shared == 1 else
                               f"the host, shared by its {shared} CPU devices")


def per_device_bytes(tree: Any) -> int:
  """Bytes one device holds of `tree` (ShapeDtypeStructs or arrays; a sharded leaf counts its
  shard, an unsharded one all of it)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.shape
    sharding = getattr(leaf, "sharding", None)
    if sharding is not None:
      shape = sharding.shard_shape(shape)
    total += math.prod(shape) * getattr(leaf.dtype, "itemsize", 4)
  return total


def check_fits(needed: int, *, what: str, knobs: str) -> None:
  """UserError when `needed` bytes per device exceed what the device has free (nothing is
  checked where the backend does not say). `what` names the arrays, `knobs` the settings that
  shrink them."""
  free = free_bytes()
  if free is None or needed <= free[0]:
    return
  raise UserError(f"{what} needs at least {format_bytes(needed)} per device, more than the "
                  f"{format_bytes(max(free[0], 0))} free on {free[1]}: {knobs}.")


__all__ = ["check_fits", "device_memory", "format_bytes", "free_bytes", "per_device_bytes"]
