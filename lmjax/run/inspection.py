"""`lmjax checkpoints RUN_DIR`: a run's checkpoints, their size on disk and whether they restore.

The default check is cheap and reads no arrays: the step directory was committed (Orbax's
`commit_success.txt` markers and metadata files are there), no file in it is empty, every file
has the size recorded when it was written (a truncated or deleted file fails), and its JSON
record reads. `verify=True` also reads every array of every step (a group of arrays at a
time, so memory holds one group, not the state) and checks that the params have the shapes the
run's model has, which also catches a truncated array file; for a LoRA run whose checkpoints
hold the trained params only, the params are those, and the base they refer to must be there
with the content hash recorded (lmjax.run.base_ref).
"""

from __future__ import annotations

import dataclasses
import pathlib

import flax.linen as nn
import jax

from lmjax.errors import UserError
from lmjax.files import file_sizes
from lmjax.model import ModelConfig, param_shapes
from lmjax.model.trainable import trained_part
from lmjax.run.base_ref import BaseRef, check_base
from lmjax.run.checkpointer import TMP_MARKER, ArrayPath, Checkpointer
from lmjax.run.orbax_errors import first_line
from lmjax.run.record import CheckpointRecord
from lmjax.run.run_dir import RunDir

_VERIFY_GROUP_BYTES = 256 * 2**20  # arrays read at once by `verify`

# Files every committed lmjax checkpoint has (Orbax's markers and metadata of both items).
REQUIRED_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt", "state/commit_success.txt",
                  "state/_METADATA", "state/manifest.ocdbt", "record/commit_success.txt",
                  "record/metadata")


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
  name: str                     # the directory name: the step, or a temporary write's name
  step: int | None
  size_bytes: int
  problem: str | None           # None: restorable (as far as the check went)
  data_position: int | None
  record: CheckpointRecord | None = None


def inspect_checkpoints(run_dir: str | pathlib.Path, *, verify: bool = False
                        ) -> list[CheckpointInfo]:
  """One entry per checkpoint directory of the run (unfinished writes included), by step."""
  run = RunDir(run_dir)
  config = run.require_config()
  if not run.checkpoints.is_dir():
    return []
  checkpointer = Checkpointer(run.checkpoints, keep=config.train.keep_checkpoints)
  try:
    committed = set(checkpointer.steps())
    infos = []
    for path in run.checkpoints.iterdir():
      if not path.is_dir():
        continue
      if TMP_MARKER in path.name:
        step = int(path.name.split(".")[0]) if path.name.split(".")[0].isdigit() else None
        infos.append(CheckpointInfo(path.name, step, _size(path),
                                    "unfinished write (its process died or the disk refused it); never loaded", None))
      elif path.name.isdigit():
        infos.append(_inspect_step(checkpointer, path, int(path.name) in committed))
    if verify:
      bases = {}  # one hash per base, however many steps refer to it
      infos = [_verify(checkpointer, config.model, info, config.init_from, bases)
               for info in infos]
  finally:
    checkpointer.close()
  return sorted(infos, key=lambda i: (i.step is None, i.step, i.name))


def _inspect_step(checkpointer: Checkpointer, path: pathlib.Path, committed: bool
                  ) -> CheckpointInfo:
  files = file_sizes(path)
  step, size = int(path.name), sum(files.values())
  missing = [f for f in REQUIRED_FILES if f not in files]
  empty = sorted(name for name, bytes_ in files.items() if bytes_ == 0)
  problem, record = None, None
  if not committed:
    problem = "not committed"
  elif missing:
    problem = f"missing {', '.join(missing)}"
  elif empty:
    problem = f"empty file(s) {', '.join(empty[:3])}"
  else:
    try:
      record = checkpointer.restore_record(step)
    except Exception as e:  # noqa: BLE001 -- any failure makes the step unusable
      problem = f"record unreadable: {first_line(e)}"
    problem = problem or _changed_files(files, checkpointer.recorded_sizes(step))
  position = record.data_position if record else None
  return CheckpointInfo(path.name, step, size, problem, position, record)


def _changed_files(files: dict[str, int], recorded: dict[str, int] | None) -> str | None:
  """Which of a step directory's recorded files are missing from `files` (its files' sizes now)
  or have another size than when they were written (None when all match, or no sizes were
  recorded)."""
  if not recorded:
    return None
  problems = []
  for name, size in recorded.items():
    now = files.get(name)
    if now != size:
      problems.append(f"{name} is {'missing' if now is None else f'{now} bytes'} "
                      f"(written: {size})")
  return f"{len(problems)} file(s) changed since written: {', '.join(problems[:2])}" \
      if problems else None


def _verify(checkpointer: Checkpointer, model: ModelConfig, info: CheckpointInfo,
            init_from: str | None, bases: dict[BaseRef, str | None]) -> CheckpointInfo:
  """`info`, with what makes the step unusable as its problem: params whose shapes the run's
  model does not have, an array that does not read, or a base model that is not the one
  trained on."""
  if info.problem is not None:
    return info
  base = info.record.base if info.record else None
  try:
    problem = _params_mismatch(checkpointer.array_specs(info.step), model,
                               trained_only=base is not None)
    if problem is None:
      checkpointer.read_every_array(info.step, group_bytes=_VERIFY_GROUP_BYTES)
  except Exception as e:  # noqa: BLE001
    problem = f"restore failed: {first_line(e)}"
  if problem is None and base is not None:
    if base not in bases:
      try:
        check_base(base, init_from)
        bases[base] = None
      except UserError as e:
        bases[base] = str(e)
    problem = bases[base]
  return info if problem is None else dataclasses.replace(info, problem=problem)


def _params_mismatch(specs: dict[ArrayPath, jax.ShapeDtypeStruct], model: ModelConfig, *,
                     trained_only: bool) -> str | None:
  """What differs between the checkpoint's params and those of `model` (its trained part
  only, for a LoRA run that refers to its base), or None."""
  params = nn.unbox(param_shapes(model))
  flat, _ = jax.tree_util.tree_flatten_with_path(trained_part(params, model) if trained_only
                                                 else params)
  # a quantized kernel (QLoRA's base) is a QArray: its parts are attributes (qvalue, scale)
  key = lambda k: str(k.key if hasattr(k, "key") else k.name)
  expected = {("params", *map(key, path)): leaf.shape for path, leaf in flat}
  saved = {path: spec.shape for path, spec in specs.items() if path[0] == "params"}
  for path in sorted(set(expected) | set(saved)):
    if expected.get(path) != saved.get(path):
      name = "/".join(path)
      return (f"param {name} is {list(saved[path]) if path in saved else 'missing'}, the run's "
              f"model has {list(expected[path]) if path in expected else 'no such param'}")
  return None


def _size(path: pathlib.Path) -> int:
  return sum(file_sizes(path).values())


def format_table(infos: list[CheckpointInfo], *, verified: bool) -> str:
  """The `lmjax checkpoints` table: step, bytes on disk, data position, status."""
  ok = "restorable (verified)" if verified else "complete"
  lines = [f"{'step':>8}  {'bytes':>12}  {'data_position':>13}  status"]
  for info in infos:
    step = str(info.step) if info.step is not None else "?"
    position = str(info.data_position) if info.data_position is not None else "-"
    status = ok if info.problem is None else f"NOT RESTORABLE: {info.problem}"
    if info.name != step:
      status += f" [{info.name}]"
    lines.append(f"{step:>8}  {info.size_bytes:>12}  {position:>13}  {status}")
  bases = dict.fromkeys(i.record.base for i in infos if i.record and i.record.base)
  lines += [f"LoRA adapters only; the base model is {base}" for base in bases]
  return "\n".join(lines)
