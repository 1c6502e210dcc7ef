"""Long texts handed to the `tokenizers` library in bounded pieces.

The Rust tokenizer works on a whole text at once: one 50 MB line without a newline takes
memory and time out of proportion, or aborts inside the library. `split_long` cuts a text
longer than PIECE_CHARS into pieces of at most that many characters, each cut just before a
space where the window has one: for the pre-tokenizers that split at spaces (GPT-2's byte-level
regex, Metaspace, BERT's whitespace split) the pieces' ids joined are the whole text's ids. A
window without a space is cut where it ends (ids at that seam may differ from the uncut text's,
which no tokenizer could encode in one piece anyway).
"""

from __future__ import annotations

from typing import Sequence

PIECE_CHARS = 1 << 20


def split_long(text: str, limit: int | None = None) -> list[str]:
  """`text` as pieces of at most `limit` (default PIECE_CHARS) characters, joined back to it."""
  limit = limit or PIECE_CHARS
  pieces, start = [], 0
  while len(text) - start > limit:
    cut = text.rfind(" ", start + 1, start + limit + 1)  # the space starts the next piece
    cut = cut if cut > start else start + limit
    pieces.append(text[start:cut])
    start = cut
  pieces.append(text[start:])
  return pieces


def encode_in_pieces(encode_batch, texts: Sequence[str]) -> list[list[int]]:
  """`encode_batch(list of str) -> list of id lists` over `texts`, a long text's pieces joined."""
  owners, flat = [], []
  for i, text in enumerate(texts):
    for piece in split_long(text):
      owners.append(i)
      flat.append(piece)
  if len(flat) == len(texts):  # nothing was long: the common case, unchanged
    return encode_batch(flat)
  ids: list[list[int]] = [[] for _ in texts]
  for owner, piece_ids in zip(owners, encode_batch(flat)):
    ids[owner].extend(piece_ids)
  return ids


__all__ = ["PIECE_CHARS", "encode_in_pieces", "split_long"]
