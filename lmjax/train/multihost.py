"""Running as one of many processes: joining the job, and agreeing on what process 0 decided.

Every process of a multi-host job runs the same command. `initialize_distributed` joins them
through `jax.distributed` (explicit `distributed.*` keys, or `distributed.auto` to let JAX read
the TPU pod / SLURM / MPI environment). Process 0 alone builds the tokenizer (BPE training is
not worth trusting to be bit-identical across hosts) and writes the run directory; the other
processes receive the tokenizer over JAX's own collectives, so no shared file system is needed
for it. With one process every function here is a no-op or a plain call.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from lmjax.config import Config, DistributedConfig
from lmjax.data.batches import Corpus, load_corpus
from lmjax.data.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.run_dir import RunDir


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
    _warn_if_launched_as_many(os.environ)
    return
  address, timeout = config.coordinator_address, config.initialization_timeout
  deadline = time.monotonic() + timeout
  if address is not None and config.process_id not in (None, 0):
    _wait_for_coordinator(address, deadline, timeout)
  print(f"lmjax: process {config.process_id if config.process_id is not None else '?'} joining "
        f"{config.num_processes or 'the detected'} processes through "
        f"{address or 'the coordinator found in the environment'} (waiting up to {timeout}s)",
        file=sys.stderr, flush=True)
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


def _warn_if_launched_as_many(environ) -> None:
  """Warns when the launcher started several copies that will not know about each other."""
  hosts = environ.get("TPU_WORKER_HOSTNAMES", "")
  many = int(environ.get("SLURM_NTASKS", "1") or 1) > 1 or hosts.count(",") > 0
  if many:
    print("lmjax: warning: this looks like one of several processes (SLURM_NTASKS or "
          "TPU_WORKER_HOSTNAMES), but distributed.* is not set, so each process will train on "
          "its own: set distributed.auto=true to join them.", file=sys.stderr, flush=True)


def is_writer() -> bool:
  """True on the one process that writes logs, metrics and the run directory."""
  return jax.process_index() == 0


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any (e.g. one host was sent SIGTERM).

  Free with one process; with several it is a small all-gather, so every process stops at
  the same step.
  """
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


def broadcast_json(value: Any) -> Any:
  """Process 0's JSON-able `value`, on every process (others may pass anything)."""
  if jax.process_count() == 1:
    return value
  data = np.frombuffer(json.dumps(value).encode("utf-8") if is_writer() else b"", np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.array(len(data), np.int32)))
  padded = np.zeros(size, np.uint8)
  padded[:len(data)] = data
  return json.loads(bytes(multihost_utils.broadcast_one_to_all(padded)).decode("utf-8"))


def shared_corpus(config: Config, run: RunDir) -> Corpus:
  """`load_corpus` with one tokenizer for all processes: the run's own, or one process 0 builds.

  A UserError on process 0 (bad data, a tokenizer too large for the model) is raised on every
  process, so none is left waiting.
  """
  if jax.process_count() == 1:
    return load_corpus(config, _saved_tokenizer(run))
  if is_writer():
    try:
      loaded = load_corpus(config, _saved_tokenizer(run))
      message = {"tokenizer": loaded.tokenizer.to_dict()}
    except UserError as e:
      message = {"error": str(e)}
  message = broadcast_json(message if is_writer() else None)
  if "error" in message:
    raise UserError(message["error"])
  if is_writer():
    return loaded
  return load_corpus(config, Tokenizer.from_dict(message["tokenizer"]))


def _saved_tokenizer(run: RunDir) -> Tokenizer | None:
  return Tokenizer.load(run.tokenizer_dir) if run.tokenizer_dir.is_dir() else None
