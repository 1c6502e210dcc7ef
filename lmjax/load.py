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


def checkpoint_step(run: RunDir, step: int | None) -> tuple[Checkpointer, int | None]:
  """The run's checkpointer and the step to load (None: the newest that restores)."""
  if not run.checkpoints.is_dir():
    raise UserError(f"{run.path} has no checkpoints yet: train it first (lmjax train … --run-dir "
                    f"{run.path}).")
  config = run.require_config()
  checkpointer = Checkpointer(run.checkpoints, keep=config.train.keep_checkpoints)
  steps = checkpointer.steps()
  if not steps:
    raise UserError(f"{run.path} has no complete checkpoint yet: train it first.")
  if step is None:
    return checkpointer, None
  if step not in steps:
    raise UserError(f"{run.path} has no checkpoint at step {step}; it has steps "
                    f"{', '.join(map(str, sorted(steps)))}.")
  return checkpointer, step


def load_run(run_dir: str | pathlib.Path, step: int | None = None, *,
             mesh: Mesh | None = None) -> tuple[Transformer, Any]:
  """The run's float32 model and params at `step` (default: the latest complete checkpoint).

  Params are placed by the logical-axis rules on `mesh` (default: all devices, data parallel).
  With `step=None`, a newest checkpoint that cannot be restored (a torn or damaged write) is
  skipped with a message on stderr and the next older one is loaded.
  """
  model, params, _ = load_run_at(run_dir, step, mesh=mesh)
  return model, params


def load_run_at(run_dir: str | pathlib.Path, step: int | None = None, *,
                mesh: Mesh | None = None) -> tuple[Transformer, Any, int]:
  """`load_run`, also returning the step it loaded."""
  run = RunDir(run_dir)
  config = run.require_config()
  checkpointer, step = checkpoint_step(run, step)
  model = Transformer(config.model)
  tx = make_optimizer(config.train)
  abstract, _ = state_shardings(model, tx, mesh or make_mesh(MeshConfig()), seq_len=config.train.seq_len)

  def restore(at: int):
    return checkpointer.restore(at, abstract)[0]

  try:
    if step is None:
      step, state, _ = checkpointer.restore_newest(restore)
    else:
      state = restore(step)
  finally:
    checkpointer.close()
  return model, state.params, step
