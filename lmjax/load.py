"""Loading a trained run back: `model, params = lmjax.load_run(run_dir, step=None)`."""

from __future__ import annotations

import pathlib
from typing import Any

from jax.sharding import Mesh

from lmjax.config import MeshConfig
from lmjax.errors import UserError
from lmjax.model import Transformer
from lmjax.run_dir import RunDir
from lmjax.sharding import make_mesh
from lmjax.train.checkpoint import Checkpointer
from lmjax.train.optimizer import make_optimizer
from lmjax.train.state import state_shardings


def checkpoint_step(run: RunDir, step: int | None) -> tuple[Checkpointer, int]:
  """The run's checkpointer and the step to load (the latest when `step` is None)."""
  if not run.checkpoints.is_dir():
    raise UserError(f"{run.path} has no checkpoints yet: train it first (lmjax train … --run-dir "
                    f"{run.path}).")
  config = run.require_config()
  checkpointer = Checkpointer(run.checkpoints, keep=config.train.keep_checkpoints)
  steps = checkpointer.steps()
  if not steps:
    raise UserError(f"{run.path} has no complete checkpoint yet: train it first.")
  if step is None:
    return checkpointer, max(steps)
  if step not in steps:
    raise UserError(f"{run.path} has no checkpoint at step {step}; it has steps "
                    f"{', '.join(map(str, sorted(steps)))}.")
  return checkpointer, step


def load_run(run_dir: str | pathlib.Path, step: int | None = None, *,
             mesh: Mesh | None = None) -> tuple[Transformer, Any]:
  """The run's float32 model and params at `step` (default: the latest checkpoint).

  Params are placed by the logical-axis rules on `mesh` (default: all devices, data parallel).
  """
  run = RunDir(run_dir)
  config = run.require_config()
  checkpointer, step = checkpoint_step(run, step)
  model = Transformer(config.model)
  tx = make_optimizer(config.train)
  abstract, _ = state_shardings(model, tx, mesh or make_mesh(MeshConfig()), seq_len=config.train.seq_len)
  try:
    if checkpointer.restore_record(step).get("params_only"):  # imported: no optimizer state yet
      abstract = abstract.replace(opt_state=None)
    state, _ = checkpointer.restore(step, abstract)
  finally:
    checkpointer.close()
  return model, state.params
