"""The run directory: where a run's config, tokenizer, checkpoints and metrics live.

    RUN_DIR/config.yaml          the fully resolved config
    RUN_DIR/checkpoints/<step>/  Orbax checkpoints
    RUN_DIR/metrics.jsonl        one JSON object per logged step
    RUN_DIR/tensorboard/         TensorBoard event files
    RUN_DIR/tokenizer/           the tokenizer the run used
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile

from lmjax.config import Config, dump_config, from_dict, read_yaml
from lmjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class RunDir:
  path: pathlib.Path

  def __post_init__(self):
    object.__setattr__(self, "path", pathlib.Path(self.path))

  config_file = property(lambda self: self.path / "config.yaml")
  checkpoints = property(lambda self: self.path / "checkpoints")
  metrics_file = property(lambda self: self.path / "metrics.jsonl")
  tensorboard = property(lambda self: self.path / "tensorboard")
  tokenizer_dir = property(lambda self: self.path / "tokenizer")

  def read_config(self) -> Config | None:
    """The run's saved config, or None for a new run directory."""
    if not self.config_file.is_file():
      return None
    try:
      return from_dict(read_yaml(self.config_file))
    except UserError as e:
      raise UserError(f"{self.config_file} is not a valid lmjax config: {e}") from None

  def require_config(self) -> Config:
    config = self.read_config()
    if config is None:
      raise UserError(f"{self.path} is not an lmjax run directory (no config.yaml): pass the "
                      f"--run-dir that `lmjax train` wrote.")
    return config

  def write_config(self, config: Config) -> None:
    """Writes config.yaml atomically (a crash never leaves half a file)."""
    self.path.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=self.path, suffix=".tmp", delete=False,
                                     encoding="utf-8") as f:
      f.write(dump_config(config))
    os.replace(f.name, self.config_file)


def check_resumable(saved: Config, new: Config, run_dir: pathlib.Path) -> None:
  """A run directory may be resumed with a changed schedule, never with another model."""
  old_model, new_model = saved.to_dict()["model"], new.to_dict()["model"]
  changed = [k for k in old_model if old_model[k] != new_model.get(k)]
  if changed:
    details = ", ".join(f"model.{k}: {old_model[k]!r} -> {new_model[k]!r}" for k in changed)
    raise UserError(f"{run_dir} holds a run of a different model ({details}); resuming it with "
                    f"this config is impossible. Use a new --run-dir, or the run's own config.")
