"""What the `lmjax` command sets up for its process, and library code never does.

    configure_logging()   the `lmjax` logger hierarchy's messages on stderr as "lmjax: …"
                          (through tqdm, so a progress bar is not torn), INFO and up
    quiet_orbax_leftovers()   hides the tracebacks a failed Orbax restore or save leaves
                          behind in its logs, pending coroutines and threads, after lmjax has reported the failure

Only lmjax.cli.commands imports this module (an import-linter contract says so).
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings

import tqdm

LOGGER = "lmjax"


class _StderrHandler(logging.Handler):
  """Writes records to the current sys.stderr (looked up at each write, so that redirections,
  e.g. pytest's capture, are honoured) through tqdm, flushing each."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      tqdm.tqdm.write(self.format(record), file=sys.stderr)
      sys.stderr.flush()
    except Exception:  # noqa: BLE001 -- logging must never raise into the caller
      self.handleError(record)


def configure_logging(level: int = logging.INFO) -> None:
  """Shows the lmjax loggers' messages on stderr, prefixed "lmjax: ". Idempotent."""
  logger = logging.getLogger(LOGGER)
  if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("lmjax: %(message)s"))
    logger.addHandler(handler)
  logger.setLevel(level)
  logger.propagate = False  # the root logger (absl's, say) would print them a second time


def quiet_orbax_leftovers() -> None:
  """Hides the tracebacks a failed Orbax restore leaves in its pending coroutines and threads
  (the same error, already reported, and "Event loop is closed"); other errors still print.
  Idempotent."""
  def is_leftover(exc) -> bool:
    text = str(exc)
    return ("Encountered error while reading" in text or "Event loop is closed" in text
            or "os_error_code=" in text or isinstance(exc, OSError))  # failed writes, reported

  unraisable, thread_hook, excepthook = sys.unraisablehook, threading.excepthook, sys.excepthook
  if getattr(unraisable, "lmjax_quiet", False):
    return

  def quiet_unraisable(info):
    if not is_leftover(info.exc_value):
      unraisable(info)

  def quiet_thread(args):
    if not is_leftover(args.exc_value):
      thread_hook(args)

  def quiet_except(kind, value, traceback):  # errors printed from Orbax's C++ callbacks
    if not is_leftover(value):
      excepthook(kind, value, traceback)

  def quiet_log(record: logging.LogRecord) -> bool:  # Orbax logs a failed save's traceback
    return not (record.exc_info and is_leftover(record.exc_info[1])) \
        and "Failed to run" not in record.getMessage() \
        and "Removing existing directory since it is not finalized" not in record.getMessage()

  logging.getLogger("absl").addFilter(quiet_log)
  # a save cancelled after its failure leaves coroutines that never ran
  warnings.filterwarnings("ignore", message="coroutine .* was never awaited",
                          category=RuntimeWarning)
  logging.getLogger("asyncio").addFilter(
      lambda record: "exception was never retrieved" not in record.getMessage())
  quiet_unraisable.lmjax_quiet = True
  sys.unraisablehook, threading.excepthook = quiet_unraisable, quiet_thread
  sys.excepthook = quiet_except


def configure_process() -> None:
  """Everything above, for the `lmjax` command."""
  configure_logging()
  quiet_orbax_leftovers()
