"""Cutting an example (a text, or a pair of texts) to a token budget, as transformers does."""

from __future__ import annotations

from lmjax.errors import UserError


def fit_longest_first(first: int, second: int | None, budget: int) -> tuple[int, int | None]:
  """Lengths of two token sequences cut to `budget` tokens in all, a token at a time from the
  longer one (from the second on a tie), as transformers' "longest_first" truncation does."""
  if budget < 1:
    raise UserError(f"no room for text: the sequence length leaves {budget} token(s) after the "
                    f"special tokens; raise train.seq_len.")
  if second is None:
    return min(first, budget), None
  excess = first + second - budget
  if excess <= 0:
    return first, second
  longer_cut = min(excess, abs(first - second))  # first the longer down to the shorter …
  first, second = (first - longer_cut, second) if first > second else (first, second - longer_cut)
  excess -= longer_cut  # … then both in turn, the second first
  return first - excess // 2, second - (excess + 1) // 2
