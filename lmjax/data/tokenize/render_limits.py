"""Bounds on rendering a chat template, which is a program a downloaded file supplies: its
output is capped (in characters, relative to its input) and, on the main thread, its time
(SIGALRM), so `{% for i in range(10**5) %}{% for j in range(10**5) %}…` or recursion without
end is refused naming the template, rather than running until memory or patience runs out.
(Jinja's sandbox already refuses a single range() over 100,000 items.)"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterable, Iterator

from lmjax.errors import UserError

RENDER_SECONDS = 10.0     # a template renders a chat in milliseconds
MIN_OUTPUT_CHARS = 1_000_000
OUTPUT_PER_INPUT = 16     # a template's output may be this many times its messages' text


class RenderTimeout(Exception):
  """Raised inside a render that ran past its time."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
  """RenderTimeout in the block once `seconds` pass (main thread only; elsewhere no limit)."""
  if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
    yield
    return

  def expire(signum, frame):
    raise RenderTimeout()

  previous = signal.signal(signal.SIGALRM, expire)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def joined_within(pieces: Iterable[str], *, limit: int, where: str) -> str:
  """The pieces a template yields, joined; UserError once they pass `limit` characters."""
  out, size = [], 0
  for piece in pieces:
    size += len(piece)
    if size > limit:
      raise UserError(f"{where}: the chat template renders more than {limit:,} characters for "
                      f"it (a loop without end?): fix the template (data.chat_template).")
    out.append(piece)
  return "".join(out)


def output_limit(input_chars: int) -> int:
  return max(MIN_OUTPUT_CHARS, OUTPUT_PER_INPUT * input_chars)


__all__ = ["RENDER_SECONDS", "RenderTimeout", "joined_within", "output_limit", "time_limit"]
