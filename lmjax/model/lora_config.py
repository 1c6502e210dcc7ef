"""The `model.lora` section: low-rank adapters on the blocks' projections (lmjax.model.lora)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Mapping

from lmjax.model.options import ParamDtype
from lmjax.ranges import FRACTION, NON_NEGATIVE, POSITIVE, Range, check_ranges, check_unused


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Low-rank adapters on the blocks' projections (lmjax.model.lora); rank 0: none."""

  RANGES: ClassVar[Mapping[str, Range]] = {"rank": NON_NEGATIVE, "alpha": POSITIVE,
                                           "dropout": FRACTION}

  rank: int = 0
  alpha: float = 16.0
  dropout: float = 0.0                 # on the adapter's input only, as peft
  targets: tuple[str, ...] = ("all-linear",)  # lmjax or HF projection names, or path patterns
  rslora: bool = False                 # scale alpha / sqrt(rank) instead of alpha / rank
  base_dtype: ParamDtype = ParamDtype.FLOAT32  # how the frozen base is stored (bfloat16: half)

  def __post_init__(self):
    check_ranges(self, "model.lora", self.RANGES)
    if self.rank == 0:  # no adapters: a setting of theirs would be silently ignored
      check_unused(self, "model.lora", "rank", off="0 (no adapters: the whole model trains)",
                   fix="give model.lora.rank (e.g. 8 or 16) to train LoRA adapters, or remove "
                       "the model.lora section to train the whole model")

  @property
  def enabled(self) -> bool:
    return self.rank > 0


__all__ = ["LoraConfig"]
