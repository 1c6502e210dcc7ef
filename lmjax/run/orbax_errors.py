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


def release_orbax_threads() -> None:
  """Ends the threads of a save that failed before it started writing.

  Orbax starts a (non-daemon) thread per commit step, each waiting up to 10 minutes for a
  signal from the step before; when the save fails synchronously (its directory cannot be
  made) the signals never come and the process cannot exit. Orbax has no API for this, so we
  cancel those threads and send the signals they wait for, after which each returns at once.
  Best effort: if Orbax's internals change, this does nothing.
  """
  try:
    from orbax.checkpoint._src.futures import future, signaling_client
    client = signaling_client.get_signaling_client()
    for thread in threading.enumerate():
      if isinstance(thread, future._SignalingThread) and thread.is_alive():
        thread.cancel()
        for signal in thread._receive_signals:
          key = future.AwaitableSignalsContract.get_unique_awaitable_singal_key(
              signal, thread._operation_id)
          client.key_value_set(key, "cancelled", allow_overwrite=True)
  except Exception as e:  # noqa: BLE001
    log.debug("could not release Orbax's save threads: %s", e)


__all__ = ["first_line", "os_cause", "release_orbax_threads"]
