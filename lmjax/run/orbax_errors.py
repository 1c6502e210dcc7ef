"""Orbax and TensorStore failures made readable and survivable: a cause in one line (not
TensorStore's multi-line spec dump), what the operating system said about a failed write, and
the release of the threads a failed save leaves waiting."""

from __future__ import annotations

import logging
import os
import re
import threading

log = logging.getLogger(__name__)


def first_line(error: BaseException) -> str:
  """The root cause of `error` in one line, without TensorStore's multi-line spec dump."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error).split(" See full TensorStore details")[0].strip().splitlines()
  line = text[0] if text else ""
  line = line if len(line) <= 300 else line[:300] + "…"
  return f"{type(error).__name__}: {line}" if line else type(error).__name__


def os_cause(error: BaseException) -> str:
  """What the operating system said about a failed write (e.g. "No space left on device"),
  from an OSError or from TensorStore's "[os_error_code='28']"; else `first_line(error)`."""
  while error.__cause__ is not None:
    error = error.__cause__
  if isinstance(error, OSError) and error.errno:
    return f"{os.strerror(error.errno)} ({error.filename})" if error.filename else \
        os.strerror(error.errno)
  code = re.search(r"os_error_code='?(\d+)", str(error))
  return os.strerror(int(code.group(1))) if code else first_line(error)


def orbax_signal_internals():
  """(the thread class, the signaling client, the key maker) of Orbax's commit threads, the
  private parts `release_orbax_threads` uses; AttributeError or ImportError when an Orbax
  upgrade moved them (tests/test_hostile.py's check then fails, naming this function)."""
  from orbax.checkpoint._src.futures import future, signaling_client
  thread_class = future._SignalingThread
  init = getattr(thread_class.__init__, "__code__", None)
  if init is None or not {"_receive_signals", "_operation_id"} <= set(init.co_names):
    raise AttributeError("orbax's _SignalingThread no longer keeps _receive_signals and "
                         "_operation_id")
  return (thread_class, signaling_client.get_signaling_client(),
          future.AwaitableSignalsContract.get_unique_awaitable_singal_key)


def release_orbax_threads() -> None:
  """Ends the threads of a save that failed before it started writing.

  Orbax starts a (non-daemon) thread per commit step, each waiting up to 10 minutes for a
  signal from the step before; when the save fails synchronously (its directory cannot be
  made) the signals never come and the process cannot exit. Orbax has no public API for this
  (0.12: CheckpointManager.close waits on them), so this documented workaround cancels those
  threads and sends the signals they wait for, after which each returns at once. It uses
  Orbax's private parts (`orbax_signal_internals`, checked by a test that fails when an
  upgrade moves them); without them it warns that the process may wait.
  """
  try:
    thread_class, client, signal_key = orbax_signal_internals()
    for thread in threading.enumerate():
      if isinstance(thread, thread_class) and thread.is_alive():
        thread.cancel()
        for signal in thread._receive_signals:
          client.key_value_set(signal_key(signal, thread._operation_id), "cancelled",
                               allow_overwrite=True)
  except Exception as e:  # noqa: BLE001
    log.warning("could not release Orbax's save threads after the failed save (%s): the process "
                "may wait up to 10 minutes before it exits.", first_line(e))


__all__ = ["first_line", "orbax_signal_internals", "os_cause", "release_orbax_threads"]
