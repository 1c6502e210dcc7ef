"""Glob expansion for `data.paths` that terminates on any tree.

`**` recurses through directories, following symbolic links to directories, but walks a
directory (with what is left of the pattern) only once, so a link back up the tree ends the walk
instead of repeating it forever. Otherwise a glob matches what `glob.glob(pattern,
recursive=True)` matches. Hand-written because `glob.glob` follows links without bound (a loop
never returns) and has no option to stop it.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from typing import Iterator

from lmjax.storage import glob_remote, is_remote


def glob_files(pattern: str) -> list[str]:
  """The files `glob.glob(pattern, recursive=True)` matches, sorted, with each directory walked
  once per part of the pattern: a symbolic link back up the tree ends a `**` walk. On a bucket
  (gs://, s3://) its listing is globbed: a bucket has no links."""
  if is_remote(pattern):
    return glob_remote(pattern)
  parts = pattern.split(os.sep)
  if "**" not in parts:  # nothing recurses: glob itself is bounded
    return sorted(m for m in glob.glob(pattern, recursive=True) if os.path.isfile(m))
  at = parts.index("**")
  prefix = os.sep.join(parts[:at]) or (os.sep if at else "")  # "" is the working directory
  bases = [base for base in (glob.glob(prefix) if glob.has_magic(prefix) else [prefix])
           if os.path.isdir(base or os.curdir)]
  seen: set[tuple[int, int, int]] = set()
  return sorted(m for base in bases for m in _walk(base, parts, at, seen) if os.path.isfile(m))


def _walk(directory: str, parts: list[str], index: int, seen: set[tuple[int, int, int]]
          ) -> Iterator[str]:
  """Paths under `directory` that match `parts[index:]`, as glob matches them (`*` and `**`
  skip names starting with "."), skipping (directory, index) pairs already in `seen`.

  A pair already walked yields only other names for paths already found, so skipping it loses
  no file, and it bounds the walk: a link loop revisits a pair at once.
  """
  try:
    status = os.stat(directory or os.curdir)
  except OSError:
    return
  key = (status.st_dev, status.st_ino, index)
  if key in seen:
    return
  seen.add(key)
  if index == len(parts):
    yield directory
    return
  part, last = parts[index], index + 1 == len(parts)
  if part == "**":
    yield from _walk(directory, parts, index + 1, seen)  # ** matches no directory, too
    for name, is_dir in _entries(directory):
      if name.startswith("."):
        continue
      path = os.path.join(directory, name)
      if is_dir:
        yield from _walk(path, parts, index, seen)
      elif last:
        yield path
  elif glob.has_magic(part):
    for name, is_dir in _entries(directory):
      if (part.startswith(".") or not name.startswith(".")) and fnmatch.fnmatch(name, part):
        path = os.path.join(directory, name)
        if last:
          yield path
        elif is_dir:
          yield from _walk(path, parts, index + 1, seen)
  else:
    path = os.path.join(directory, part)
    if last:
      if os.path.lexists(path):
        yield path
    elif os.path.isdir(path):
      yield from _walk(path, parts, index + 1, seen)


def _entries(directory: str) -> list[tuple[str, bool]]:
  """(name, is a directory, following links) of each entry, sorted by name (so which of two
  names for one file is walked first does not depend on the file system); [] when it cannot be
  listed."""
  entries = []
  try:
    with os.scandir(directory or os.curdir) as listing:
      for entry in listing:
        try:
          is_dir = entry.is_dir()
        except OSError:
          is_dir = False
        entries.append((entry.name, is_dir))
  except OSError:
    pass
  return sorted(entries)
