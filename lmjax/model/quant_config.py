"""The `model.quantization` section: weight-only quantized projections (lmjax.model.quantize)."""

from __future__ import annotations

import dataclasses
import enum
from typing import ClassVar, Mapping

from lmjax.errors import UserError
from lmjax.ranges import Range, check_ranges, check_unused


class QuantScheme(enum.Enum):
  NONE = "none"
  INT8 = "int8"
  INT4 = "int4"


class QuantMode(enum.Enum):
  WEIGHTS = "weights"    # kernels stored as integers, dequantized in the matmul (inference, QLoRA)
  TRAINING = "training"  # float32 kernels, trained; each matmul quantizes its inputs (QAT)


@dataclasses.dataclass(frozen=True)
class QuantizationConfig:
  """Weight-only quantization of the blocks' projections: their kernels are stored as integers
  with float32 scales and dequantized in the matmul (activations stay float); scheme none: off."""

  RANGES: ClassVar[Mapping[str, Range]] = {
      "group_size": Range(1, why="unset it for one scale per output channel")}

  # int8 (1 byte a weight, logits within ~1% of float) or int4 (values -8..7: a quarter of
  # int8's steps, coarser; jax on CPU still spends a byte on each)
  scheme: QuantScheme = QuantScheme.NONE
  # which projections: the vocabulary of model.lora.targets (lmjax or Hugging Face names,
  # all-linear, or a regular expression on the path below the layer, e.g. "mlp/.*");
  # embeddings, norms, heads and Mixture-of-Experts experts stay float
  targets: tuple[str, ...] = ("all-linear",)
  # null: one scale per output channel; N: one per N consecutive inputs of each output channel
  # (grouped, along the last input dim: head_dim for attention/out), for int4's coarse steps
  group_size: int | None = None
  # weights: the kernels are held quantized (generate, score, eval, serve; QLoRA's frozen base).
  # training: quantization-aware training: float32 kernels that the optimizer updates, each
  # targeted matmul run on int8 inputs (activations per token, weights per output channel;
  # qwix's QAT dot_general), gradients straight through as float
  mode: QuantMode = QuantMode.WEIGHTS

  def __post_init__(self):
    check_ranges(self, "model.quantization", self.RANGES)
    if not self.enabled:
      check_unused(self, "model.quantization", "scheme", off="none (float weights)",
                   fix="give model.quantization.scheme (int8 or int4), or remove the "
                       "model.quantization section")
    if self.mode is QuantMode.TRAINING and (self.scheme is not QuantScheme.INT8
                                            or self.group_size):
      raise UserError(f"model.quantization.mode=training runs int8 matmuls per channel: set "
                      f"scheme int8 (not {self.scheme.value}) and leave group_size unset "
                      f"(it is {self.group_size}).")

  @property
  def enabled(self) -> bool:
    return self.scheme is not QuantScheme.NONE


__all__ = ["QuantMode", "QuantScheme", "QuantizationConfig"]
