"""Tokenizer files travel with the weights: which files make a tokenizer, and copying them."""

from __future__ import annotations

import os

from lmjax.errors import UserError
from lmjax.storage import as_path, copy_file

# Files of HF fast and slow tokenizers; plus any `*.model`
# (sentencepiece).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
)


def tokenizer_file_names(directory: str | os.PathLike) -> list[str]:
  """The tokenizer files present in `directory`, in a stable order."""
  directory = as_path(directory)
  names = [name for name in TOKENIZER_FILES if (directory / name).is_file()]
  return names + sorted(p.name for p in directory.glob("*.model") if p.is_file())


def copy_tokenizer_files(src_dir: str | os.PathLike, dst_dir: str | os.PathLike) -> list[str]:
  """Copies the tokenizer files of `src_dir` into `dst_dir` (created if needed).

  Returns the names copied, [] when `src_dir` holds none (the caller decides whether that is
  an error). Raises UserError when `src_dir` is not a directory.
  """
  src, dst = as_path(src_dir), as_path(dst_dir)
  if not src.is_dir():
    raise UserError(f"tokenizer directory {src} does not exist or is not a directory.")
  names = tokenizer_file_names(src)
  if names:
    dst.mkdir(parents=True, exist_ok=True)
  for name in names:
    copy_file(src / name, dst / name)
  return names


__all__ = ["TOKENIZER_FILES", "copy_tokenizer_files", "tokenizer_file_names"]
