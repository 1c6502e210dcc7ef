"""Where documents come from: the built-in corpus, text, JSON Lines and Parquet files.

A document is one `str`. Readers return every document of a source, in a deterministic order,
and turn user mistakes (a glob that matches nothing, an empty file, bytes that are not UTF-8, a
JSON line without the text field) into a `UserError` that names the file, and the line or byte
where that helps.
"""

from __future__ import annotations

import enum
import glob
import json
import os
from collections.abc import Sequence

from lmjax.errors import UserError


class Source(enum.Enum):
  """The kinds of document source `read_documents` understands (`data.source` in a config)."""

  BUILTIN = "builtin"  # CPython's documentation topics, shipped with every Python
  TEXT = "text"        # one document per file
  JSONL = "jsonl"      # one document per line, from a string field of a JSON object
  PARQUET = "parquet"  # one document per row, from a string column (needs pyarrow)
  TFDS = "tfds"        # one document per example, from a text feature of a TFDS dataset


class EncodingErrors(enum.Enum):
  """What to do with bytes that are not UTF-8 (`data.encoding_errors` in a config)."""

  STRICT = "strict"    # raise a UserError naming the file and the byte offset
  REPLACE = "replace"  # substitute U+FFFD for each bad byte sequence


def builtin_corpus() -> list[str]:
  """The embedded default corpus: CPython's `pydoc_data.topics` (~80 docs, ~0.5 MB).

  One document per topic, sorted by topic name and stripped, so the order is deterministic for
  a given Python version (the text itself differs slightly between Python versions).
  """
  from pydoc_data.topics import topics  # pylint: disable=import-outside-toplevel
  return [topics[name].strip() for name in sorted(topics)]


def read_documents(*, source: str | Source, paths: Sequence[str] = (), field: str = "text",
                   encoding_errors: str | EncodingErrors = "strict", split: str = "train",
                   data_dir: str | None = None) -> list[str]:
  """Every document of a source, in order: -> list[str] of length num_documents.

  source: "builtin" (ignores `paths`), "text" (one document per file, its content unchanged),
  "jsonl" (one document per non-blank line, the string in JSON field `field`) or "parquet"
  (one document per row, the string in column `field`; null rows are skipped), or "tfds"
  (each `paths` entry a TFDS dataset `name[/config][:version]`, read as `split` from
  `data_dir`; one document per example, its text feature `field`).
  paths: files or globs (`**` recurses); each glob's matches are sorted, patterns keep their
  order, and a file named twice is read once.
  encoding_errors: "strict" raises a UserError on bytes that are not UTF-8; "replace"
  substitutes U+FFFD for them.
  """
  source = _parse_enum(Source, source, key="data.source")
  if isinstance(paths, (str, os.PathLike)):  # one path, not a sequence of characters
    paths = [paths]
  errors = _parse_enum(EncodingErrors, encoding_errors, key="data.encoding_errors")
  if source is Source.BUILTIN:
    documents = builtin_corpus()
  elif source is Source.TFDS:
    from lmjax.data.tfds_source import read_tfds  # local: tensorflow_datasets is an extra
    if not paths:
      raise UserError("The 'tfds' source needs dataset names in `data.paths`, e.g. "
                      "['imdb_reviews/plain_text:1.0.0'], with `data.split` and `data.data_dir`.")
    documents = [doc for name in paths for doc in read_tfds(
        name, split=split, data_dir=data_dir, field=field, errors=errors.value)]
  else:
    files = _expand_paths(paths, source=source)
    documents = []
    for file in files:
      if source is Source.PARQUET:
        documents.extend(_read_parquet(file, column=field))
        continue
      text = _read_text(file, errors=errors)
      if source is Source.TEXT:
        documents.append(text)
      else:
        documents.extend(_parse_jsonl(text, file=file, field=field))
  if not documents:
    raise UserError(
        f"The {source.value} source yielded no documents from `data.paths` {list(paths)}: "
        f"every line was blank. Add documents to those files or point `data.paths` elsewhere.")
  return documents


def _parse_enum(kind: type[enum.Enum], value, *, key: str):
  if isinstance(value, kind):
    return value
  try:
    return kind(value)
  except ValueError:
    valid = ", ".join(repr(member.value) for member in kind)
    raise UserError(f"`{key}` is {value!r}, which is not one of {valid}. "
                    f"Set `{key}` to one of those.") from None


def _expand_paths(paths: Sequence[str], *, source: Source) -> list[str]:
  """Files named by `paths` (files or globs), in order, each once."""
  suffix = {Source.TEXT: "txt", Source.JSONL: "jsonl", Source.PARQUET: "parquet"}[source]
  if not paths:
    raise UserError(
        f"The {source.value!r} source needs files, but `data.paths` is empty. Set `data.paths` "
        f"to a list of files or globs (e.g. ['corpus/*.{suffix}']), or use "
        f"`data.source: builtin` for the built-in corpus.")
  files: dict[str, None] = {}  # an ordered set
  for pattern in paths:
    pattern = os.path.expanduser(os.fspath(pattern))
    if os.path.isdir(pattern):
      raise UserError(
          f"`data.paths` names the directory {pattern!r}; name files instead, for example the "
          f"glob {os.path.join(pattern, '*.' + suffix)!r}.")
    matches = sorted(m for m in glob.glob(pattern, recursive=True) if os.path.isfile(m))
    if not matches and os.path.isfile(pattern):  # a file whose name has glob characters
      matches = [pattern]
    if not matches:
      raise UserError(
          f"No file matches {pattern!r} in `data.paths` (working directory "
          f"{os.getcwd()!r}). Fix the path or glob, or remove it from `data.paths`.")
    files.update(dict.fromkeys(matches))
  return list(files)


def _read_text(file: str, *, errors: EncodingErrors) -> str:
  """A whole file decoded as UTF-8 (a leading byte-order mark is dropped)."""
  with open(file, "rb") as f:
    data = f.read()
  if not data.strip():
    raise UserError(f"The data file {file!r} is empty (or holds only whitespace). Remove it "
                    f"from `data.paths` or give it some text.")
  try:
    text = data.decode("utf-8", errors=errors.value)
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise UserError(
        f"The data file {file!r} is not valid UTF-8: byte {data[e.start]:#04x} at byte offset "
        f"{e.start} (line {line}) cannot be decoded ({e.reason}). Convert the file to UTF-8, "
        f"or set `data.encoding_errors: replace` to substitute U+FFFD for undecodable bytes."
    ) from None
  return text.removeprefix("\ufeff")


def _parse_jsonl(text: str, *, file: str, field: str) -> list[str]:
  """The string in `field` of each non-blank line of a JSON Lines file."""
  documents = []
  # Split on "\n" only: str.splitlines would also split at U+2028 and friends, which JSON
  # allows unescaped inside strings.
  for line_number, line in enumerate(text.split("\n"), start=1):
    if not line.strip():
      continue
    where = f"{file}:{line_number}"
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"Line {where} is not valid JSON ({e.msg} at column {e.colno}). Each "
                      f"line of a JSON Lines file must be one JSON object, e.g. "
                      f'{{"{field}": "..."}}; fix or remove that line.') from None
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
    documents.append(value)
  return documents


def _read_parquet(file: str, *, column: str) -> list[str]:
  """The non-null strings of `column` in a Parquet file, read one row group at a time."""
  try:
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError("Parquet sources need pyarrow: pip install 'lmjax[data]' (or pyarrow).") from None
  try:
    parquet = pq.ParquetFile(file)
  except Exception as e:  # pyarrow raises ArrowInvalid / OSError for files that are not Parquet
    raise UserError(f"The data file {file!r} is not a readable Parquet file ({e}).") from None
  names = parquet.schema_arrow.names
  if column not in names:
    raise UserError(f"The Parquet file {file!r} has no column {column!r} (columns: "
                    f"{', '.join(map(repr, names)) or 'none'}). Set `data.field` to the column "
                    f"that holds the text.")
  kind = parquet.schema_arrow.field(column).type
  if not (str(kind) in ("string", "large_string", "string_view")):
    raise UserError(f"Column {column!r} of {file!r} holds {kind}, not strings. Set `data.field` "
                    f"to a text column.")
  documents = []
  for group in range(parquet.num_row_groups):
    values = parquet.read_row_group(group, columns=[column]).column(0).to_pylist()
    documents.extend(v for v in values if v is not None)
  if not documents:
    raise UserError(f"Column {column!r} of the Parquet file {file!r} has no text (no rows, or "
                    f"only nulls). Remove it from `data.paths` or give it some rows.")
  return documents
