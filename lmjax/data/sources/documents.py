"""Where documents come from: the built-in corpus, text, JSON Lines and Parquet files.

A document is one `str`. Readers return every document of a source, in a deterministic order,
and turn user mistakes (a glob that matches nothing, an empty file, bytes that are not UTF-8, a
JSON line without the text field) into a `UserError` that names the file, and the line or byte
where that helps.

Globs are expanded by lmjax.data.sources.globs (`**` recurses, a symbolic-link loop ends the walk);
each real file is read once, under the first name it is matched by, however many patterns or links
reach it.

Untidy trees: a glob names files nobody looked at one by one (CPython's `Lib/**/*.py` holds
empty `__init__.py` files), so an empty or whitespace-only file a glob matches is left out and
counted instead of stopping the run. A file named explicitly in `data.paths` must hold text (a
UserError otherwise), unless `data.bad_records: skip`, which also leaves out any empty file and,
under `data.encoding_errors: strict`, any file that is not UTF-8. A text file the tokenizer turns
into no tokens is left out the same way (see `keep_tokenized`). The files left out are counted in
`ReadStats.skipped_files`, which the corpus reports once with a few of their names; a source left
with no documents at all is a UserError naming its paths.
"""

from __future__ import annotations

import dataclasses
import enum
import glob
import os
from collections.abc import Iterator, Sequence

from lmjax.data.config import BadRecords, DataConfig, EncodingErrors, Source
from lmjax.data.sources.file_readers import (empty_file, not_utf8, parse_jsonl, parse_jsonl_lines,
                                             read_csv_texts, read_parquet_texts, slurp)
from lmjax.data.sources.globs import glob_files
from lmjax.data.sources.hf_datasets import read_hf_texts
from lmjax.data.sources.read_stats import ReadStats, first_few
from lmjax.data.sources.tfds import read_tfds
from lmjax.errors import UserError
from lmjax.files import special_file
from lmjax.storage import file_size, is_remote

@dataclasses.dataclass(frozen=True)
class Unit:
  """One file (or TFDS dataset name) of a source, and whether a glob matched it."""

  name: str
  globbed: bool = False  # matched by a glob, not named: left out (not an error) when empty


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
  counts it in `stats`. Files left out (see the module docstring) are counted there too.
  """
  units = find_units(source=source, paths=paths)
  return [doc for docs in read_units(
      units, source=source, paths=paths, field=field, encoding_errors=encoding_errors,
      split=split, data_dir=data_dir, bad_records=bad_records, stats=stats) for doc in docs]


def read_units(units: Sequence[Unit], *, source: str | Source, paths: Sequence[str] = (),
               field: str = "text", encoding_errors: str | EncodingErrors = "strict",
               split: str = "train", data_dir: str | None = None,
               bad_records: str | BadRecords = "error", stats: ReadStats | None = None
               ) -> list[list[str]]:
  """The documents of each of `units` (from `find_units`), in step with them; arguments as
  for `read_documents` (`paths` names the source in errors). UserError when none has any."""
  stats = stats if stats is not None else ReadStats()
  files_before = len(stats.skipped_files)
  per_unit = [read_unit(unit, source=source, field=field, encoding_errors=encoding_errors,
                        split=split, data_dir=data_dir, bad_records=bad_records, stats=stats)
              for unit in units]
  if not any(per_unit):
    raise _no_documents(source, paths, skipped_files=stats.skipped_files[files_before:],
                        skipped_records=stats.skipped)
  return per_unit


def _no_documents(source: str | Source, paths: Sequence[str], *, skipped_files: list[str],
                  skipped_records: int) -> UserError:
  named = list(paths) if not isinstance(paths, str) else [paths]
  if skipped_files:
    return UserError(
        f"The {Source(source).value} source has no usable text in `data.paths` {named}: all "
        f"{len(skipped_files)} file(s) were left out as empty or unusable "
        f"({first_few(skipped_files)}). Point "
        f"`data.paths` at files that hold text, give those files some, or (for files that are "
        f"not UTF-8) set `data.encoding_errors: replace`.")
  return UserError(
      f"The {Source(source).value} source yielded no documents from `data.paths` {named}: "
      f"every line was blank{' or skipped' if skipped_records else ''}. Add documents to those "
      f"files or point `data.paths` elsewhere.")


def iter_documents(*, source: str | Source, paths: Sequence[str] = (), field: str = "text",
                   encoding_errors: str | EncodingErrors = "strict", split: str = "train",
                   data_dir: str | None = None, bad_records: str | BadRecords = "error",
                   stats: ReadStats | None = None) -> Iterator[list[str]]:
  """`read_documents` one unit (file or TFDS dataset) at a time: yields each one's documents
  ([] for a file left out).

  Units are read only when their turn comes, so a corpus never has to fit in memory at once;
  path errors (a glob matching nothing) are raised before the first unit is read.
  """
  for unit in find_units(source=source, paths=paths):
    yield read_unit(unit, source=source, field=field, encoding_errors=encoding_errors,
                    split=split, data_dir=data_dir, bad_records=bad_records, stats=stats)


def iter_sources(data: DataConfig, stats: ReadStats | None = None) -> Iterator[str]:
  """Every document of every source of `data` (the mixture's, in order), one file at a time."""
  for s in data.sources:
    for chunk in iter_documents(source=s.source, paths=s.paths, field=s.field, split=s.split,
                                data_dir=s.data_dir, encoding_errors=data.encoding_errors,
                                bad_records=data.bad_records, stats=stats):
      yield from chunk


def find_units(*, source: str | Source, paths: Sequence[str] = ()) -> list[Unit]:
  """The units a source is read in, in order: its files, its TFDS dataset names, or [""] for
  the built-in corpus. Raises a UserError for paths that name nothing."""
  source = _parse_enum(Source, source, key="data.source")
  if isinstance(paths, (str, os.PathLike)):  # one path, not a sequence of characters
    paths = [paths]
  if source is Source.PREPARED:
    raise UserError("A 'prepared' source holds packed rows, not documents; `lmjax train` reads "
                    "it directly.")
  if source is Source.BUILTIN:
    return [Unit("")]
  if source is Source.TFDS:
    if not paths:
      raise UserError("The 'tfds' source needs dataset names in `data.paths`, e.g. "
                      "['imdb_reviews/plain_text:1.0.0'], with `data.split` and `data.data_dir`.")
    return [Unit(os.fspath(p)) for p in paths]
  if source is Source.HF_DATASETS:
    if not paths:
      raise UserError("The 'hf_datasets' source needs datasets in `data.paths`: directories "
                      "written by save_to_disk, or local data files, with `data.split` and "
                      "`data.field`.")
    return [Unit(os.path.expanduser(os.fspath(p))) for p in paths]
  return _expand_paths(paths, source=source)


def describe_files(units: Sequence[Unit]) -> str:
  """"N files, S MB": what a source's paths found, for the log."""
  size = 0
  for unit in units:
    try:
      size += file_size(unit.name)
    except OSError:  # gone since it was listed: reading it will say so
      pass
  return f"{len(units)} file(s), {size / 1e6:.1f} MB"


def read_unit(unit: str | Unit, *, source: str | Source, field: str = "text",
              encoding_errors: str | EncodingErrors = "strict", split: str = "train",
              data_dir: str | None = None, bad_records: str | BadRecords = "error",
              stats: ReadStats | None = None) -> list[str]:
  """The documents of one unit of `find_units` (arguments as for `read_documents`); [] for a
  file left out (counted in `stats`). A bare name is a file named explicitly."""
  source = _parse_enum(Source, source, key="data.source")
  errors = _parse_enum(EncodingErrors, encoding_errors, key="data.encoding_errors")
  policy = _parse_enum(BadRecords, bad_records, key="data.bad_records")
  stats = stats if stats is not None else ReadStats()
  unit = unit if isinstance(unit, Unit) else Unit(os.fspath(unit))
  file = unit.name
  if source is Source.BUILTIN:
    return builtin_corpus()
  if source is Source.TFDS:
    return read_tfds(file, split=split, data_dir=data_dir, field=field, errors=errors.value,
                     skip=stats.skip if policy is BadRecords.SKIP else None)
  if source is Source.PARQUET:
    return read_parquet_texts(file, column=field)
  if source is Source.HF_DATASETS:
    return read_hf_texts(file, split=split, field=field)
  skip = policy is BadRecords.SKIP
  data = slurp(file)
  if not data.strip():
    if not (unit.globbed or skip):
      raise empty_file(file)
    stats.skip_file(file, "empty")
    return []
  if source is Source.JSONL and skip and errors is EncodingErrors.STRICT:
    return parse_jsonl_lines(data, file=file, field=field, stats=stats)
  try:
    text = data.decode("utf-8", errors=errors.value).removeprefix("\ufeff")
  except UnicodeDecodeError as e:
    if not skip:
      raise not_utf8(file, data, e, can_skip=True) from None
    stats.skip_file(file, f"not UTF-8 at byte {e.start}")
    return []
  if source is Source.CSV:
    return read_csv_texts(text, file=file, column=field)
  if source is Source.TEXT:
    if not text.strip():  # Unicode whitespace only (no-break spaces, …)
      if not (unit.globbed or skip):
        raise empty_file(file)
      stats.skip_file(file, "whitespace only")
      return []
    return [text]
  return parse_jsonl(text, file=file, field=field, stats=stats if skip else None)


def keep_tokenized(unit: str, token_docs: list, *, source: str | Source, stats: ReadStats
                   ) -> list:
  """`token_docs` (one unit's documents, tokenized) without those of no tokens, each counted in
  `stats`: a text file as a file left out, any other source's document as a skipped record.

  A document of no tokens adds nothing to learn from but its packing ids, and a text source's
  file of them is as unusable as an empty one.
  """
  kept = [doc for doc in token_docs if len(doc)]
  if len(kept) < len(token_docs):
    if _parse_enum(Source, source, key="data.source") is Source.TEXT:
      stats.skip_file(unit, "no tokens")
    else:
      for _ in range(len(token_docs) - len(kept)):
        stats.skip(f"{unit}: a document that tokenizes to no tokens")
  return kept


def _parse_enum(kind: type[enum.Enum], value, *, key: str):
  if isinstance(value, kind):
    return value
  try:
    return kind(value)
  except ValueError:
    valid = ", ".join(repr(member.value) for member in kind)
    raise UserError(f"`{key}` is {value!r}, which is not one of {valid}. "
                    f"Set `{key}` to one of those.") from None


def _expand_paths(paths: Sequence[str], *, source: Source) -> list[Unit]:
  """Files named by `paths` (files or globs), in order, each real file once (named explicitly
  when any of its names is not a glob match)."""
  suffix = {Source.TEXT: "txt", Source.JSONL: "jsonl", Source.CSV: "csv",
            Source.PARQUET: "parquet"}[source]
  if not paths:
    raise UserError(
        f"The {source.value!r} source needs files, but `data.paths` is empty. Set `data.paths` "
        f"to a list of files or globs (e.g. ['corpus/*.{suffix}']), or use "
        f"`data.source: builtin` for the built-in corpus.")
  files: dict[str, Unit] = {}  # by real path, in the order first matched
  for pattern in paths:
    pattern = os.path.expanduser(os.fspath(pattern))
    if os.path.isdir(pattern):
      raise UserError(
          f"`data.paths` names the directory {pattern!r}; name files instead, for example the "
          f"glob {os.path.join(pattern, '*.' + suffix)!r}.")
    matches = glob_files(pattern)
    globbed = glob.has_magic(pattern)
    if not matches and os.path.isfile(pattern):  # a file whose name has glob characters
      matches, globbed = [pattern], False
    if not matches and special_file(pattern):
      raise UserError(f"`data.paths` names {pattern!r}, which is {special_file(pattern)}, not a "
                      f"file: lmjax reads data from files. Write the data to a file and name it.")
    if not matches:
      where = "" if is_remote(pattern) else f" (working directory {os.getcwd()!r})"
      raise UserError(f"No file matches {pattern!r} in `data.paths`{where}. Fix the path or "
                      f"glob, or remove it from `data.paths`.")
    for match in matches:
      real = os.path.realpath(match)
      first = files.setdefault(real, Unit(match, globbed))
      if first.globbed and not globbed:  # named explicitly after all
        files[real] = Unit(first.name, globbed=False)
  return list(files.values())
