"""Bounds on rendering a chat template, which is a program a downloaded file supplies: its
output is capped (in characters, relative to its input) and its time, so
`{% for i in range(10**5) %}{% for j in range(10**5) %}…` or recursion without end is refused
naming the template, rather than running until memory or patience runs out. (Jinja's sandbox
already refuses a single range() over 100,000 items.)

The time limit holds on every thread (a server renders on its workers): the environment
`sandbox()` makes checks the render's deadline at every call the template makes (macros
included, so recursion), at every 256th item of a range(), and at every piece of output; on
the main thread SIGALRM also interrupts whatever else runs past it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Any, Iterable, Iterator

from lmjax.errors import UserError

RENDER_SECONDS = 10.0     # a template renders a chat in milliseconds
MIN_OUTPUT_CHARS = 1_000_000
OUTPUT_PER_INPUT = 16     # a template's output may be this many times its messages' text


class RenderTimeout(Exception):
  """Raised inside a render that ran past its time."""


_local = threading.local()  # this thread's render deadline (time.monotonic()), or None


def check_deadline() -> None:
  """RenderTimeout once the running render (on this thread) is past its time."""
  deadline = getattr(_local, "deadline", None)
  if deadline is not None and time.monotonic() > deadline:
    raise RenderTimeout()


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
  """RenderTimeout in the block once `seconds` pass: at the checks of a `sandbox()`'s template
  on any thread, and anywhere on the main thread (SIGALRM)."""
  _local.deadline = time.monotonic() + seconds
  try:
    with _alarm(seconds):
      yield
  finally:
    _local.deadline = None


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
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


class _TimedRange:
  """The sandbox's range() (at most its MAX_RANGE items), checking the deadline as it is read."""

  def __init__(self, items: range):
    self._items = items

  def __iter__(self) -> Iterator[int]:
    for n, item in enumerate(self._items):
      if not n & 255:
        check_deadline()
      yield item

  def __len__(self) -> int:
    return len(self._items)

  def __getitem__(self, index: Any) -> Any:
    return self._items[index]

  def __contains__(self, item: Any) -> bool:
    return item in self._items

  def __reversed__(self) -> Iterator[int]:
    return iter(_TimedRange(self._items[::-1]))


def sandbox(**options: Any) -> Any:
  """Jinja's immutable sandbox whose calls and range() check the render's deadline."""
  from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

  class TimedSandbox(ImmutableSandboxedEnvironment):
    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 -- jinja2's signature
      check_deadline()
      return super().call(__context, __obj, *args, **kwargs)

  env = TimedSandbox(**options)
  env.globals["range"] = lambda *args: _TimedRange(safe_range(*args))
  return env


def joined_within(pieces: Iterable[str], *, limit: int, where: str) -> str:
  """The pieces a template yields, joined; UserError once they pass `limit` characters."""
  out, size = [], 0
  for piece in pieces:
    check_deadline()
    size += len(piece)
    if size > limit:
      raise UserError(f"{where}: the chat template renders more than {limit:,} characters for "
                      f"it (a loop without end?): fix the template (data.chat_template).")
    out.append(piece)
  return "".join(out)


def output_limit(input_chars: int) -> int:
  return max(MIN_OUTPUT_CHARS, OUTPUT_PER_INPUT * input_chars)


__all__ = ["RENDER_SECONDS", "RenderTimeout", "check_deadline", "joined_within", "output_limit",
           "sandbox", "time_limit"]
