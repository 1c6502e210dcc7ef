"""Allowed ranges of numeric config values, checked by every config section's dataclass.

Each section declares `{field: Range}` and calls `check_ranges` in `__post_init__`, so a value
that cannot be right (a NaN or negative learning rate, Adam's beta of 1, a zero epsilon) is
refused where it is read, naming the key, the value and the range.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from lmjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Range:
  """The values a numeric config key may take: `low`/`high` bounds (None: unbounded), each
  inclusive unless marked open; `why` says what the bound means when it is not obvious."""

  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  why: str = ""

  def __contains__(self, value: float) -> bool:
    if isinstance(value, float) and not math.isfinite(value):  # NaN, infinities: in no range
      # (an int of any size compares exactly with the float bounds; math.isfinite would
      # overflow on one past 1e308)
      return False
    if self.low is not None and (value <= self.low if self.low_open else value < self.low):
      return False
    return self.high is None or (value < self.high if self.high_open else value <= self.high)

  def __str__(self) -> str:
    low = "(-inf" if self.low is None else f"{'(' if self.low_open else '['}{_shown(self.low)}"
    high = "inf)" if self.high is None else f"{_shown(self.high)}{')' if self.high_open else ']'}"
    return f"{low}, {high}"


def _shown(bound: float) -> str:
  """A bound as written: integers in full (2147483647, not 2.14748e+09)."""
  return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1, high_open=True)  # Adam's betas, dropout: 1 would never forget


def check_ranges(config: Any, section: str, ranges: Mapping[str, Range]) -> None:
  """UserError naming the first field of `config` (a dataclass) outside its range; None values
  (optional fields left unset) are not checked."""
  for name, allowed in ranges.items():
    value = getattr(config, name)
    if value is None or (not isinstance(value, bool) and value in allowed):
      continue
    reason = f" ({allowed.why})" if allowed.why else ""
    shown = f"{value:g}" if isinstance(value, float) else repr(value)
    raise UserError(f"{section}.{name}={shown} is out of range: it must be in {allowed}{reason}.")


def check_unused(config: Any, section: str, switch: str, *, off: str, fix: str) -> None:
  """UserError when section `config` is switched off by its field `switch` (`off` says what
  that means) while another of its fields is set away from its default: that setting would
  be silently ignored. `fix` says what to do instead."""
  set_ = [f"{section}.{f.name}={getattr(config, f.name)!r}" for f in dataclasses.fields(config)
          if f.name != switch and getattr(config, f.name) != f.default]
  if set_:
    raise UserError(f"{section}.{switch} is {off}, but {set_[0]} is set: {fix}.")

