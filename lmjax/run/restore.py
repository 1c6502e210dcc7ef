"""Restoring a run's params from its checkpoints: the mechanics under the loader
(lmjax.run.loader, `lmjax.load`), which also brings a LoRA run's base.

Only the params are read (never the optimizer state), placed on the mesh by the logical-axis
rules: the run's own `mesh.rules` unless the caller names others.
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable, TypeVar

from jax.sharding import Mesh

from lmjax.errors import UserError
from lmjax.memory import check_fits, per_device_bytes
from lmjax.model import Transformer
from lmjax.model.trainable import combine, split
from lmjax.placement import placed_params
from lmjax.run.checkpointer import Checkpointer
from lmjax.run.orbax_errors import first_line
from lmjax.run.base_ref import BaseRef
from lmjax.run.inspection import inspect_checkpoints
from lmjax.run.record import CheckpointRecord
from lmjax.run.run_dir import RunDir
from lmjax.sharding import MeshConfig, MeshRules, axis_rules, make_mesh, parse_rules

T = TypeVar("T")
LoadBase = Callable[[BaseRef, Any], Any]  # (base reference, abstract frozen params) -> params


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


def restore_params(run_dir: str | pathlib.Path, step: int | None = None, *,
                   mesh: Mesh | None = None, rules: Any = None, base: LoadBase | None = None
                   ) -> tuple[Transformer, Any, int]:
  """(model, params, step) of the run at `step` (default: the newest checkpoint that restores,
  a damaged newer one skipped with a warning), placed on `mesh` by `rules`.

  A LoRA run's checkpoint that holds the adapters only (its record names the base,
  lmjax.run.base_ref) needs `base(ref, abstract_frozen_params)`, which returns the frozen params
  placed as `abstract_frozen_params`; the loader passes the one that reads Hugging Face and
  run directories.
  """
  run = RunDir(run_dir)
  config = run.require_config()
  placement = MeshRules(mesh or make_mesh(MeshConfig()),
                        axis_rules(config.mesh) if rules is None else parse_rules(rules))
  abstract = placed_params(config.model, placement)
  check_fits(per_device_bytes(abstract), what=f"loading the params of {run.path}",
             knobs="load it on a device with more memory, or spread it over several devices "
                   "(lmjax.load_run with a mesh)")
  trained_abstract, frozen_abstract = split(abstract, config.model)
  checkpointer, step = open_checkpoints(run, step)

  def restore(at: int) -> tuple[Any, CheckpointRecord]:
    record = checkpointer.restore_record(at)
    return checkpointer.restore_params(
        at, trained_abstract if record.base is not None else abstract), record

  try:
    if step is None:
      step, (params, record), _ = checkpointer.restore_newest(restore)
    else:
      params, record = restore_step(run, step, restore)
  finally:
    checkpointer.close()
  if record.base is not None:
    if base is None:
      raise UserError(f"{run.path} step {step} holds LoRA adapters only, for the base model "
                      f"{record.base}: load it with lmjax.load, which loads the base too.")
    params = combine(params, base(record.base, frozen_abstract))
  return Transformer(config.model), params, step
