"""The run directory: where a run's config, tokenizer, checkpoints and metrics live.

    RUN_DIR/config.yaml          the fully resolved config (the one now in use)
    RUN_DIR/config_history.jsonl what each resume changed (lmjax.run.resume_policy)
    RUN_DIR/checkpoints/<step>/  Orbax checkpoints
    RUN_DIR/checkpoint_sizes.json each checkpoint's file sizes as written (lmjax checkpoints)
    RUN_DIR/corrupt_checkpoints/ checkpoints that failed to restore, moved aside
    RUN_DIR/metrics.jsonl        one JSON object per logged step
    RUN_DIR/tensorboard/         TensorBoard event files
    RUN_DIR/tokenizer/           the tokenizer the run used
    RUN_DIR/.lmjax.lock          while a process writes the run (lmjax.lock)
"""

from __future__ import annotations

import dataclasses
import os

from lmjax.config import RUN_CONFIG_FILE, Config, dump_config, from_dict, is_run_directory, read_yaml
from lmjax.errors import UserError
from lmjax.files import is_empty, nearest_existing, write_text_atomic
from lmjax.lock import DirectoryLock
from lmjax.run.orbax_buckets import install_s3
from lmjax.storage import Path, append_text, as_path, check_path, is_remote, url_scheme


@dataclasses.dataclass(frozen=True)
class RunDir:
  path: Path  # local (pathlib) or on a bucket (epath): lmjax.storage

  def __post_init__(self):
    object.__setattr__(self, "path", as_path(self.path))

  config_file = property(lambda self: self.path / RUN_CONFIG_FILE)
  checkpoints = property(lambda self: self.path / "checkpoints")
  corrupt_checkpoints = property(lambda self: self.path / "corrupt_checkpoints")
  metrics_file = property(lambda self: self.path / "metrics.jsonl")
  tensorboard = property(lambda self: self.path / "tensorboard")
  tokenizer_dir = property(lambda self: self.path / "tokenizer")

  def exists(self) -> bool:
    """Whether this is a run directory already (it holds a config.yaml)."""
    return is_run_directory(self.path)

  def read_config(self) -> Config | None:
    """The run's saved config, or None for a new run directory."""
    if not self.exists():
      return None
    try:
      return from_dict(read_yaml(self.config_file), resolved=True)
    except UserError as e:
      raise UserError(f"{self.config_file} is not a valid lmjax config: {e}") from None

  def require_config(self) -> Config:
    config = self.read_config()
    if config is None:
      raise UserError(f"{self.path} is not an lmjax run directory (no {RUN_CONFIG_FILE}): pass "
                      f"the --run-dir that `lmjax train` wrote.")
    return config

  config_history = property(lambda self: self.path / "config_history.jsonl")

  def check_usable(self) -> None:
    """UserError unless this is a run directory, or a new or empty directory `lmjax train` may
    create and write: never a file, a foreign directory, or one it cannot write (on a bucket:
    one that exists and answers, lmjax.storage.check_path)."""
    check_path(self.path, what="--run-dir")
    if url_scheme(self.path) == "s3":  # before anything is written: this Orbax can write there
      install_s3(what=f"--run-dir {self.path}")
    if self.path.exists() and not self.path.is_dir():
      raise UserError(f"--run-dir {self.path} is a file, not a directory: pass a directory "
                      f"(a new one starts a run).")
    if self.path.is_dir() and not self.exists() and not is_empty(self.path):
      raise UserError(f"--run-dir {self.path} is not empty and is not an lmjax run directory "
                      f"(it has no {RUN_CONFIG_FILE}): pass a new or empty directory, or the "
                      f"directory of an lmjax run to resume it.")
    if is_remote(self.path):  # a bucket's permissions show at the first write (exit 4)
      return
    existing = nearest_existing(self.path)
    if not existing.is_dir():
      raise UserError(f"--run-dir {self.path}: {existing} is a file, not a directory: choose "
                      f"another path.")
    if not os.access(existing, os.W_OK | os.X_OK):
      what = "it" if existing == self.path.absolute() else f"its parent {existing}"
      raise UserError(f"--run-dir {self.path}: {what} is not writable (permissions or a "
                      f"read-only file system): choose a directory you can write to.")
    if self.path.is_dir():
      for child in (self.checkpoints, self.config_file, self.metrics_file):
        if child.exists() and not os.access(child, os.W_OK):
          raise UserError(f"{child} is not writable (permissions or a read-only file system): "
                          f"make it writable to resume this run.")

  def lock(self) -> DirectoryLock:
    """Takes the run's exclusive lock (lmjax.lock): DirectoryLocked, naming the holder, when
    another live process writes this run; a dead holder's lock is broken with a warning."""
    return DirectoryLock(self.path, what=f"run directory {self.path}").acquire()

  def append_history(self, line: str) -> None:
    append_text(self.config_history, line + "\n")

  def write_config(self, config: Config) -> None:
    """Writes config.yaml atomically (a crash never leaves half a file)."""
    write_text_atomic(self.config_file, dump_config(config))
