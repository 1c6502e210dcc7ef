"""Loading a trained run back: `model, params = lmjax.load_run(run_dir, step=None)`.

Only the params are read (never the optimizer state), placed on the mesh by the logical-axis
rules: the run's own `mesh.rules` unless the caller names others.
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable, TypeVar

from jax.sharding import Mesh

from lmjax.errors import UserError
from lmjax.model import Transformer
from lmjax.placement import placed_params
from lmjax.run.checkpointer import Checkpointer, first_line
from lmjax.run.inspection import inspect_checkpoints
from lmjax.run.run_dir import RunDir
from lmjax.sharding import MeshConfig, MeshRules, axis_rules, make_mesh, parse_rules

T = TypeVar("T")


def open_checkpoints(run: RunDir, step: int | None) -> tuple[Checkpointer, int | None]:
  """The run's checkpointer and the step to load (None: the newest that restores); UserError
  when the run has no such checkpoint. The caller closes the checkpointer."""
  if not run.checkpoints.is_dir():
    raise UserError(f"{run.path} has no checkpoints yet: train it first (lmjax train … --run-dir "
                    f"{run.path}).")
  config = run.require_config()
  checkpointer = Checkpointer(run.checkpoints, keep=config.train.keep_checkpoints)
  steps = checkpointer.steps()
  if not steps:
    checkpointer.close()
    raise UserError(f"{run.path} has no complete checkpoint yet: train it first.")
  if step is not None and step not in steps:
    checkpointer.close()
    raise UserError(f"{run.path} has no checkpoint at step {step}; it has steps "
                    f"{', '.join(map(str, sorted(steps)))}.")
  return checkpointer, step


def restore_step(run: RunDir, step: int, restore: Callable[[int], T]) -> T:
  """restore(step) for a step the user named; a damaged step is a UserError saying so, why,
  and which steps pass the cheap check (lmjax checkpoints), rather than a traceback."""
  try:
    return restore(step)
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001 -- whatever a damaged file raises
    others = [i.step for i in inspect_checkpoints(run.path) if i.problem is None and i.step != step
              and i.name == str(i.step)]
    usable = (f"steps that look intact: {', '.join(map(str, others))} (or omit --step to load "
              f"the newest that restores)" if others else "no other step looks intact")
    raise UserError(f"checkpoint step {step} of {run.path} is damaged and cannot be restored "
                    f"({first_line(e)}); {usable}. `lmjax checkpoints {run.path} --verify` "
                    f"checks every step.") from None


def load_run(run_dir: str | pathlib.Path, step: int | None = None, *, mesh: Mesh | None = None,
             rules: Any = None) -> tuple[Transformer, Any]:
  """The run's float32 model and params at `step` (default: the latest complete checkpoint).

  Params are placed on `mesh` (default: all devices, data parallel) by `rules` (a table as
  `mesh.rules` takes, e.g. [["embed", "fsdp"], ["heads", "tensor"]]; default: the run's own
  `mesh.rules`, else the standard one, lmjax.sharding.LOGICAL_AXIS_RULES). With `step=None`,
  a newest checkpoint that cannot be restored (a torn or damaged write) is skipped with a
  warning and the next older one is loaded.
  """
  model, params, _ = load_run_at(run_dir, step, mesh=mesh, rules=rules)
  return model, params


def load_run_at(run_dir: str | pathlib.Path, step: int | None = None, *, mesh: Mesh | None = None,
                rules: Any = None) -> tuple[Transformer, Any, int]:
  """`load_run`, also returning the step it loaded."""
  run = RunDir(run_dir)
  config = run.require_config()
  checkpointer, step = open_checkpoints(run, step)
  placement = MeshRules(mesh or make_mesh(MeshConfig()),
                        axis_rules(config.mesh) if rules is None else parse_rules(rules))
  abstract = placed_params(config.model, placement)
  try:
    if step is None:
      step, params, _ = checkpointer.restore_newest(
          lambda at: checkpointer.restore_params(at, abstract))
    else:
      params = restore_step(run, step, lambda at: checkpointer.restore_params(at, abstract))
  finally:
    checkpointer.close()
  return Transformer(config.model), params, step
