"""Where a path points, and the one place a user's path becomes a path object.

A local path stays a `pathlib.Path`. A `gs://` or `s3://` URL becomes an `etils.epath.Path`:
the path type Orbax takes for its checkpoint directories (and TFDS for its data_dir), with the
pathlib methods lmjax uses (`/`, `exists`, `is_dir`, `iterdir`, `glob`, `read_text`,
`write_text`, `open`, `mkdir`, `unlink`, `rmtree`), so callers need not care which one they
hold. Under epath, gs:// and s3:// go through fsspec (`gcsfs`, `s3fs`): we turn epath's
TensorFlow backend off, as it would import TensorFlow (seconds of start-up) and ignore the
emulators the tests use (STORAGE_EMULATOR_HOST, AWS_ENDPOINT_URL), and fsspec is also what
lmjax calls directly for the two things pathlib has no word for: create-if-absent (the
run-directory lock, lmjax.lock) and a whole-object rewrite in place of an append. Orbax writes
the arrays themselves through tensorstore's GCS or S3 driver, straight to the bucket (S3 by way
of lmjax.run.orbax_buckets).

Object storage has no rename and no append: a file lmjax replaces atomically on a local disk
is one upload there (an object appears whole or not at all), and an appended file (metrics.jsonl,
config_history.jsonl, TensorBoard events) is rewritten whole at each flush.

Every path a user gives passes through `check_path` (the command line's, and the config's) or,
where remote paths are not read yet, `check_local`, which refuses a URL with advice. A remote
path is probed once per bucket, in bounded time, so that a missing bucket, an unreachable
server or missing credentials end in one message before anything starts.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import tempfile
from typing import Iterable, Iterator, Union

from lmjax.errors import UserError
from lmjax.extras import require

# Before etils or gcsfs is imported (they read these when called, and at import).
os.environ.setdefault("EPATH_USE_TF", "false")
# gcsfs's zonal-bucket lookup asks a gRPC control API the emulators lack, for every file,
# and logs a warning each time it cannot: lmjax needs no zonal-bucket features.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from etils import epath  # noqa: E402 -- after the environment above
import fsspec  # noqa: E402 -- comes with etils' epath; gcsfs and s3fs are the gcs/s3 extras

# gcsfs and s3fs cache each directory listing for the life of the process: a step another
# process (or tensorstore, which bypasses fsspec) wrote would stay invisible to this one.
for _protocol in ("gs", "gcs", "s3"):
  fsspec.config.conf.setdefault(_protocol, {})["use_listings_cache"] = False

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_MOUNTS = {"gs": "gcsfuse", "s3": "mountpoint-s3 or s3fs-fuse"}
# scheme -> (the fsspec package that reads it, lmjax's extra that installs it)
REMOTE_SCHEMES = {"gs": ("gcsfs", "gcs"), "s3": ("s3fs", "s3")}
PROBE_SECONDS = 20.0  # the longest a first look at a bucket may take (gcsfs retries ~1 min)

Path = Union[pathlib.Path, epath.Path]
PathLike = Union[str, os.PathLike]


def url_scheme(path: PathLike) -> str | None:
  """The scheme of a URL (`gs` of gs://bucket/x), None for a local path."""
  match = _URL.match(os.fspath(path))
  return match.group(1).lower() if match else None


def is_remote(path: PathLike) -> bool:
  """Whether `path` is on object storage (gs://, s3://)."""
  return url_scheme(path) in REMOTE_SCHEMES


def absolute(path: PathLike) -> str:
  """`path` as an absolute location: a URL as it is, a local path made absolute (what
  `pathlib.Path.absolute` would make of a URL is a local path under the working directory)."""
  return os.fspath(path) if is_remote(path) else str(pathlib.Path(path).absolute())


def as_path(path: PathLike) -> Path:
  """`path` as a path object: pathlib for a local path, epath for gs:// and s3://; UserError
  for any other scheme."""
  if isinstance(path, epath.Path) and not isinstance(path, pathlib.Path):
    return path
  scheme = url_scheme(path)
  if scheme is None:
    return pathlib.Path(path)
  if scheme not in REMOTE_SCHEMES:
    raise UserError(f"{os.fspath(path)}: lmjax reads and writes local paths, gs:// and s3://, "
                    f"not {scheme}://: pass one of those.")
  return epath.Path(os.fspath(path))


def check_local(paths: PathLike | Iterable[PathLike] | None, *, what: str) -> None:
  """UserError naming `what` (e.g. "--out") for the first path that is a URL: for the paths
  lmjax does not read or write remotely yet."""
  for path in _each(paths):
    scheme = url_scheme(path)
    if scheme is None:
      continue
    mount = _MOUNTS.get(scheme)
    how = (f"mount the bucket ({mount}) and pass the mounted path, or copy the files to a local "
           f"directory" if mount else "pass a local path")
    raise UserError(f"{what} {os.fspath(path)}: {scheme}:// paths are not read or written "
                    f"directly here yet; {how}.")


def check_path(paths: PathLike | Iterable[PathLike] | None, *, what: str) -> None:
  """UserError naming `what` for the first path that is a URL of an unknown scheme, or on a
  bucket that cannot be used (missing, unreachable, no credentials, no fsspec backend)."""
  for path in _each(paths):
    scheme = url_scheme(path)
    if scheme is None:
      continue
    if scheme not in REMOTE_SCHEMES:
      raise UserError(f"{what} {os.fspath(path)}: unknown scheme {scheme}://; lmjax reads and "
                      f"writes local paths, gs:// and s3://.")
    _probe(os.fspath(path), what=what)


def _each(paths) -> list:
  if paths is None:
    return []
  return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


_probed: set[str] = set()  # the buckets already found usable by this process


def _probe(url: str, *, what: str) -> None:
  """Checks, once per bucket and in at most PROBE_SECONDS, that `url`'s bucket exists and can
  be listed with the credentials the cloud libraries find."""
  scheme, rest = url.split("://", 1)
  bucket = rest.split("/", 1)[0]
  if not bucket:
    raise UserError(f"{what} {url} names no bucket: write {scheme}://BUCKET/PATH.")
  if f"{scheme}://{bucket}" in _probed:
    return
  package, extra = REMOTE_SCHEMES[scheme]
  require(package, extra=extra, needed_for=f"{what} {url}")
  credentials = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") if scheme == "gs" else None
  if credentials and not os.path.isfile(credentials):  # its contents are never read here
    raise UserError(f"{what} {url}: GOOGLE_APPLICATION_CREDENTIALS names {credentials}, which "
                    f"does not exist: point it at a service-account key file, or unset it and "
                    f"run `gcloud auth application-default login`.")
  try:
    found = filesystem(url).exists(bucket, timeout=PROBE_SECONDS)
  except Exception as e:  # noqa: BLE001 -- whatever the client raised, said in one line
    raise UserError(f"{what} {url}: {describe_error(e, url)}") from None
  if not found:
    raise UserError(f"{what} {url}: bucket {scheme}://{bucket} does not exist (or these "
                    f"credentials may not see it): create it, or fix the name.")
  _probed.add(f"{scheme}://{bucket}")


def describe_error(error: BaseException, url: str) -> str:
  """One line for an error an object store's client raised about `url`, with what to do
  (credentials are never part of it: the clients do not put them in their messages)."""
  name, text = type(error).__name__, str(error).splitlines()[0] if str(error) else ""
  if name in ("FSTimeoutError", "TimeoutError") or "timed out" in text.lower():
    return (f"no answer from the storage server within {PROBE_SECONDS:.0f}s: check the "
            f"network (and STORAGE_EMULATOR_HOST / AWS_ENDPOINT_URL if you use an emulator).")
  if isinstance(error, PermissionError) or name in ("NoCredentialsError", "RefreshError",
                                                    "DefaultCredentialsError") \
      or any(code in text for code in ("401", "403", "AccessDenied", "Forbidden")):
    return (f"access denied ({name}: {text}): set up credentials the cloud libraries find "
            f"(gcloud auth application-default login / GOOGLE_APPLICATION_CREDENTIALS for gs://, "
            f"AWS_PROFILE or AWS_ACCESS_KEY_ID for s3://) with access to the bucket.")
  if name in ("ClientConnectorError", "ConnectionError", "EndpointConnectionError",
              "ServerDisconnectedError", "ConnectionRefusedError", "ClientOSError"):
    return (f"cannot reach the storage server ({text}): check the network (and "
            f"STORAGE_EMULATOR_HOST / AWS_ENDPOINT_URL if you use an emulator).")
  return f"{name}: {text}"


def filesystem(url: PathLike):
  """The fsspec file system that serves `url` (gcsfs for gs://, s3fs for s3://)."""
  fs, _ = fsspec.core.url_to_fs(os.fspath(url))
  return fs


def create_exclusive(path: Path, text: str) -> bool:
  """Creates file `path` holding `text` if no file is there (True), else leaves it (False):
  O_EXCL on a local disk, a conditional upload on a bucket (GCS `ifGenerationMatch=0`, S3
  `If-None-Match: *`)."""
  if not is_remote(path):
    try:
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    return True
  if path.exists():  # a store that ignores the precondition (some emulators) still refuses here
    return False
  try:
    filesystem(path).pipe_file(os.fspath(path), text.encode("utf-8"), mode="create")
  except FileExistsError:
    return False
  return True


class _ObjectAppender:
  """A file on a bucket opened for appending: objects cannot grow, so each flush uploads what
  was there plus what was written, whole (lmjax appends only small files: metrics rows,
  config history, TensorBoard events). Nothing is uploaded on garbage collection: a process
  that ends without closing it (or whose server is gone) never blocks on it."""

  def __init__(self, path: Path, *, binary: bool):
    self.path, self._empty = path, b"" if binary else ""
    self._data = self._read() if path.exists() else self._empty
    self._unsaved = False

  def _read(self):
    return self.path.read_bytes() if self._empty == b"" else self.path.read_text(encoding="utf-8")

  def write(self, data) -> None:
    self._data += data
    self._unsaved = True

  def flush(self) -> None:
    if self._unsaved:
      if self._empty == b"":
        self.path.write_bytes(self._data)
      else:
        self.path.write_text(self._data, encoding="utf-8")
      self._unsaved = False

  def close(self) -> None:
    self.flush()

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def open_append(path: PathLike, *, binary: bool = False):
  """File `path` opened for appending (created if missing), text (UTF-8) or `binary`; on a
  bucket, each `flush` uploads the whole file."""
  if is_remote(path):
    return _ObjectAppender(as_path(path), binary=binary)
  return open(path, "ab") if binary else open(path, "a", encoding="utf-8")


def append_text(path: Path, text: str) -> None:
  """Adds `text` at the end of file `path` (creating it)."""
  with open_append(path) as f:
    f.write(text)


def file_size(path: PathLike) -> int:
  """The size of file `path` in bytes (OSError when there is none)."""
  if not is_remote(path):
    return os.path.getsize(path)
  return int(filesystem(path).size(os.fspath(path)))


def copy_file(source: PathLike, destination: PathLike) -> None:
  """Copies file `source` to `destination`, either of them local or on a bucket (whole, through
  memory, when either is remote: for small files, configs and tokenizers)."""
  if is_remote(source) or is_remote(destination):
    as_path(destination).write_bytes(as_path(source).read_bytes())
  else:
    shutil.copyfile(source, destination)


def move_tree(source: Path, destination: Path) -> None:
  """Moves directory `source` to `destination` (on a bucket, object by object)."""
  if is_remote(source):
    filesystem(source).mv(os.fspath(source), os.fspath(destination), recursive=True)
  else:
    shutil.move(os.fspath(source), destination)


def read_bytes(path: PathLike) -> bytes:
  """The whole content of file `path`."""
  return as_path(path).read_bytes()


def glob_remote(pattern: str) -> list[str]:
  """The files on a bucket that `pattern` (gs://… or s3://…, with `*`, `?`, `[…]`, `**`)
  matches, sorted, as URLs."""
  scheme = url_scheme(pattern)
  fs = filesystem(pattern)
  return sorted(f"{scheme}://{name}" for name in fs.glob(pattern) if fs.isfile(name))


# Weights never come through `local_copy`: they are read in place (range reads) or streamed.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")


@contextlib.contextmanager
def local_copy(path: PathLike, *, weights: bool = False) -> Iterator[pathlib.Path]:
  """`path` itself when it is local; for a bucket a temporary local copy of the file, or of a
  directory's top-level files other than weights (tokenizer files, configs: small files that
  libraries read by local name only), removed after the block. With `weights`, the weight
  files too, downloaded in chunks (for a library that reads weights by local name only:
  PyTorch in `convert verify`)."""
  if not is_remote(path):
    yield pathlib.Path(path)
    return
  path = as_path(path)
  with tempfile.TemporaryDirectory(prefix="lmjax-copy-") as temporary:
    local = pathlib.Path(temporary) / path.name
    if path.is_dir():
      local.mkdir()
      for child in path.iterdir():
        if child.is_file() and child.name.endswith(_WEIGHT_SUFFIXES):
          if weights:
            filesystem(child).get_file(os.fspath(child), os.fspath(local / child.name))
        elif child.is_file():
          (local / child.name).write_bytes(child.read_bytes())
    elif path.exists():
      local.write_bytes(path.read_bytes())
    yield local


@contextlib.contextmanager
def local_output(directory: PathLike) -> Iterator[pathlib.Path]:
  """`directory` itself when it is local; for a bucket a temporary local directory whose files
  are uploaded into it when the block succeeds (for small files that libraries write by local
  name only: tokenizer files)."""
  if not is_remote(directory):
    yield pathlib.Path(directory)
    return
  with tempfile.TemporaryDirectory(prefix="lmjax-out-") as temporary:
    yield pathlib.Path(temporary)
    destination = as_path(directory)
    for child in sorted(pathlib.Path(temporary).rglob("*")):
      if child.is_file():
        (destination / child.relative_to(temporary).as_posix()).write_bytes(child.read_bytes())


__all__ = ["PROBE_SECONDS", "REMOTE_SCHEMES", "Path", "absolute", "append_text", "as_path", "check_local",
           "check_path", "copy_file", "create_exclusive", "describe_error",
           "file_size", "filesystem", "glob_remote", "is_remote", "local_copy", "local_output",
           "move_tree", "open_append", "read_bytes", "url_scheme"]
