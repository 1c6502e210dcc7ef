"""What a rerun of `lmjax train` on an existing run directory may change: the resume policy.

Rerunning resumes the run with the config given now. Its keys fall in three kinds:

- SCHEDULE keys change how long and how visibly the run goes on, not where it goes (steps,
  logging, evaluation and checkpoint cadence, retention, the non-finite policy, the mesh, its
  pipeline micro-batches and processes, input workers, rematerialisation, attention kernels and
  how attention runs over a sequence split across devices, memory chunking, where metrics are
  logged): they are applied.
- FIXED keys cannot change: the model's graph (a checkpoint of one model does not fit another)
  and the tokenizer (the run keeps the one it saved, whose vocabulary is the model's).
- Every other key (data, batch size, sequence length, seed, optimizer, precision, …) changes
  the training trajectory: a change is refused with the list of differences unless the user
  passes `--allow-config-change`.

Every resume that changes anything appends a line to RUN_DIR/config_history.jsonl (the step it
resumed from, each change as [old, new], and whether `--allow-config-change` was needed), and
config.yaml then holds the config now in use.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

from lmjax.config import Config
from lmjax.errors import UserError

SCHEDULE = frozenset({
    "train.steps", "train.log_every", "train.eval_every", "train.eval_batches",
    "train.checkpoint_every", "train.keep_checkpoints", "train.keep_every", "train.nan_policy",
    "train.debug_nan_at_step", "train.loss_chunk_size", "train.microbatches", "data.workers",
    "model.remat", "model.attention", "model.context_parallel",
    "model.init_from", "data.replace_tokenizer",  # they only mattered at step 0
})
SCHEDULE_SECTIONS = ("mesh.", "distributed.", "logging.")
FIXED_EXCEPT_MODEL = frozenset({"data.tokenizer"})


@dataclasses.dataclass(frozen=True)
class Change:
  key: str       # dotted, e.g. "train.learning_rate"
  old: Any
  new: Any

  @property
  def kind(self) -> str:
    """"schedule", "fixed" or "trajectory" (see the module docstring)."""
    if self.key in SCHEDULE or self.key.startswith(SCHEDULE_SECTIONS):
      return "schedule"
    if self.key.startswith("model.") or self.key in FIXED_EXCEPT_MODEL:
      return "fixed"
    return "trajectory"

  def __str__(self) -> str:
    return f"{self.key}: {self.old!r} -> {self.new!r}"


def config_changes(saved: Config, new: Config) -> list[Change]:
  """Every key whose value differs between the saved and the new config, in config order."""
  old_flat, new_flat = _flat(saved.to_dict()), _flat(new.to_dict())
  # The tokenizer each would make, not how it is said: unset is bpe unless fine-tuning.
  old_flat["data.tokenizer"], new_flat["data.tokenizer"] = (
      c.data.tokenizer or ("bpe" if c.init_from is None else None) for c in (saved, new))
  return [Change(k, old_flat.get(k), new_flat.get(k)) for k in dict.fromkeys([*old_flat, *new_flat])
          if old_flat.get(k) != new_flat.get(k)]


def check_model_unchanged(saved: Config, new: Config, run_dir: Any) -> None:
  """UserError if `new` describes another model than the run's (for eval, which reads the
  run's weights with the config given now)."""
  fixed = [c for c in config_changes(saved, new) if c.kind == "fixed" and c.key.startswith("model.")]
  if fixed:
    raise UserError(f"{run_dir} holds a run of a different model ({_listed(fixed)}); resuming "
                    f"it with this config is impossible. Use a new --run-dir, or the run's own "
                    f"config.")


def check_resume(saved: Config, new: Config, run_dir: Any, *, allow_change: bool) -> list[Change]:
  """The changes a resume of `run_dir` with `new` applies; UserError for those it may not."""
  check_model_unchanged(saved, new, run_dir)
  changes = config_changes(saved, new)
  fixed = [c for c in changes if c.kind == "fixed"]
  if fixed:
    raise UserError(f"{run_dir} was trained with another tokenizer ({_listed(fixed)}); a run "
                    f"keeps its tokenizer. Use a new --run-dir, or drop the override.")
  trajectory = [c for c in changes if c.kind == "trajectory"]
  if trajectory and not allow_change:
    raise UserError(
        f"resuming {run_dir} with this config would change the run it is training: "
        f"{_listed(trajectory)}. Pass --allow-config-change to resume with these values (the "
        f"change is recorded in config_history.jsonl), use a new --run-dir to start a run with "
        f"them, or rerun with the run's own config ({run_dir}/config.yaml).")
  return changes


def history_entry(changes: list[Change], *, step: int, allowed: bool) -> str:
  """One line of config_history.jsonl."""
  return json.dumps({
      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "resumed_from_step": step,
      "changes": {c.key: [c.old, c.new] for c in changes},
      "allow_config_change": allowed and any(c.kind == "trajectory" for c in changes),
  })


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _listed(changes: list[Change]) -> str:
  return "; ".join(map(str, changes))
