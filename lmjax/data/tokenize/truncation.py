"""Cutting an example (a text, or a pair of texts) to a token budget, as transformers does."""

from __future__ import annotations

from lmjax.errors import UserError


def fit_longest_first(first: int, second: int | None, budget: int) -> tuple[int, int | None]:
  """Lengths of two token sequences cut to `budget` tokens in all, as Hugging Face `tokenizers`
  (and so transformers) cut with "longest_first": only the longer one while the shorter fits in
  half the budget, else both to half, the longer keeping an odd token (the second on a tie)."""
  if budget < 1:
    raise UserError(f"no room for text: the sequence length leaves {budget} token(s) after the "
                    f"special tokens; raise train.seq_len.")
  if second is None:
    return min(first, budget), None
  if first + second <= budget:
    return first, second
  swap = first > second
  short, long = (second, first) if swap else (first, second)
  if 2 * short <= budget:
    long = budget - short
  else:
    short, long = budget // 2, budget - budget // 2
  return (long, short) if swap else (short, long)
