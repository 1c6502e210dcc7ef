"""File-system helpers every layer may use: staged output directories, atomic writes, JSON reads.

A staged directory is built under a hidden sibling name and renamed into place only when
complete, so a failed conversion or data preparation leaves nothing behind, and its destination
is locked meanwhile (lmjax.lock), so two writers never build it at once; an atomic write
replaces a file in one rename, so a crash never leaves half of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import stat
import tempfile
import uuid
from typing import Any, Iterator

from lmjax.errors import UserError
from lmjax.lock import LOCK_FILE, DirectoryLock
from lmjax.storage import Path, as_path, filesystem, is_remote


def check_new_directory(destination: str | os.PathLike) -> Path:
  """`destination` as a path (lmjax.storage); UserError if it exists and is not an empty
  directory (a lock file alone, lmjax.lock, counts as empty: its holder is named when the lock
  is taken)."""
  destination = as_path(destination)
  if destination.exists() and (not destination.is_dir() or not is_empty(destination)):
    raise UserError(f"{destination} already exists and is not empty: choose a new directory or "
                    f"remove it first.")
  return destination


_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_file(path: str | os.PathLike) -> str | None:
  """What `path` is when it exists but is neither a regular file nor a directory ("a FIFO
  (named pipe)", "a character device", …), else None. lmjax reads no such input: a FIFO
  blocks until someone writes, /dev/zero never ends."""
  if is_remote(path):  # object storage holds objects only
    return None
  try:
    mode = os.stat(path).st_mode
  except (OSError, ValueError):
    return None
  return next((what for test, what in _SPECIAL if test(mode)), None)


def check_new_file(path: str | os.PathLike, *, flag: str = "--output") -> Path:
  """`path` as a path object (lmjax.storage: gs:// and s3:// too); UserError if something is
  there already (outputs never overwrite). Such a file is written whole at the end
  (`write_text_atomic`): locally by a rename, on a bucket in one upload (an object appears whole
  or not at all)."""
  path = as_path(path)
  if path.exists():
    raise UserError(f"{flag} {path} already exists: choose a new file (lmjax never overwrites an "
                    f"output).")
  return path


def is_empty(directory: Path) -> bool:
  """Whether `directory` holds nothing but, maybe, a lock file (lmjax.lock)."""
  return all(child.name == LOCK_FILE for child in directory.iterdir())


@contextlib.contextmanager
def staged_directory(destination: str | os.PathLike) -> Iterator[pathlib.Path]:
  """A fresh sibling directory of `destination`, renamed to it when the block succeeds.

  Refuses a destination that exists and is not an empty directory, and one another process
  is writing (its lock, lmjax.lock, names it); on failure the staging directory is removed and
  `destination` is as it was. A bucket has no rename: there the files are written in place,
  under the lock, and removed on failure.
  """
  destination = check_new_directory(destination)
  with DirectoryLock(destination) as lock:
    destination = check_new_directory(destination)  # again, now that no one else writes it
    if is_remote(destination):
      try:
        yield destination
      except BaseException:
        for child in destination.iterdir() if destination.exists() else ():
          if child.name != LOCK_FILE:
            child.rmtree() if child.is_dir() else child.unlink(missing_ok=True)
        raise
      return
    staging = destination.parent / f".{destination.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
      yield staging
      lock.relocate(staging)  # the lock travels with the directory that replaces this one
      destination.rmdir()
      os.replace(staging, destination)
      lock.follow(destination)
    except BaseException:
      shutil.rmtree(staging, ignore_errors=True)
      raise


def file_sizes(directory: Path) -> dict[str, int]:
  """{path relative to `directory`: bytes} of every file under it, sorted by path."""
  if is_remote(directory):  # one listing rather than a request per file
    root = os.fspath(directory).split("://", 1)[1].rstrip("/") + "/"
    found = filesystem(directory).find(os.fspath(directory), detail=True)
    return {name[len(root):]: int(info["size"]) for name, info in sorted(found.items())
            if info.get("type") == "file"}
  return {str(f.relative_to(directory)): f.stat().st_size
          for f in sorted(directory.rglob("*")) if f.is_file()}


def nearest_existing(path: pathlib.Path) -> pathlib.Path:
  """`path`, or its closest ancestor that exists (what a new path would be created in)."""
  path = path.absolute()
  return next(p for p in (path, *path.parents) if p.exists())


def write_text_atomic(path: Path, text: str) -> None:
  """Writes `text` to `path` (UTF-8) through a temporary file renamed over it; on a bucket in
  one upload, which is as atomic (an object appears whole or not at all)."""
  if is_remote(path):
    path.write_text(text, encoding="utf-8")
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False,
                                   encoding="utf-8") as f:
    try:
      f.write(text)
      f.flush()
    except BaseException:  # a full disk: no half-written temporary file left behind
      f.close()
      os.unlink(f.name)
      raise
  os.replace(f.name, path)


def read_json_object(path: str | os.PathLike) -> dict[str, Any] | None:
  """The JSON object in file `path`, or None when there is no such file.

  UserError, naming the file, when it is not valid JSON or holds something other than an object.
  """
  path = as_path(path)
  if special_file(path):
    raise UserError(f"{path} is {special_file(path)}, not a file: replace it with the file.")
  if not path.is_file():
    return None
  try:
    value = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
    raise UserError(f"{path} is not valid JSON ({e}). Fix or delete it.") from None
  except RecursionError:
    raise UserError(f"{path} nests JSON deeper than Python reads (thousands of levels). Fix or "
                    f"delete it.") from None
  if not isinstance(value, dict):
    raise UserError(f"{path} holds a JSON {type(value).__name__}, not an object. Fix or delete "
                    f"it.")
  return value


def read_json_lines(path: str | os.PathLike, field: str, *, noun: str, hint: str
                    ) -> list[dict[str, Any]]:
  """The JSON objects of JSON Lines file `path` (blank lines skipped), each with a string
  `field`. UserError naming the file, or its first bad line, and ending with `hint` (how to
  write one); `noun` names what an empty file lacks ("records", "prompts")."""
  path = as_path(path)
  if special_file(path):
    raise UserError(f"{path} is {special_file(path)}, not a file: {hint}.")
  try:
    lines = path.read_text(encoding="utf-8").splitlines()
  except FileNotFoundError:
    raise UserError(f"{path} does not exist: {hint}.") from None
  except IsADirectoryError:
    raise UserError(f"{path} is a directory: {hint}.") from None
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"{path} is not readable UTF-8 text ({e}): {hint}.") from None
  records = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError as e:
      raise UserError(f"{path} line {number} is not valid JSON ({e}): {hint}.") from None
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
      raise UserError(f"{path} line {number} has no string field {field!r}: {hint}.")
    records.append(record)
  if not records:
    raise UserError(f"{path} holds no {noun}: {hint}.")
  return records
