"""Running as one of many processes: joining the job, and agreeing on what process 0 decided.

Every process of a multi-host job runs the same command. `initialize_distributed` joins them
through `jax.distributed` (explicit `distributed.*` keys, or `distributed.auto` to let JAX read
the TPU pod / SLURM / MPI environment; on the workers of a TPU pod slice, found by
TPU_WORKER_HOSTNAMES, that is the default). Process 0 alone builds the tokenizer (BPE training is
not worth trusting to be bit-identical across hosts, lmjax.train.inputs) and writes the run
directory; `broadcast_json` hands what it decided to the others. With one process every
function here is a no-op or a plain call.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from lmjax.config import DistributedConfig
from lmjax.errors import UserError

log = logging.getLogger(__name__)


def initialize_distributed(config: DistributedConfig) -> None:
  """Joins the multi-process job that `distributed.*` describes; a no-op for one process.

  Must run before anything touches a JAX device. A process other than 0 that cannot reach the
  coordinator within `distributed.initialization_timeout` seconds fails with a UserError naming
  the address. (JAX itself aborts the process when its own connection attempt times out, so
  the address is probed first; if process 0 waits in vain for the others, JAX's abort after
  the same timeout follows the line logged here.)
  """
  if jax.distributed.is_initialized():
    return
  if not config.auto and config.coordinator_address is None:
    workers = tpu_pod_workers(os.environ)
    if workers < 2:
      _warn_if_launched_as_many(os.environ)
      return
    # A TPU pod slice runs one process per worker VM, which JAX finds by itself: joining them
    # is the only thing that makes sense there.
    log.info("one of %d TPU pod workers (TPU_WORKER_HOSTNAMES): joining them as "
             "distributed.auto=true does", workers)
  address, timeout = config.coordinator_address, config.initialization_timeout
  deadline = time.monotonic() + timeout
  if address is not None and config.process_id not in (None, 0):
    _wait_for_coordinator(address, deadline, timeout)
  log.info("process %s joining %s processes through %s (waiting up to %ds)",
           config.process_id if config.process_id is not None else "?",
           config.num_processes or "the detected",
           address or "the coordinator found in the environment", timeout)
  try:
    jax.distributed.initialize(
        coordinator_address=address, num_processes=config.num_processes,
        process_id=config.process_id,
        initialization_timeout=max(1, math.ceil(deadline - time.monotonic())))
  except (RuntimeError, ValueError) as e:  # JaxRuntimeError is a RuntimeError
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(
        f"could not join the distributed job through "
        f"{address or 'the coordinator found in the environment'} ({detail}). Check that "
        f"every process was given the same address and distributed.num_processes.") from None


def _wait_for_coordinator(address: str, deadline: float, timeout: int) -> None:
  """Retries a TCP connection to process 0's `address` until it answers or `deadline` passes."""
  host, _, port = address.rpartition(":")
  error: OSError | None = None
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)),
                                    timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
        return
    except OSError as e:
      error = e
    if time.monotonic() >= deadline:
      raise UserError(
          f"could not reach the coordinator at distributed.coordinator_address={address} within "
          f"distributed.initialization_timeout={timeout}s ({error.strerror or error}). Check that "
          f"process 0 of the job is running on that host and port, that every process was "
          f"given the same address, and that the port is open between the hosts.")
    time.sleep(0.25)


def tpu_pod_workers(environ) -> int:
  """How many worker VMs the TPU slice this process runs on has (0: not on a TPU VM)."""
  hosts = environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h.strip()])


def _warn_if_launched_as_many(environ) -> None:
  """Warns when the launcher started several copies that will not know about each other. (Under
  SLURM, JAX's detection gives each process the one GPU of its SLURM_LOCALID, which is wrong for
  one process per node: the job's shape is the user's to say, distributed.auto or the keys.)"""
  if int(environ.get("SLURM_NTASKS", "1") or 1) > 1:
    log.warning("this looks like one of several processes (SLURM_NTASKS), but distributed.* is "
                "not set, so each process will train on its own: set distributed.auto=true (one "
                "process per GPU) or distributed.coordinator_address/num_processes/process_id "
                "(one per node) to join them.")


def is_writer() -> bool:
  """True on the one process that writes logs, metrics and the run directory."""
  return jax.process_index() == 0


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any (e.g. one host was sent SIGTERM).

  Free with one process; with several it is a small all-gather, so every process stops at
  the same step.
  """
  return any_process_each(flag)[0]


def any_process_each(*flags: bool) -> tuple[bool, ...]:
  """`any_process` of each flag, in one all-gather."""
  if jax.process_count() == 1:
    return flags
  gathered = multihost_utils.process_allgather(np.array(flags, dtype=bool))
  return tuple(bool(b) for b in np.any(gathered.reshape(-1, len(flags)), axis=0))


def broadcast_json(value: Any) -> Any:
  """Process 0's JSON-able `value`, on every process (others may pass anything)."""
  if jax.process_count() == 1:
    return value
  data = np.frombuffer(json.dumps(value).encode("utf-8") if is_writer() else b"", np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.array(len(data), np.int32)))
  padded = np.zeros(size, np.uint8)
  padded[:len(data)] = data
  return json.loads(bytes(multihost_utils.broadcast_one_to_all(padded)).decode("utf-8"))
