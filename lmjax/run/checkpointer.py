"""Orbax checkpoints of the train state plus a small typed JSON record (lmjax.run.record).

Step N lives in RUN_DIR/checkpoints/N/. Saves are asynchronous: `save` returns once the arrays
are copied off the devices and the write finishes in the background; `wait` blocks until it has.
The newest `keep` checkpoints are kept, plus every step divisible by `keep_every` forever.

`save_streamed` writes a checkpoint whose arrays are made one at a time (DeferredArray leaves),
and `restore_arrays` reads some arrays of one back: imports and exports use them to hold one
array at a time rather than the whole state. Such checkpoints restore like any other.

Orbax writes each checkpoint under a temporary name, renamed once complete (on a bucket: in
place, then N/commit_success.txt; lmjax.run.orbax_buckets): a write killed midway leaves
`N.orbax-checkpoint-tmp-*` (or N without the marker), never a step. A committed step can still
be damaged afterwards (a truncated or deleted file): `restore_newest` treats a failed restore as
the ground truth, warns which step it skipped and why, and falls back to the next older one.
Nothing unreadable is ever deleted: the trainer moves such steps aside (`quarantine`).

A save that fails (disk full, directory not writable) fails either at once or later in the
background; `write_error` reports the latter without blocking, so the trainer can stop at the
next step boundary, and `room_error` checks the free space before a save, so that a full disk
stops the run at the step it cannot save. Either way the error is a `WriteFailed` naming the
step, the cause and the steps still intact; the failed write leaves only a temporary directory,
never a step, and no earlier step is touched. `close` after a failure returns promptly.

A failed Orbax restore can leave tracebacks in its pending coroutines and threads; the `lmjax`
command hides those (lmjax.cli.process), a library user's process is left as it is.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import pathlib
import shutil
from typing import Any, Callable, Mapping, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from lmjax.errors import UserError, WriteFailed
from lmjax.files import file_sizes, nearest_existing, read_json_object, write_text_atomic
from lmjax.run.orbax_buckets import atomicity_for
from lmjax.run.orbax_errors import first_line, os_cause, release_orbax_threads
from lmjax.run.record import CheckpointRecord, TrainState
from lmjax.run.streamed_arrays import streaming_handlers
from lmjax.storage import Path, as_path, is_remote, move_tree

log = logging.getLogger(__name__)

T = TypeVar("T")
TMP_MARKER = ".orbax-checkpoint-tmp"
SIZES_FILE = "checkpoint_sizes.json"  # beside the checkpoints directory: each step's file sizes
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
    directory = as_path(directory)  # a bucket's (epath) goes to Orbax as it is
    self.directory = directory if is_remote(directory) else directory.absolute()
    policies = [ocp.checkpoint_managers.LatestN(n=keep)]
    if keep_every:
      policies.append(ocp.checkpoint_managers.EveryNSteps(interval_steps=keep_every))
    self._options = ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=async_save,
        atomicity_options=atomicity_for(directory),  # on a bucket: committed by a marker file
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies))
    self._opened: ocp.CheckpointManager | None = None
    self._pending: int | None = None          # the step of a save that may still be writing
    self._failure: WriteFailed | None = None  # the first save that failed; no save after it
    self._last_size = 0                       # bytes of the last checkpoint this wrote

  @property
  def _manager(self) -> ocp.CheckpointManager:
    """Orbax's manager, made on first use: it creates the directory, which a run must not
    have before its first save."""
    if self._opened is None:
      self._opened = ocp.CheckpointManager(self.directory, options=self._options,
                                           item_names=ITEMS)
    return self._opened

  def steps(self) -> list[int]:
    """Committed steps, oldest first (whether they are readable is only known on restore)."""
    if self._opened is None and not self.directory.is_dir():
      return []
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def unfinished_writes(self) -> list[Path]:
    """Temporary directories of writes that never completed (the writer died); on a bucket,
    where Orbax writes steps in place, the step directories without commit_success.txt."""
    if not self.directory.is_dir():
      return []
    if is_remote(self.directory):
      return sorted(p for p in self.directory.iterdir()
                    if p.name.isdigit() and not (p / "commit_success.txt").exists())
    return sorted(p for p in self.directory.iterdir() if TMP_MARKER in p.name)

  def save(self, step: int, state: TrainState, record: CheckpointRecord) -> None:
    """Starts writing `state` and `record` as checkpoint `step`; raises WriteFailed if this
    or the previous save failed."""
    self.wait()
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record.to_json())))
    except Exception as e:  # noqa: BLE001 -- whatever the filesystem raised, said in one line
      raise self._failed(step, os_cause(e)) from None
    self._pending = step

  def write_error(self) -> WriteFailed | None:
    """The error of the last save if it has failed in the background, without waiting for one
    still in progress (then None)."""
    if self._failure is None and self._pending is not None \
        and not self._manager.is_saving_in_progress():
      self._settle()
    return self._failure

  def _settle(self) -> None:
    """Waits for the pending save; records its failure, or the sizes of its files."""
    step, self._pending = self._pending, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      self._failed(step, os_cause(e))
      return
    self._record_sizes(step)

  def _record_sizes(self, step: int) -> None:
    """Remembers the committed step's size (the next free-space check needs it) and, on
    process 0, adds its file sizes to SIZES_FILE beside the checkpoints directory
    (RUN_DIR/checkpoint_sizes.json; dropping steps no longer there), so that a cheap check can
    tell a truncated file from a complete one (lmjax.run.inspection)."""
    files = file_sizes(self.directory / str(step))
    self._last_size = sum(files.values())
    if jax.process_index() != 0:
      return
    path = self.directory.parent / SIZES_FILE
    sizes = {name: recorded for name, recorded in (read_json_object(path) or {}).items()
             if (self.directory / name).is_dir()}
    sizes[str(step)] = files
    write_text_atomic(path, json.dumps(sizes, indent=1))

  def recorded_sizes(self, step: int) -> dict[str, int] | None:
    """{file relative to the step's directory: bytes} as written, or None if not recorded."""
    try:
      return (read_json_object(self.directory.parent / SIZES_FILE) or {}).get(str(step))
    except UserError:  # a damaged sizes file only loses this check
      return None

  def room_error(self, step: int, state: TrainState) -> WriteFailed | None:
    """WriteFailed when the disk has less free space than checkpoint `step` will take (the
    last one's size, else the state's bytes over the processes): a full disk then stops the
    run at the step it could not save, rather than steps later when the write fails."""
    if self.write_error() is not None:
      return self._failure
    if is_remote(self.directory):  # a bucket has no free space to ask about
      return None
    need = self._last_size or sum(x.nbytes for x in jax.tree.leaves(state)) // jax.process_count()
    free = shutil.disk_usage(nearest_existing(self.directory)).free
    if free >= need:
      return None
    return self._failed(step, f"{os.strerror(errno.ENOSPC)} ({free / 2**20:.1f} MiB free, a "
                              f"checkpoint takes about {need / 2**20:.1f} MiB)")

  def _failed(self, step: int | None, cause: str) -> WriteFailed:
    if self._failure is None:
      intact = [s for s in self.steps() if s != step]
      kept = (f"{_steps(intact)} intact and a rerun resumes from step {intact[-1]}" if intact
              else "there is no earlier checkpoint")
      self._failure = WriteFailed(
          f"could not write checkpoint step {step} to {self.directory}: {cause}. "
          f"Training stopped; {kept}. Free disk space or make the directory writable, then "
          f"rerun the same command.")
    return self._failure

  def save_streamed(self, step: int, state: TrainState, record: CheckpointRecord) -> None:
    """Writes checkpoint `step` before returning, making each DeferredArray leaf of `state`
    only when it is written and dropping it after: memory holds one array, not the state.

    For states that are not in memory to begin with (imported weights); it restores like a
    `save`d checkpoint. Leaves that are not DeferredArrays are saved as `save` saves them.
    """
    self.wait()
    options = dataclasses.replace(self._options, enable_async_checkpointing=False)
    # A manager of its own: `self._manager` ties "state" to StandardSave (array leaves only).
    manager = ocp.CheckpointManager(self.directory, options=options,
                                    handler_registry=streaming_handlers())
    try:
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(state), record=ocp.args.JsonSave(record.to_json())))
    except OSError as e:
      raise self._failed(step, os_cause(e)) from None
    finally:
      manager.close()
    self._record_sizes(step)
    if self._opened is not None:
      self._opened.reload()

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
      _set_path(item, path, jax.ShapeDtypeStruct(spec.shape, spec.dtype))
      _set_path(restore_args, path, ocp.RestoreArgs(restore_type=np.ndarray))
    restored = self._restore_part(step, item, restore_args)
    arrays = {}
    for path in specs:
      node = restored
      for key in path:
        node = node[key]
      arrays[path] = node
    return arrays

  def read_every_array(self, step: int, *, group_bytes: int) -> None:
    """Reads every array of checkpoint `step`'s state to the host, consecutive groups of at most
    `group_bytes` at a time (a larger array alone), each dropped before the next is read; raises
    what a damaged file raises."""
    metadata = ocp.PyTreeCheckpointHandler().metadata(self._step_dir(step) / "state").tree
    leaves, treedef = jax.tree_util.tree_flatten(metadata, is_leaf=lambda x: hasattr(x, "shape"))
    groups, size = [[]], 0
    for i, leaf in enumerate(leaves):
      nbytes = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
      if groups[-1] and size + nbytes > group_bytes:
        groups.append([])
        size = 0
      groups[-1].append(i)
      size += nbytes
    for group in groups:  # the others are Orbax placeholders: not read
      chosen = set(group)
      pick = lambda make: jax.tree_util.tree_unflatten(treedef, [
          make(leaf) if i in chosen else ocp.PLACEHOLDER for i, leaf in enumerate(leaves)])
      self._restore_part(step, pick(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)),
                         pick(lambda leaf: ocp.RestoreArgs(restore_type=np.ndarray)),
                         partial=False)

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """Checkpoint `step`'s params onto the shardings that `abstract_params` (ShapeDtypeStructs)
    carry, reading nothing else (no optimizer state)."""
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding),
                                abstract_params)
    restored = self._restore_part(step, {"params": abstract_params}, {"params": restore_args})
    return restored["params"]

  def _restore_part(self, step: int, item: Any, restore_args: Any, *, partial: bool = True
                    ) -> Any:
    """Restores the part of step `step`'s state that `item` names (missing keys with
    `partial`, Orbax placeholders otherwise)."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
      return handler.restore(self._step_dir(step) / "state", args=ocp.args.PyTreeRestore(
          item, restore_args=restore_args, partial_restore=partial))
    finally:
      handler.close()

  def _step_dir(self, step: int) -> Path:
    if step not in self.steps():
      raise UserError(f"{self.directory} has no checkpoint at step {step}.")
    return self.directory / str(step)

  def restore(self, step: int, abstract_state: TrainState
              ) -> tuple[TrainState, CheckpointRecord]:
    """Restores checkpoint `step` onto the shardings carried by `abstract_state`.

    An imported checkpoint (record `params_only`) has no optimizer state: it comes back None.
    """
    record = self.restore_record(step)
    if record.params_only:
      abstract_state = abstract_state.replace(opt_state=None)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"], record

  def restore_record(self, step: int) -> CheckpointRecord:
    restored = self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
    return CheckpointRecord.from_json(restored["record"])

  def restore_newest(self, restore: Callable[[int], T], *, below: int | None = None
                     ) -> tuple[int | None, T | None, list[SkippedStep]]:
    """(step, restore(step)) for the newest step whose restore succeeds, and the steps skipped.

    Every skipped step is reported (a warning of this module's logger) with the reason. Returns (None, None, []) when
    there are no checkpoints; raises UserError when there are some but none restores (rather
    than let a caller start the run over on top of them). With several processes, a step
    counts as restored only if it restored on every process.
    """
    for path in self.unfinished_writes():
      _warn("ignoring %s: a checkpoint write that never finished (its process died or the disk refused it)", path.name)
    skipped: list[SkippedStep] = []
    steps = [s for s in reversed(self.steps()) if below is None or s < below]
    for step in steps:
      try:
        result, reason = restore(step), None
      except UserError:  # the user's mistake (e.g. a changed base model), not a damaged step
        raise
      except Exception as e:  # noqa: BLE001 -- whatever a damaged file raises, try an older step
        result, reason = None, first_line(e)
      if _all_processes_agree(reason is None):
        return step, result, skipped
      reason = reason or "another process could not restore it"
      skipped.append(SkippedStep(step, reason))
      _warn("skipping checkpoint step %d (%s): it cannot be restored: %s", step,
            self.directory / str(step), reason)
    if steps:
      raise UserError(
          f"none of the checkpoints in {self.directory} (steps {', '.join(map(str, steps))}) can "
          f"be restored; the first error was: {skipped[0].reason}. If the config changed, use "
          f"the run's own config.yaml; otherwise the files are damaged: move them away to "
          f"start over.")
    return None, None, skipped

  def quarantine(self, steps: list[int], destination: Path) -> None:
    """Moves unreadable steps to `destination/<step>` (never deletes them), then rescans."""
    self.wait()
    if jax.process_index() == 0:
      destination.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target = destination / str(step)
        n = 1
        while target.exists():
          target, n = destination / f"{step}-{n}", n + 1
        move_tree(self.directory / str(step), target)
        log.warning("moved unreadable checkpoint step %d to %s", step, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("lmjax_checkpoint_quarantine")
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until the pending save is written; raises WriteFailed if it (or one before) failed."""
    if self._pending is not None:
      self._settle()
    elif self._failure is None and self._opened is not None:
      self._opened.wait_until_finished()
    if self._failure is not None:
      raise self._failure

  def close(self) -> None:
    """Waits for the pending save, then releases Orbax's threads. After a failed save this
    neither waits on nor raises from the failed write: the error is already reported."""
    try:
      self.wait()
    finally:
      try:
        if self._opened is not None:
          self._opened.close()
      except Exception:  # noqa: BLE001 -- only the failed write's error, already reported
        if self._failure is None:
          raise
      if self._failure is not None:
        release_orbax_threads()


def _all_processes_agree(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def _steps(steps: list[int]) -> str:
  return f"step {steps[0]} is" if len(steps) == 1 else f"steps {', '.join(map(str, steps))} are"


def _warn(message: str, *args) -> None:
  if jax.process_index() == 0:  # every process skips the same steps: one says so
    log.warning(message, *args)


def _set_path(tree: dict, path: ArrayPath, value: Any) -> None:
  """tree[path[0]][path[1]]… = value, making the dicts on the way."""
  *parents, leaf = path
  for key in parents:
    tree = tree.setdefault(key, {})
  tree[leaf] = value
