"""The model's architecture: one frozen config of switches that covers every registered family
(encoders and decoders, dense or Mixture-of-Experts: `moe`), assembled from small parts
(`config_parts.py`: shape, attention, norms, positions, MLP, heads). The switches' enums are in
`options.py`; the families are registered names (`families.py`), each defined in its own file of
lmjax/hf/families/.

A family name fills in the architectural switches (norm, activation, positions, biases, …) that
define it; every switch can still be set on its own. Derived quantities (head size, parameter
count, FLOPs per token) are properties, so MFU, benchmarks and conversion all read them from
here. The config describes the graph only: where initial weights come from is the run config's
business (`model.init_from`, lmjax.config), and its Hugging Face twin is lmjax/hf/config.py
(reading) and lmjax/hf/config_export.py (writing).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Mapping

from lmjax.errors import UserError
from lmjax.model.config_parts import (AttentionFields, HeadFields, MlpFields, NormFields,
                                      PositionFields, ShapeFields)
from lmjax.model.families import dense_twins, family_fields, resolve_family
from lmjax.model.lora import block_projections, check_targets, targeted
from lmjax.model.lora_config import LoraConfig
from lmjax.model.moe_config import MoeConfig
from lmjax.model.quant_config import QuantizationConfig, QuantMode, QuantScheme
from lmjax.model.options import (Activation, AttentionImpl, ClassifierPooling, ContextParallel,
                                 Head, Norm, NormPosition, PoolerActivation, Positions, Remat,
                                 RopeScaling)
from lmjax.ranges import FRACTION, NON_NEGATIVE, POSITIVE, Range, check_ranges

_MODEL_RANGES = {
    "num_kv_heads": Range(1, why="unset it for as many as model.num_heads"),
    "head_dim": Range(1, why="unset it for model.embed_dim / model.num_heads"),
    "norm_eps": POSITIVE,
    "rope_theta": POSITIVE,
    "rope_local_theta": POSITIVE,
    "position_offset": NON_NEGATIVE,
    "type_vocab_size": Range(0, why="0: no token-type embeddings"),
    "dropout_rate": FRACTION,
    "initializer_range": NON_NEGATIVE,
    "query_pre_attn_scalar": POSITIVE,
    "attn_logit_softcap": POSITIVE,
    "final_logit_softcap": POSITIVE,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig(HeadFields, MlpFields, PositionFields, NormFields, AttentionFields, ShapeFields):
  """Architecture of a Transformer, assembled from its parts (config_parts.py: the shape,
  attention, norms, positions, MLP, heads), plus how it is computed. Build with
  `ModelConfig.for_family` to get a family's defaults."""

  RANGES: ClassVar[Mapping[str, Range]] = _MODEL_RANGES  # lmjax.ranges: checked by validate()

  dropout_rate: float = 0.0
  initializer_range: float = 0.02
  scan_layers: bool = True
  # Keep matmul outputs, recompute the cheap rest in the backward pass: less memory, and on
  # CPU 1.2-1.3x faster than keeping everything (benchmarks/train_throughput.py).
  remat: Remat = Remat.SAVE_DOTS
  attention: AttentionImpl = AttentionImpl.AUTO
  # Attention over a sequence split across devices (mesh.context > 1): ring or all-gathered K/V.
  context_parallel: ContextParallel = ContextParallel.AUTO
  lora: LoraConfig = LoraConfig()
  quantization: QuantizationConfig = QuantizationConfig()

  @classmethod
  def for_family(cls, family: str, **fields) -> ModelConfig:
    """A config with `family`'s architectural defaults (an alias's on top), overridden by
    `fields`."""
    name, defaults = family_fields(family)
    return cls(family=name, **{**defaults, **fields})

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    """Raises UserError naming the first inconsistent field and how to fix it."""
    family, alias_fields = resolve_family(self.family)
    if alias_fields or family.name != self.family:
      raise UserError(f"model.family={self.family!r} is another name for {family.name!r}: build "
                      f"it with ModelConfig.for_family({self.family!r}, ...).")
    self._check_shape()
    check_ranges(self, "model", self.RANGES)
    self._check_heads()
    self._check_positions()
    self._check_norms()
    self._check_classifier()
    self._check_post_norms()
    self._check_sliding_window()
    self._check_attention_kernel()
    self._check_head()
    if self.moe.enabled:
      self._check_experts()
    elif family.experts:
      twins = " or ".join(dense_twins(family)) or "a dense family"
      raise UserError(f"model.family={self.family} is a Mixture-of-Experts model: set "
                      f"model.moe.num_experts (and model.moe.experts_per_token), or choose its "
                      f"dense twin ({twins}).")
    if self.lora.enabled:
      check_targets(self.lora.targets, self.projection_fans(), rank=self.lora.rank)
    if self.quantization.enabled:
      self._check_quantization()
    self._check_labels()

  def _check_quantization(self) -> None:
    spec = self.quantization
    if spec.mode is QuantMode.TRAINING and self.lora.enabled:
      raise UserError("model.quantization.mode=training trains every weight in int8 matmuls; "
                      "with model.lora use mode weights (QLoRA: adapters on a quantized base), "
                      "or drop model.lora.")
    check_targets(spec.targets, self.projection_fans(), key="model.quantization.targets")
    if spec.group_size:
      for module in self.projection_fans():
        # grouped along the last input dim: head_dim for the attention's output, else fan_in
        inputs = self.dim_per_head if module == "attention/out" else self.projection_fans()[module][0]
        if targeted(spec.targets, module) and inputs % spec.group_size:
          raise UserError(f"model.quantization.group_size={spec.group_size} does not divide "
                          f"{module}'s {inputs} inputs: choose a divisor of {inputs}, or unset "
                          f"it for one scale per output channel.")

  def projection_fans(self) -> dict[str, tuple[int, int]]:
    """(fan_in, fan_out) of each block projection, by its path below the layer."""
    d, h = self.embed_dim, self.dim_per_head
    fans = {"attention/query": (d, self.num_heads * h), "attention/key": (d, self.kv_heads * h),
            "attention/value": (d, self.kv_heads * h), "attention/out": (self.num_heads * h, d),
            "mlp/wi_gate": (d, self.mlp_dim), "mlp/wi_up": (d, self.mlp_dim),
            "mlp/wi": (d, self.mlp_dim), "mlp/wo": (self.mlp_dim, d)}
    # A Mixture-of-Experts block's MLP is its experts, which take no adapters.
    return {m: fans[m] for m in block_projections(self.gated_mlp)
            if not (self.moe.enabled and m.startswith("mlp/"))}

  def block_param_count(self) -> int:
    """Weights of one block's matmuls that one token goes through (biases and norms are
    negligible and left out): with experts, the router and the experts_per_token it picks."""
    d, h = self.embed_dim, self.dim_per_head
    attention = d * h * (2 * self.num_heads + 2 * self.kv_heads)
    mlp = d * self.mlp_dim * (3 if self.gated_mlp else 2)
    if self.moe.enabled:
      mlp = d * self.moe.num_experts + self.moe.experts_per_token * 3 * d * self.expert_mlp_dim
    return attention + mlp

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs (forward + backward = 3x forward) for one token of a `seq_len` sequence.

    Matmuls count 2 FLOPs per multiply-add. Attention scores and the weighted sum cost
    2 * 2 * heads * head_dim per token, layer and key the token attends to: all seq_len keys in
    a bidirectional layer, half of them in a causal one (half the score matrix), and in a
    sliding-window layer the keys its window holds, averaged over the positions (windows the
    sequence fits in count as full attention). The output projection (or tied decoder) is
    included; embedding lookups are free.
    """
    matmul_params = self.num_layers * self.block_param_count() + self.embed_dim * self.vocab_size
    keys = sum(self.keys_per_query(seq_len, window) for window in self.layer_windows)
    attention = 4 * self.num_heads * self.dim_per_head * keys
    return 3 * (2 * matmul_params + attention)

  def keys_per_query(self, seq_len: int, window: int | None) -> float:
    """The keys a query of a `seq_len` sequence attends to in a layer with `window` (None: the
    whole context), averaged over its positions; a causal layer without a window counts half."""
    if window is None or window >= seq_len:
      return seq_len / 2 if self.causal else seq_len
    if self.causal:  # min(i + 1, window) for i < seq_len
      return window - window * (window - 1) / (2 * seq_len)
    reach = window - 1  # up to `reach` keys on either side, and the query's own
    return 2 * reach + 1 - reach * (reach + 1) / seq_len



# The switches' enums and sections, importable from here as from their own modules.
__all__ = ["Activation", "AttentionImpl", "ClassifierPooling", "ContextParallel", "Head",
           "LoraConfig", "ModelConfig", "MoeConfig", "Norm", "NormPosition", "PoolerActivation",
           "Positions", "QuantizationConfig", "QuantScheme", "Remat", "RopeScaling"]
