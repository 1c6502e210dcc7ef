"""Orbax checkpoints of the train state plus a small JSON record (data position, config, version).

Step N lives in RUN_DIR/checkpoints/N/. Saves are asynchronous: `save` returns once the arrays
are copied off the devices and the write finishes in the background; `wait` blocks until it has.
The newest `keep` checkpoints are kept, plus every step divisible by `keep_every` forever.

`save_streamed` writes a checkpoint whose arrays are made one at a time (DeferredArray leaves),
and `restore_arrays` reads some arrays of one back: imports and exports use them to hold one
array at a time rather than the whole state. Such checkpoints restore like any other.

Orbax writes each checkpoint under a temporary name and renames it once complete, so a process
killed mid-write leaves `N.orbax-checkpoint-tmp-*`, which is never a step. A committed step can
still be damaged afterwards (a truncated or deleted file): `restore_newest` treats a failed
restore as the ground truth, says on stderr which step it skipped and why, and falls back to
the next older one. Nothing is ever deleted for being unreadable; the trainer moves such steps
aside (`quarantine`) so that the step can be written again.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import shutil
import sys
import threading
from typing import Any, Callable, Mapping, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from lmjax.errors import UserError
from lmjax.train.streamed_arrays import streaming_handlers
from lmjax.train.state import TrainState

T = TypeVar("T")
TMP_MARKER = ".orbax-checkpoint-tmp"
ITEMS = ("state", "record")
ArrayPath = tuple[str, ...]  # keys from the state's root, e.g. ("params", "lm_head", "kernel")


@dataclasses.dataclass(frozen=True)
class SkippedStep:
  step: int
  reason: str


class Checkpointer:
  """Saves and restores TrainStates under `directory`, keeping the newest `keep`."""

  def __init__(self, directory: str | pathlib.Path, *, keep: int, keep_every: int = 0,
               async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    policies = [ocp.checkpoint_managers.LatestN(n=keep)]
    if keep_every:
      policies.append(ocp.checkpoint_managers.EveryNSteps(interval_steps=keep_every))
    self._options = ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=async_save,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies))
    self._manager = ocp.CheckpointManager(self.directory, options=self._options,
                                          item_names=ITEMS)

  def steps(self) -> list[int]:
    """Committed steps, oldest first (whether they are readable is only known on restore)."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def unfinished_writes(self) -> list[pathlib.Path]:
    """Temporary directories of writes that never completed (the writer died)."""
    if not self.directory.is_dir():
      return []
    return sorted(p for p in self.directory.iterdir() if TMP_MARKER in p.name)

  def save(self, step: int, state: TrainState, record: dict[str, Any]) -> None:
    """Starts writing `state` and the JSON `record` as checkpoint `step`."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)))

  def save_streamed(self, step: int, state: TrainState, record: dict[str, Any]) -> None:
    """Writes checkpoint `step` before returning, making each DeferredArray leaf of `state`
    only when it is written and dropping it after: memory holds one array, not the state.

    For states that are not in memory to begin with (imported weights); it restores like a
    `save`d checkpoint. Leaves that are not DeferredArrays are saved as `save` saves them.
    """
    self.wait()
    options = dataclasses.replace(self._options, enable_async_checkpointing=False)
    # A manager of its own: `self._manager` ties item "state" to StandardSave's handler,
    # which accepts array leaves only.
    manager = ocp.CheckpointManager(self.directory, options=options,
                                    handler_registry=streaming_handlers())
    try:
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(state), record=ocp.args.JsonSave(record)))
    finally:
      manager.close()
    self._manager.reload()

  def array_specs(self, step: int) -> dict[ArrayPath, jax.ShapeDtypeStruct]:
    """Shape and dtype of every array in checkpoint `step`'s state, from its metadata alone."""
    metadata = ocp.PyTreeCheckpointHandler().metadata(self._step_dir(step) / "state")
    leaves, _ = jax.tree_util.tree_flatten_with_path(metadata.tree)
    return {tuple(str(getattr(k, "key", k)) for k in path): jax.ShapeDtypeStruct(leaf.shape,
                                                                                leaf.dtype)
            for path, leaf in leaves if hasattr(leaf, "shape")}

  def restore_arrays(self, step: int, specs: Mapping[ArrayPath, jax.ShapeDtypeStruct]
                     ) -> dict[ArrayPath, np.ndarray]:
    """The arrays `specs` names (some of `array_specs(step)`) as host numpy arrays, reading no
    others: memory holds these arrays (and a read buffer), not the state."""
    item, restore_args = {}, {}
    for path, spec in specs.items():
      *parents, leaf = path
      node, node_args = item, restore_args
      for key in parents:
        node, node_args = node.setdefault(key, {}), node_args.setdefault(key, {})
      node[leaf] = jax.ShapeDtypeStruct(spec.shape, spec.dtype)
      node_args[leaf] = ocp.RestoreArgs(restore_type=np.ndarray)
    handler = ocp.PyTreeCheckpointHandler()
    try:
      restored = handler.restore(self._step_dir(step) / "state", args=ocp.args.PyTreeRestore(
          item, restore_args=restore_args, partial_restore=True))
    finally:
      handler.close()
    arrays = {}
    for path in specs:
      node = restored
      for key in path:
        node = node[key]
      arrays[path] = node
    return arrays

  def _step_dir(self, step: int) -> pathlib.Path:
    if step not in self.steps():
      raise UserError(f"{self.directory} has no checkpoint at step {step}.")
    return self.directory / str(step)

  def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Restores checkpoint `step` onto the shardings carried by `abstract_state`.

    An imported checkpoint (record `params_only`) has no optimizer state: it comes back None.
    """
    record = self.restore_record(step)
    if record.get("params_only"):
      abstract_state = abstract_state.replace(opt_state=None)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"], record

  def restore_record(self, step: int) -> dict[str, Any]:
    restored = self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
    return dict(restored["record"] or {})

  def restore_newest(self, restore: Callable[[int], T], *, below: int | None = None
                     ) -> tuple[int | None, T | None, list[SkippedStep]]:
    """(step, restore(step)) for the newest step whose restore succeeds, and the steps skipped.

    Every skipped step is reported on stderr with the reason. Returns (None, None, []) when
    there are no checkpoints; raises UserError when there are some but none restores (rather
    than let a caller start the run over on top of them). With several processes, a step
    counts as restored only if it restored on every process.
    """
    for path in self.unfinished_writes():
      _say(f"ignoring {path.name}: a checkpoint write that never finished (its process died)")
    skipped: list[SkippedStep] = []
    steps = [s for s in reversed(self.steps()) if below is None or s < below]
    for step in steps:
      try:
        result, reason = restore(step), None
      except Exception as e:  # noqa: BLE001 -- whatever a damaged file raises, try an older step
        result, reason = None, _first_line(e)
        quiet_orbax_leftovers()
      if _all_processes_agree(reason is None):
        return step, result, skipped
      reason = reason or "another process could not restore it"
      skipped.append(SkippedStep(step, reason))
      _say(f"skipping checkpoint step {step} ({self.directory / str(step)}): it cannot be "
           f"restored: {reason}")
    if steps:
      raise UserError(
          f"none of the checkpoints in {self.directory} (steps {', '.join(map(str, steps))}) can "
          f"be restored; the first error was: {skipped[0].reason}. If the config changed, use "
          f"the run's own config.yaml; otherwise the files are damaged: move them away to "
          f"start over.")
    return None, None, skipped

  def quarantine(self, steps: list[int], destination: pathlib.Path) -> None:
    """Moves unreadable steps to `destination/<step>` (never deletes them), then rescans."""
    self.wait()
    if jax.process_index() == 0:
      destination.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target = destination / str(step)
        n = 1
        while target.exists():
          target, n = destination / f"{step}-{n}", n + 1
        shutil.move(str(self.directory / str(step)), target)
        _say(f"moved unreadable checkpoint step {step} to {target}")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("lmjax_checkpoint_quarantine")
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _all_processes_agree(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def quiet_orbax_leftovers() -> None:
  """Hides the tracebacks a failed Orbax restore leaves behind in its pending coroutines and
  threads (the same error, already reported, and "Event loop is closed"); others still print."""
  def is_leftover(exc) -> bool:
    text = str(exc)
    return "Encountered error while reading" in text or "Event loop is closed" in text

  unraisable, thread_hook, excepthook = sys.unraisablehook, threading.excepthook, sys.excepthook
  if getattr(unraisable, "lmjax_quiet", False):
    return

  def quiet_unraisable(info):
    if not is_leftover(info.exc_value):
      unraisable(info)

  def quiet_thread(args):
    if not is_leftover(args.exc_value):
      thread_hook(args)

  def quiet_except(kind, value, traceback):  # errors printed from Orbax's C++ callbacks
    if not is_leftover(value):
      excepthook(kind, value, traceback)

  logging.getLogger("asyncio").addFilter(
      lambda record: "exception was never retrieved" not in record.getMessage())
  quiet_unraisable.lmjax_quiet = True
  sys.unraisablehook, threading.excepthook = quiet_unraisable, quiet_thread
  sys.excepthook = quiet_except


def _first_line(error: BaseException) -> str:
  """The root cause of `error` in one line, without TensorStore's multi-line spec dump."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error).split(" See full TensorStore details")[0].strip().splitlines()
  line = text[0] if text else ""
  line = line if len(line) <= 300 else line[:300] + "…"
  return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _say(text: str) -> None:
  if jax.process_index() == 0:
    print(f"lmjax: {text}", file=sys.stderr, flush=True)
