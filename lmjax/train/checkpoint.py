"""Orbax checkpoints of the train state plus a small JSON record (data position, config, version).

Step N lives in RUN_DIR/checkpoints/N/. Saves are asynchronous: `save` returns once the arrays
are copied off the devices and the write finishes in the background; `wait` blocks until it has.
"""

from __future__ import annotations

import pathlib
from typing import Any

import orbax.checkpoint as ocp

from lmjax.train.state import TrainState


class Checkpointer:
  """Saves and restores TrainStates under `directory`, keeping the newest `keep`."""

  def __init__(self, directory: str | pathlib.Path, *, keep: int, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options,
                                          item_names=("state", "record"))

  def steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: TrainState, record: dict[str, Any]) -> None:
    """Starts writing `state` and the JSON `record` as checkpoint `step`."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)))

  def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Restores checkpoint `step` onto the shardings carried by `abstract_state`."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["record"] or {})

  def restore_record(self, step: int) -> dict[str, Any]:
    restored = self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
    return dict(restored["record"] or {})

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
