"""Where documents come from: the built-in corpus, text, JSON Lines and Parquet files.

A document is one `str`. Readers return every document of a source, in a deterministic order,
and turn user mistakes (a glob that matches nothing, an empty file, bytes that are not UTF-8, a
JSON line without the text field) into a `UserError` that names the file, and the line or byte
where that helps.
"""

from __future__ import annotations

import dataclasses
import enum
import glob
import json
import os
from collections.abc import Iterator, Sequence

from lmjax.data.config import BadRecords, DataConfig, EncodingErrors, Source
from lmjax.data.tables import parse_csv, read_parquet
from lmjax.data.tfds_source import read_tfds
from lmjax.errors import UserError


@dataclasses.dataclass
class ReadStats:
  """What reading skipped under `data.bad_records: skip`."""

  skipped: int = 0
  first_problem: str | None = None   # the first skipped record's problem, for the log

  def skip(self, problem: str) -> None:
    self.skipped += 1
    self.first_problem = self.first_problem or problem


def builtin_corpus() -> list[str]:
  """The embedded default corpus: CPython's `pydoc_data.topics` (~80 docs, ~0.5 MB).

  One document per topic, sorted by topic name and stripped, so the order is deterministic for
  a given Python version (the text itself differs slightly between Python versions).
  """
  from pydoc_data.topics import topics  # deferred: 0.5 MB of text, for this corpus only
  return [topics[name].strip() for name in sorted(topics)]


def read_documents(*, source: str | Source, paths: Sequence[str] = (), field: str = "text",
                   encoding_errors: str | EncodingErrors = "strict", split: str = "train",
                   data_dir: str | None = None, bad_records: str | BadRecords = "error",
                   stats: ReadStats | None = None) -> list[str]:
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
  bad_records: "error" raises a UserError on a bad JSON Lines record; "skip" leaves it out and
  counts it in `stats`.
  """
  documents = [doc for chunk in iter_documents(
      source=source, paths=paths, field=field, encoding_errors=encoding_errors, split=split,
      data_dir=data_dir, bad_records=bad_records, stats=stats) for doc in chunk]
  if not documents:
    raise UserError(
        f"The {Source(source).value} source yielded no documents from `data.paths` "
        f"{list(paths) if not isinstance(paths, str) else [paths]}: every line was blank"
        f"{' or skipped' if stats and stats.skipped else ''}. Add documents to those files or "
        f"point `data.paths` elsewhere.")
  return documents


def iter_documents(*, source: str | Source, paths: Sequence[str] = (), field: str = "text",
                   encoding_errors: str | EncodingErrors = "strict", split: str = "train",
                   data_dir: str | None = None, bad_records: str | BadRecords = "error",
                   stats: ReadStats | None = None) -> Iterator[list[str]]:
  """`read_documents` one unit (file or TFDS dataset) at a time: yields each one's documents.

  Units are read only when their turn comes, so a corpus never has to fit in memory at once;
  path errors (a glob matching nothing) are raised before the first unit is read.
  """
  for unit in list_units(source=source, paths=paths):
    yield read_unit(unit, source=source, field=field, encoding_errors=encoding_errors,
                    split=split, data_dir=data_dir, bad_records=bad_records, stats=stats)


def iter_sources(data: DataConfig, stats: ReadStats | None = None) -> Iterator[str]:
  """Every document of every source of `data` (the mixture's, in order), one file at a time."""
  for s in data.sources:
    for chunk in iter_documents(source=s.source, paths=s.paths, field=s.field, split=s.split,
                                data_dir=s.data_dir, encoding_errors=data.encoding_errors,
                                bad_records=data.bad_records, stats=stats):
      yield from chunk


def list_units(*, source: str | Source, paths: Sequence[str] = ()) -> list[str]:
  """The units a source is read in, in order: its files, its TFDS dataset names, or [""] for
  the built-in corpus. Raises a UserError for paths that name nothing."""
  source = _parse_enum(Source, source, key="data.source")
  if isinstance(paths, (str, os.PathLike)):  # one path, not a sequence of characters
    paths = [paths]
  if source is Source.PREPARED:
    raise UserError("A 'prepared' source holds packed rows, not documents; `lmjax train` reads "
                    "it directly.")
  if source is Source.BUILTIN:
    return [""]
  if source is Source.TFDS:
    if not paths:
      raise UserError("The 'tfds' source needs dataset names in `data.paths`, e.g. "
                      "['imdb_reviews/plain_text:1.0.0'], with `data.split` and `data.data_dir`.")
    return [os.fspath(p) for p in paths]
  return _expand_paths(paths, source=source)


def read_unit(unit: str, *, source: str | Source, field: str = "text",
              encoding_errors: str | EncodingErrors = "strict", split: str = "train",
              data_dir: str | None = None, bad_records: str | BadRecords = "error",
              stats: ReadStats | None = None) -> list[str]:
  """The documents of one unit of `list_units` (arguments as for `read_documents`)."""
  source = _parse_enum(Source, source, key="data.source")
  errors = _parse_enum(EncodingErrors, encoding_errors, key="data.encoding_errors")
  policy = _parse_enum(BadRecords, bad_records, key="data.bad_records")
  stats = stats if stats is not None else ReadStats()
  if source is Source.BUILTIN:
    return builtin_corpus()
  if source is Source.TFDS:
    return read_tfds(unit, split=split, data_dir=data_dir, field=field, errors=errors.value,
                     skip=stats.skip if policy is BadRecords.SKIP else None)
  if source is Source.PARQUET:
    return _read_parquet(unit, column=field)
  if source is Source.CSV:
    return _read_csv(unit, column=field, errors=errors)
  if source is Source.TEXT:
    return [read_text(unit, errors=errors)]
  if policy is BadRecords.SKIP and errors is EncodingErrors.STRICT:
    return _parse_jsonl_lines(read_bytes(unit), file=unit, field=field, stats=stats)
  return _parse_jsonl(read_text(unit, errors=errors), file=unit, field=field,
                      stats=stats if policy is BadRecords.SKIP else None)


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
  suffix = {Source.TEXT: "txt", Source.JSONL: "jsonl", Source.CSV: "csv",
            Source.PARQUET: "parquet"}[source]
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


def read_bytes(file: str) -> bytes:
  """A whole file's bytes; UserError when it is empty."""
  with open(file, "rb") as f:
    data = f.read()
  if not data.strip():
    raise UserError(f"The data file {file!r} is empty (or holds only whitespace). Remove it "
                    f"from `data.paths` or give it some text.")
  return data


def read_text(file: str, *, errors: EncodingErrors) -> str:
  """A whole file decoded as UTF-8 (a leading byte-order mark is dropped)."""
  data = read_bytes(file)
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


def _parse_jsonl_lines(data: bytes, *, file: str, field: str, stats: ReadStats) -> list[str]:
  """`_parse_jsonl` decoding line by line, skipping (and counting) lines that are not UTF-8."""
  documents = []
  for line_number, line in enumerate(data.split(b"\n"), start=1):
    try:
      text = line.decode("utf-8")
    except UnicodeDecodeError as e:
      stats.skip(f"{file}:{line_number}: byte offset {e.start} of the line is not UTF-8")
      continue
    documents.extend(_parse_jsonl(text.removeprefix("\ufeff") if line_number == 1 else text,
                                  file=file, field=field, stats=stats, first_line=line_number))
  return documents


def _parse_jsonl(text: str, *, file: str, field: str, stats: ReadStats | None = None,
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
      documents.append(_json_record(line, where=where, field=field))
    except UserError as e:
      if stats is None:
        raise
      stats.skip(str(e).split(". ")[0])
  return documents


def _json_record(line: str, *, where: str, field: str) -> str:
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


def _read_parquet(file: str, *, column: str) -> list[str]:
  """The non-null strings of `column` in a Parquet file, read one row group at a time."""
  values, _ = read_parquet(file, columns=[column], text_columns=[column])
  documents = [v for v in values[column] if v is not None]
  if not documents:
    raise UserError(f"Column {column!r} of the Parquet file {file!r} has no text (no rows, or "
                    f"only nulls). Remove it from `data.paths` or give it some rows.")
  return documents


def _read_csv(file: str, *, column: str, errors: EncodingErrors) -> list[str]:
  """The non-blank cells of `column` in a CSV/TSV file."""
  values, _ = parse_csv(read_text(file, errors=errors), file=file, columns=[column])
  documents = [v for v in values[column] if v.strip()]
  if not documents:
    raise UserError(f"Column {column!r} of the CSV file {file!r} has no text. Remove it from "
                    f"`data.paths` or give it some rows.")
  return documents
