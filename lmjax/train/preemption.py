"""Turning SIGTERM/SIGINT into a clean stop at the next step boundary.

The first signal only raises a flag: the loop finishes the step it is in, saves a checkpoint,
waits for the write and exits 0. A second signal means "now": it exits at once (status 130 for
SIGINT, 143 for SIGTERM), which the async checkpointer survives because Orbax only publishes a
checkpoint once it is complete.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionGuard:
  """Context manager that records the first SIGTERM/SIGINT instead of dying of it."""

  def __init__(self):
    self.received: int | None = None
    self._previous: dict[int, object] = {}

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    if self.received is not None:
      log.warning("second %s: exiting now", signal.Signals(signum).name)
      logging.shutdown()  # flush the handlers: os._exit skips every exit hook
      os._exit(128 + signum)
    self.received = signum
    log.warning("%s received: saving a checkpoint at the end of this step, then exiting (send "
                "it again to exit at once)", signal.Signals(signum).name)

  @property
  def requested(self) -> bool:
    return self.received is not None

  @property
  def signal_name(self) -> str | None:
    return signal.Signals(self.received).name if self.received is not None else None

  def __enter__(self) -> PreemptionGuard:
    if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
      for sig in _SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
