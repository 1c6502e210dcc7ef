"""The base model a LoRA run's checkpoints refer to instead of holding it.

A LoRA run fine-tuned from `model.init_from` trains adapters only; its checkpoints hold those
(and their optimizer state), and the record names the base by path and content hash: a
`BaseRef`. Whatever reads the run back (resume, load_run, export) loads the base from there
and first checks that its content is still the one the adapters were trained on.

The hash is SHA-256 over the files the weights are read from, by name relative to the base
directory (so a moved or copied base still matches): for a Hugging Face directory its
config.json and weight files (safetensors, PyTorch, index files); for an lmjax run directory
the files of the checkpoint step it was loaded from. Hashing reads the files once (about as
long as loading them from a warm page cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Iterator, Mapping

from lmjax.config import is_run_directory
from lmjax.errors import UserError
from lmjax.storage import Path, absolute, as_path, file_size

_HF_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")


@dataclasses.dataclass(frozen=True)
class BaseRef:
  source: str            # the base directory as trained (absolute, or a gs:// / s3:// URL)
  sha256: str            # of its weight files (module docstring)
  step: int | None = None  # the checkpoint step, for a base that is an lmjax run

  def __str__(self) -> str:
    at = f" step {self.step}" if self.step is not None else ""
    return f"{self.source}{at} (sha256 {self.sha256[:16]})"

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, raw: Mapping[str, Any]) -> BaseRef:
    return cls(source=str(raw["source"]), sha256=str(raw["sha256"]), step=raw.get("step"))


def reference(source: str | os.PathLike, step: int | None) -> BaseRef:
  """The BaseRef of base directory `source` (at checkpoint `step` if it is a run)."""
  path = absolute(source)
  return BaseRef(source=path, sha256=content_hash(as_path(path), step), step=step)


def content_hash(source: Path, step: int | None) -> str:
  """SHA-256 over the base's weight files (name, size and contents of each), local or on a
  bucket (streamed: a file is never held whole)."""
  digest = hashlib.sha256()
  for name, file in _weight_files(source, step):
    with file.open("rb") as f:
      contents = hashlib.file_digest(f, "sha256").hexdigest()
    digest.update(f"{name}\0{file_size(file)}\0{contents}\n".encode())
  return digest.hexdigest()


def _weight_files(source: Path, step: int | None) -> Iterator[tuple[str, Path]]:
  if is_run_directory(source):
    root = source / "checkpoints" / str(step)
    files = sorted(p for p in root.rglob("*") if p.is_file())
  else:
    files = sorted(p for p in source.iterdir() if p.is_file() and (
        p.name == "config.json" or p.name.endswith(_HF_WEIGHT_SUFFIXES)))
  if not files:
    raise UserError(f"{source} has no model weights to check (nothing at "
                    f"{root if is_run_directory(source) else source}).")
  for file in files:
    yield file.relative_to(source).as_posix(), file


def locate_base(ref: BaseRef, configured: str | None) -> Path:
  """Where the base is now: `configured` (the run's `model.init_from`, which a resume with
  `--set model.init_from=…` can point elsewhere) if it exists, else where it was trained."""
  for candidate in (configured, ref.source):
    if candidate and as_path(candidate).is_dir():
      return as_path(candidate)
  raise UserError(f"the base model of this run's LoRA adapters, {ref}, is not there any more "
                  f"(model.init_from={configured}). Its checkpoints hold the adapters only: put "
                  f"the base back, or pass --set model.init_from=DIR naming a copy of it.")


def check_base(ref: BaseRef, configured: str | None) -> Path:
  """The base directory to load, checked to hold the content the adapters were trained on;
  UserError naming both when it differs."""
  path = locate_base(ref, configured)
  if ref.step is not None and is_run_directory(path) \
      and not (path / "checkpoints" / str(ref.step)).is_dir():
    raise UserError(f"the base model {path} has no checkpoint step {ref.step} any more, which "
                    f"this run's LoRA adapters were trained on ({ref}); restore that step or "
                    f"point model.init_from at a copy of it.")
  now = reference(path, ref.step)
  if now.sha256 != ref.sha256:
    raise UserError(f"the base model has changed: model.init_from={path} is now {now}, but "
                    f"this run's LoRA adapters were trained on {ref}. Its checkpoints hold the "
                    f"adapters only; point model.init_from at the original base (--set "
                    f"model.init_from=DIR), or start a new run from this base.")
  return path
