"""Where a path points. lmjax reads and writes local paths (a bucket mounted with gcsfuse,
mountpoint-s3 or s3fs-fuse is a local path); a URL (`gs://…`, `s3://…`, any `scheme://`) is
recognised and refused with that advice, rather than read as a local name (`gs:` would become a
folder). Every path a user gives passes through `check_local`: the command line's, and the
config's (`data.*` paths, `model.init_from`, TFDS `data_dir`)."""

from __future__ import annotations

import os
import re
from typing import Iterable

from lmjax.errors import UserError

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_MOUNTS = {"gs": "gcsfuse", "s3": "mountpoint-s3 or s3fs-fuse"}


def url_scheme(path: str | os.PathLike) -> str | None:
  """The scheme of a URL (`gs` of gs://bucket/x), None for a local path."""
  match = _URL.match(os.fspath(path))
  return match.group(1).lower() if match else None


def check_local(paths: str | os.PathLike | Iterable[str | os.PathLike] | None, *,
                what: str) -> None:
  """UserError naming `what` (e.g. "--run-dir") for the first path that is a URL."""
  if paths is None:
    return
  for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
    scheme = url_scheme(path)
    if scheme is None:
      continue
    mount = _MOUNTS.get(scheme)
    how = (f"mount the bucket ({mount}) and pass the mounted path, or copy the files to a local "
           f"directory" if mount else "pass a local path")
    raise UserError(f"{what} {os.fspath(path)}: {scheme}:// paths are not read or written "
                    f"directly yet; {how}.")


__all__ = ["check_local", "url_scheme"]
