"""One file of each text format, read whole: plain text (UTF-8, a leading byte-order mark
dropped), JSON Lines (one object per line, its text in a field), Parquet and CSV/TSV columns.
Each mistake is a UserError naming the file and the line or byte; JSON Lines records can be
skipped and counted instead (ReadStats)."""

from __future__ import annotations

import json
import os

from lmjax.data.config import EncodingErrors
from lmjax.data.sources.read_stats import ReadStats
from lmjax.data.sources.tables import parse_csv, read_parquet
from lmjax.errors import UserError
from lmjax.storage import file_size, is_remote, read_bytes


def is_blank(file: str, *, look_at: int = 1 << 16) -> bool:
  """Whether `file` is empty or holds only ASCII whitespace (files over `look_at` bytes are
  taken as not blank without reading them)."""
  size = file_size(file)
  return size == 0 or (size <= look_at and not slurp(file).strip())


def slurp(file: str) -> bytes:
  if is_remote(file):
    return read_bytes(file)
  with open(file, "rb") as f:
    return f.read()


def empty_file(file: str) -> UserError:
  return UserError(f"The data file {file!r} is empty (or holds only whitespace). Remove it "
                   f"from `data.paths` or give it some text.")


def not_utf8(file: str, data: bytes, e: UnicodeDecodeError, *, can_skip: bool = False
              ) -> UserError:
  line = data.count(b"\n", 0, e.start) + 1
  return UserError(
      f"The data file {file!r} is not valid UTF-8: byte {data[e.start]:#04x} at byte offset "
      f"{e.start} (line {line}) cannot be decoded ({e.reason}). Convert the file to UTF-8, "
      f"or set `data.encoding_errors: replace` to substitute U+FFFD for undecodable bytes"
      + (", or `data.bad_records: skip` to leave such files out." if can_skip else "."))


def read_text(file: str, *, errors: EncodingErrors) -> str:
  """A whole file decoded as UTF-8 (a leading byte-order mark is dropped); UserError when it is
  empty or (`errors` strict) not UTF-8."""
  data = slurp(file)
  if not data.strip():
    raise empty_file(file)
  try:
    text = data.decode("utf-8", errors=errors.value)
  except UnicodeDecodeError as e:
    raise not_utf8(file, data, e) from None
  return text.removeprefix("\ufeff")


def parse_jsonl_lines(data: bytes, *, file: str, field: str, stats: ReadStats) -> list[str]:
  """`parse_jsonl` decoding line by line, skipping (and counting) lines that are not UTF-8."""
  documents = []
  for line_number, line in enumerate(data.split(b"\n"), start=1):
    try:
      text = line.decode("utf-8")
    except UnicodeDecodeError as e:
      stats.skip(f"{file}:{line_number}: byte offset {e.start} of the line is not UTF-8")
      continue
    documents.extend(parse_jsonl(text.removeprefix("\ufeff") if line_number == 1 else text,
                                  file=file, field=field, stats=stats, first_line=line_number))
  return documents


def parse_jsonl(text: str, *, file: str, field: str, stats: ReadStats | None = None,
                 first_line: int = 1) -> list[str]:
  """The string in `field` of each non-blank line of a JSON Lines file.

  A bad line raises a UserError naming it, or with `stats` is skipped and counted there.
  """
  documents = []
  # Split on "\n" only: str.splitlines would also split at U+2028 and friends, which JSON
  # allows unescaped inside strings.
  for line_number, line in enumerate(text.split("\n"), start=first_line):
    if not line.strip():
      continue
    where = f"{file}:{line_number}"
    try:
      documents.append(json_record(line, where=where, field=field))
    except UserError as e:
      if stats is None:
        raise
      stats.skip(str(e).split(". ")[0])
  return documents


def json_record(line: str, *, where: str, field: str) -> str:
  """The string in `field` of one JSON Lines line; UserError naming `where` otherwise."""
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise UserError(f"Line {where} is not valid JSON ({e.msg} at column {e.colno}). Each "
                    f"line of a JSON Lines file must be one JSON object, e.g. "
                    f'{{"{field}": "..."}}; fix or remove that line, or set `data.bad_records: skip`.'
                    ) from None
  if not isinstance(record, dict):
    raise UserError(f"Line {where} holds a JSON {type(record).__name__}, not an object. Each "
                    f'line must be one JSON object with a string field, e.g. {{"{field}": '
                    f'"..."}}.')
  value = record.get(field)
  if not isinstance(value, str):
    problem = "has no field" if field not in record else (
        f"has a value of type {type(value).__name__}, not a string, in field")
    keys = ", ".join(repr(k) for k in record) or "none"
    raise UserError(f"Line {where} {problem} {field!r} (keys present: {keys}). Set "
                    f"`data.field` to the key that holds the text, or fix that line.")
  return value


def read_parquet_texts(file: str, *, column: str) -> list[str]:
  """The non-null strings of `column` in a Parquet file, read one row group at a time."""
  values, _ = read_parquet(file, columns=[column], text_columns=[column])
  documents = [v for v in values[column] if v is not None]
  if not documents:
    raise UserError(f"Column {column!r} of the Parquet file {file!r} has no text (no rows, or "
                    f"only nulls). Remove it from `data.paths` or give it some rows.")
  return documents


def read_csv_texts(text: str, *, file: str, column: str) -> list[str]:
  """The non-blank cells of `column` in a CSV/TSV file's text."""
  values, _ = parse_csv(text, file=file, columns=[column])
  documents = [v for v in values[column] if v.strip()]
  if not documents:
    raise UserError(f"Column {column!r} of the CSV file {file!r} has no text. Remove it from "
                    f"`data.paths` or give it some rows.")
  return documents


__all__ = ["empty_file", "is_blank", "json_record", "not_utf8", "parse_jsonl", "parse_jsonl_lines",
           "read_csv_texts", "read_parquet_texts", "read_text", "slurp"]
