"""What a checkpoint holds: the train state's arrays and a typed JSON record beside them.

`TrainState` is the pytree Orbax writes (its field names are the checkpoint's top-level keys:
`step`, `params`, `opt_state`); `CheckpointRecord` is the small JSON item next to it that says
where the run stood. Both are defined here, below the trainer, so that loading, inspecting and
converting runs need nothing of the trainer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.struct
import jax

from lmjax.run.base_ref import BaseRef


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array      # int32 scalar: number of updates applied
  params: Any          # float32 master weights (a LoRA run with a base: the trained part only)
  opt_state: Any       # None in an imported checkpoint (weights only)


@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
  """The JSON record of checkpoint `step`.

  A trained step records where the data pipeline stood and how it got there; an imported one
  (`params_only`) records where its weights came from. The batch for step k is a function of
  (seed, k) and dropout keys derive from (seed, step), so no RNG state is stored (`rng` says so).
  """

  step: int
  lmjax_version: str
  config: dict[str, Any]                 # the resolved run config the step was written with
  data_position: int | None = None       # the next step's batch index: the step itself
  data_iterator: dict[str, Any] | None = None   # the Grain iterator state
                                                # (lmjax.data.pipeline.grain_pipeline)
  rng: dict[str, Any] | None = None
  skipped_steps: int = 0                 # non-finite updates skipped so far
  elapsed_seconds: float = 0.0           # training time up to this step
  params_only: bool = False              # an import: no optimizer state yet
  source: str | None = None              # for an import, the directory the weights came from
  base: BaseRef | None = None            # a LoRA run's frozen base, not in the checkpoint

  @classmethod
  def trained(cls, *, step: int, lmjax_version: str, config: dict[str, Any], seed: int,
              data_iterator: dict[str, Any] | None, skipped_steps: int,
              elapsed_seconds: float, base: BaseRef | None = None) -> CheckpointRecord:
    """The record of a step the trainer took; `base` when its params are the trained part only
    (lmjax.run.base_ref)."""
    return cls(step=step, lmjax_version=lmjax_version, config=config, data_position=step,
               data_iterator=data_iterator, rng={"seed": seed, "derived_from": "step"},
               skipped_steps=skipped_steps, elapsed_seconds=elapsed_seconds, base=base)

  @classmethod
  def imported(cls, *, source: str, lmjax_version: str, config: dict[str, Any]
               ) -> CheckpointRecord:
    """The record of weights imported as step 0."""
    return cls(step=0, lmjax_version=lmjax_version, config=config, params_only=True,
               source=source)

  def to_json(self) -> dict[str, Any]:
    """The JSON object written: the keys of a trained or of an imported record."""
    if self.params_only:
      keys = ("step", "params_only", "source", "lmjax_version", "config")
    else:
      keys = ("step", "data_position", "data_iterator", "lmjax_version", "rng", "skipped_steps",
              "elapsed_seconds", "config")
    written = {key: getattr(self, key) for key in keys}
    if self.base is not None:
      written["base"] = self.base.to_json()
    return written

  @classmethod
  def from_json(cls, raw: Mapping[str, Any] | None) -> CheckpointRecord:
    """A record as written by any lmjax version (keys it lacks take their defaults)."""
    raw = dict(raw or {})
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in raw.items() if k in names and v is not None}
    values.setdefault("step", 0)
    values.setdefault("lmjax_version", "unknown")
    values.setdefault("config", {})
    values.setdefault("data_position", values["step"])  # records before it existed, and imports
    if "base" in values:
      values["base"] = BaseRef.from_json(values["base"])
    return cls(**values)
