"""A GGUF file as a Hugging Face model directory, written once into lmjax's cache.

    hf_dir = materialise("model.Q4_K_M.gguf")   # config.json, model.safetensors, tokenizer
                                                # files, generation_config.json, gguf_source.json

Why a cache rather than a temporary directory for the one call: what lmjax reads from a model
source outlives the call that loaded it. `lmjax.load` hands back the directory, whose tokenizer,
chat template and config.json are read later; `model.init_from` records the directory in the
run's config.yaml (as it records a hub id's snapshot), and a LoRA run names it as its base. So
the directory lives at `$LMJAX_CACHE/gguf/<key>/` (default ~/.cache/lmjax, or
$XDG_CACHE_HOME/lmjax), where `key` hashes the file's resolved path, size, modification time
and first and last MiB: a changed file gets a new directory, an unchanged one is imported once.
Delete the folder to reclaim the space; it is rebuilt on the next use.

The weights are float32 (4 bytes a parameter, whatever the file's quantization): dequantized
values are exact in float32 and in no smaller type. They are dequantized and written one tensor
at a time, so memory holds one tensor, never the model. The directory is built under a hidden
name and renamed into place when complete, so a kill mid-write or two processes importing the
same file never leave a half directory where a whole one is expected; a dead process's
leftovers are removed by the next import.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import socket

from lmjax.errors import UserError
from lmjax.hf.gguf.config import generation_config, hf_config, model_type_of_gguf
from lmjax.hf.gguf.reader import open_gguf
from lmjax.hf.gguf.tensors import hf_tensors
from lmjax.hf.gguf.tokenizer import write_tokenizer
from lmjax.hf.safetensors_files import write_safetensors

log = logging.getLogger(__name__)

SOURCE_FILE = "gguf_source.json"  # where the directory came from (path, size, mtime)
# Bumped when what is written changes, so that older directories are not reused.
_LAYOUT = 1
_SAMPLE = 2**20  # bytes hashed at each end of the file
_SHARD = 5 * 2**30  # the largest safetensors file written, as transformers shards


def is_gguf_source(value: str | os.PathLike) -> bool:
  """Whether a model source names a GGUF file: a `.gguf` name, or a file (not a directory,
  which is a Hugging Face model) of any name, whose magic bytes are then checked."""
  value = os.fspath(value)
  return value.lower().endswith(".gguf") or os.path.isfile(value)


def cache_root() -> pathlib.Path:
  """Where imported GGUF files live: `$LMJAX_CACHE/gguf` (default ~/.cache/lmjax/gguf)."""
  base = os.environ.get("LMJAX_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
      "lmjax")
  return pathlib.Path(base) / "gguf"


def cache_key(path: pathlib.Path) -> str:
  """A name for `path`'s directory: its resolved path, size, mtime and both ends hashed."""
  stat = path.stat()
  digest = hashlib.sha256(f"{_LAYOUT}\0{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
                          .encode())
  with open(path, "rb") as f:
    digest.update(f.read(_SAMPLE))
    f.seek(max(0, stat.st_size - _SAMPLE))
    digest.update(f.read(_SAMPLE))
  return f"{path.stem[:64]}-{digest.hexdigest()[:16]}"


def _write(path: pathlib.Path, directory: pathlib.Path) -> None:
  """Writes the HF directory of GGUF file `path` into `directory` (which exists, empty)."""
  with open_gguf(path) as file:
    model_type = model_type_of_gguf(file)
    config = hf_config(file)
    # What lmjax cannot build (a config, a tensor type, a name or shape) is refused here,
    # before anything is written; no tensor is read yet.
    entries = hf_tensors(file, model_type, config)
    file.check_types()
    write_tokenizer(file, directory)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = generation_config(file)
    if generation:
      (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    write_safetensors(directory, entries, max_shard_size=_SHARD)
  stat = path.stat()
  source = dict(path=str(path.resolve()), size=stat.st_size, mtime_ns=stat.st_mtime_ns)
  (directory / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")


def _remove_leftovers(root: pathlib.Path, key: str) -> None:
  """Removes the partial directories of `key` left by dead processes of this host."""
  host = socket.gethostname()
  for partial in root.glob(f".{key}.partial-{host}-*"):
    pid = partial.name.rsplit("-", 1)[1]
    try:
      os.kill(int(pid), 0)
    except ProcessLookupError:
      shutil.rmtree(partial, ignore_errors=True)
    except (ValueError, PermissionError):  # not our name, or a live process of another user
      pass


def materialise(path: str | os.PathLike, *, what: str = "--hf") -> pathlib.Path:
  """The Hugging Face directory of GGUF file `path`, written on first use (see the module
  docstring); `what` names the argument in messages."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"{what} {path}: no such GGUF file. Give the path of a .gguf file, or a "
                    f"Hugging Face model directory.")
  root = cache_root()
  key = cache_key(path)
  target = root / key
  if (target / SOURCE_FILE).is_file():
    return target
  root.mkdir(parents=True, exist_ok=True)
  _remove_leftovers(root, key)
  staging = root / f".{key}.partial-{socket.gethostname()}-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  staging.mkdir()
  log.info("importing %s into %s (once: later uses read it there)", path, target)
  try:
    _write(path, staging)
    try:
      os.rename(staging, target)
    except OSError:
      if not (target / SOURCE_FILE).is_file():  # not another process's finished copy
        raise
      shutil.rmtree(staging, ignore_errors=True)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return target


__all__ = ["SOURCE_FILE", "cache_key", "cache_root", "is_gguf_source", "materialise"]
