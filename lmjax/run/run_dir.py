"""The run directory: where a run's config, tokenizer, checkpoints and metrics live.

    RUN_DIR/config.yaml          the fully resolved config
    RUN_DIR/checkpoints/<step>/  Orbax checkpoints
    RUN_DIR/corrupt_checkpoints/ checkpoints that failed to restore, moved aside
    RUN_DIR/metrics.jsonl        one JSON object per logged step
    RUN_DIR/tensorboard/         TensorBoard event files
    RUN_DIR/tokenizer/           the tokenizer the run used
"""

from __future__ import annotations

import dataclasses
import pathlib

from lmjax.config import RUN_CONFIG_FILE, Config, dump_config, from_dict, is_run_directory, read_yaml
from lmjax.config_schema import plain
from lmjax.errors import UserError
from lmjax.files import write_text_atomic


@dataclasses.dataclass(frozen=True)
class RunDir:
  path: pathlib.Path

  def __post_init__(self):
    object.__setattr__(self, "path", pathlib.Path(self.path))

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
      return from_dict(read_yaml(self.config_file))
    except UserError as e:
      raise UserError(f"{self.config_file} is not a valid lmjax config: {e}") from None

  def require_config(self) -> Config:
    config = self.read_config()
    if config is None:
      raise UserError(f"{self.path} is not an lmjax run directory (no {RUN_CONFIG_FILE}): pass "
                      f"the --run-dir that `lmjax train` wrote.")
    return config

  def write_config(self, config: Config) -> None:
    """Writes config.yaml atomically (a crash never leaves half a file)."""
    write_text_atomic(self.config_file, dump_config(config))


def check_resumable(saved: Config, new: Config, run_dir: pathlib.Path) -> None:
  """A run directory may be resumed with a changed schedule, never with another model (the
  graph: where its first weights came from, `model.init_from`, no longer matters)."""
  old_model, new_model = (plain(dataclasses.asdict(c.model)) for c in (saved, new))
  changed = [k for k in old_model if old_model[k] != new_model.get(k)]
  if changed:
    details = ", ".join(f"model.{k}: {old_model[k]!r} -> {new_model[k]!r}" for k in changed)
    raise UserError(f"{run_dir} holds a run of a different model ({details}); resuming it with "
                    f"this config is impossible. Use a new --run-dir, or the run's own config.")
