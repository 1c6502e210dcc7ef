"""The parts ModelConfig is assembled from: small frozen groups of switches (the shape,
attention, norms, positions, the MLP, the heads and embeddings), each with the checks and
derived quantities that concern it.

Every switch stays a flat attribute and a flat `model.*` key (`config.norm_eps`,
`model.norm_eps`), as in the configs of MaxText and Hugging Face that users come from: the parts
give the switches a home, not a new spelling. A part's checks may read the other parts' fields
(they all end up on one ModelConfig); ModelConfig.validate runs them in order, after the
value ranges of every field.
"""

from __future__ import annotations

import dataclasses
import math

from lmjax.errors import UserError
from lmjax.model.moe_config import MoeConfig
from lmjax.model.options import (Activation, AttentionImpl, ClassifierPooling, Head, Norm,
                                 NormPosition, PoolerActivation, Positions, RopeScaling)

_frozen = dataclasses.dataclass(frozen=True, kw_only=True)


@_frozen
class ShapeFields:
  """The family and the sizes every model has."""

  family: str                            # a registered family (model.families)
  vocab_size: int
  num_layers: int
  embed_dim: int
  num_heads: int
  mlp_dim: int
  max_seq_len: int

  def _check_shape(self) -> None:
    for name in ("vocab_size", "num_layers", "embed_dim", "num_heads", "mlp_dim", "max_seq_len"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise UserError(f"model.{name} must be a positive integer, got {value!r}.")


@_frozen
class AttentionFields:
  """Heads, their biases and norms, the logits' scale and cap, causality and windows."""

  num_kv_heads: int | None = None        # None: as many as num_heads (no grouping)
  head_dim: int | None = None            # None: embed_dim // num_heads
  qkv_bias: bool = True                  # biases on query/key/value (Qwen2: on, Llama: off)
  # Qwen3's QK-norm: queries and keys normalised per head (an RMSNorm over head_dim with its own
  # scale, and model.norm_eps) after their projections, before the rotation and the KV cache,
  # so that the attention logits do not grow with the projections' scale.
  qk_norm: bool = False
  # The attention logits are scaled by query_pre_attn_scalar ** -0.5 (Gemma 2's key of that
  # name); None: by head_dim ** -0.5.
  query_pre_attn_scalar: float | None = None
  # Soft-capping, cap * tanh(x / cap), as Gemma 2, of the attention logits before the mask
  # (only the XLA attention computes it). None: none.
  attn_logit_softcap: float | None = None
  causal: bool = True
  # Sliding-window (local) attention, as Mistral's and Qwen2's `sliding_window`: a query sees at
  # most the last `sliding_window` slots, itself included (bidirectional models: the keys fewer
  # than `sliding_window` slots away on either side). None: no window.
  sliding_window: int | None = None
  # The layers (0-based) that attend through the window, as Qwen2/Qwen3's `layer_types`; the
  # others see the whole context. None: every layer.
  sliding_layers: tuple[int, ...] | None = None

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.embed_dim // self.num_heads

  @property
  def attention_scale(self) -> float:
    """What the attention logits q k^T are multiplied by before the softmax."""
    return (self.query_pre_attn_scalar or self.dim_per_head) ** -0.5

  @property
  def layer_windows(self) -> tuple[int | None, ...]:
    """Each layer's sliding window, None where the layer sees the whole context."""
    layers = range(self.num_layers) if self.sliding_layers is None else self.sliding_layers
    return tuple(self.sliding_window if i in layers else None for i in range(self.num_layers))

  def _check_heads(self) -> None:
    if self.head_dim is None and self.embed_dim % self.num_heads:
      raise UserError(
          f"model.num_heads={self.num_heads} does not divide model.embed_dim={self.embed_dim}: "
          f"choose a head count that divides the width (e.g. "
          f"{_nearest_divisor(self.embed_dim, self.num_heads)}), or set model.head_dim.")
    if self.kv_heads <= 0 or self.num_heads % self.kv_heads:
      raise UserError(
          f"model.num_kv_heads={self.num_kv_heads} must divide model.num_heads={self.num_heads} "
          f"(each key/value head serves a whole group of query heads).")

  def _check_sliding_window(self) -> None:
    window, layers = self.sliding_window, self.sliding_layers
    if window is None:
      if layers is not None:
        raise UserError(f"model.sliding_layers={list(layers)} needs model.sliding_window (the "
                        f"window those layers attend through); set both, or neither.")
      return
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
      raise UserError(f"model.sliding_window must be a positive integer (the slots each query "
                      f"sees, itself included) or null, got {window!r}.")
    if layers is not None and (list(layers) != sorted(set(layers)) or any(
        not isinstance(i, int) or not 0 <= i < self.num_layers for i in layers)):
      raise UserError(f"model.sliding_layers={list(layers)} must list distinct layer indices in "
                      f"increasing order, each in 0…{self.num_layers - 1} (a preset's follow its "
                      f"own num_layers: set model.sliding_layers too when changing "
                      f"model.num_layers).")
    if self.attention is AttentionImpl.SPLASH:
      raise UserError(f"model.attention=splash has no sliding window (model.sliding_window="
                      f"{window}): set model.attention=xla, or auto (which then uses XLA or "
                      f"cuDNN attention).")

  def _check_attention_kernel(self) -> None:
    """The kernels compute plain softmax(q k^T / sqrt(d)): cuDNN takes another scale but no
    soft-cap, splash neither (`auto` then takes XLA)."""
    if self.attn_logit_softcap is not None and self.attention in (AttentionImpl.SPLASH,
                                                                  AttentionImpl.CUDNN):
      raise UserError(f"model.attention={self.attention.value} cannot soft-cap the attention "
                      f"logits (model.attn_logit_softcap={self.attn_logit_softcap:g}): set "
                      f"model.attention=xla, or auto (which then uses XLA).")
    if self.query_pre_attn_scalar is not None and self.attention is AttentionImpl.SPLASH:
      raise UserError(f"model.attention=splash scales the logits by head_dim ** -0.5 only "
                      f"(model.query_pre_attn_scalar={self.query_pre_attn_scalar:g}): set "
                      f"model.attention=xla or auto.")


@_frozen
class NormFields:
  """Which norm, where, and the extra ones some families add."""

  norm: Norm = Norm.LAYER_NORM
  norm_eps: float = 1e-5
  norm_position: NormPosition = NormPosition.PRE
  norm_bias: bool = True                 # LayerNorm's bias (ModernBERT's have none; RMSNorm: none)
  # A norm after the embeddings in a pre-norm model too (ModernBERT's; post-norm models always
  # have one).
  embedding_norm: bool = False
  # False: layer 0's attention reads its input unnormalised (pre-norm only: ModernBERT's layer 0,
  # whose input is the embeddings' norm, has no attention norm). Its attention_norm params stay
  # in the stacked tree, unused, so that every layer has the same params.
  first_attention_norm: bool = True
  # Gemma 2's sandwich norms: the attention's and the MLP's outputs are normalised too, before
  # they join the residual stream (norm_position=pre only).
  post_norms: bool = False

  @property
  def normalises_embeddings(self) -> bool:
    """Whether a norm follows the embeddings (post-norm models, and `embedding_norm`)."""
    return self.norm_position is NormPosition.POST or self.embedding_norm

  def _check_norms(self) -> None:
    if self.qk_norm and self.norm not in (Norm.RMS_NORM, Norm.RMS_NORM_PLUS_ONE):
      raise UserError(f"model.qk_norm=true normalises queries and keys with an RMSNorm, "
                      f"and needs model.norm=rms_norm (got {self.norm.value!r}); set "
                      f"model.norm=rms_norm or model.qk_norm=false.")
    if not self.norm_bias and self.norm is not Norm.LAYER_NORM:
      raise UserError(f"model.norm_bias=false drops LayerNorm's bias; model.norm="
                      f"{self.norm.value} has none anyway: leave norm_bias at true.")
    if not self.first_attention_norm and self.norm_position is not NormPosition.PRE:
      raise UserError("model.first_attention_norm=false skips layer 0's attention pre-norm "
                      "and needs model.norm_position=pre.")

  def _check_post_norms(self) -> None:
    if self.post_norms and self.norm_position is not NormPosition.PRE:
      raise UserError("model.post_norms=true normalises the attention's and the MLP's outputs "
                      "beside the pre-norms, and needs model.norm_position=pre.")


@_frozen
class PositionFields:
  """Learned positions or RoPE, its scaling, and the local layers' own base."""

  positions: Positions = Positions.LEARNED
  position_offset: int = 0               # RoBERTa numbers positions from padding_idx + 1 = 2
  rope_theta: float = 10_000.0
  rope_scaling: RopeScaling = RopeScaling.NONE
  rope_scaling_factor: float = 8.0       # llama3: wavelengths beyond the original context / factor;
                                         # linear: all of them
  rope_low_freq_factor: float = 1.0      # llama3: wavelengths > original_len / low are scaled
  rope_high_freq_factor: float = 4.0     # llama3: wavelengths < original_len / high are kept
  rope_original_max_len: int = 8192      # llama3: the context length the model was pre-trained at
  # The RoPE base of the sliding-window (local) layers, which then rotate with plain, unscaled
  # RoPE while the others keep rope_theta and rope_scaling (Gemma 3's rope_local_base_freq,
  # ModernBERT's local_rope_theta). None: every layer rotates alike.
  rope_local_theta: float | None = None

  @property
  def num_position_embeddings(self) -> int:
    return self.max_seq_len + self.position_offset

  def _check_positions(self) -> None:
    if self.positions is Positions.ROTARY and self.dim_per_head % 2:
      raise UserError(f"rotary positions need an even head size, got {self.dim_per_head}.")
    if self.rope_scaling is RopeScaling.LLAMA3:
      if self.positions is not Positions.ROTARY:
        raise UserError("model.rope_scaling=llama3 needs model.positions=rotary.")
      if not 0 < self.rope_low_freq_factor < self.rope_high_freq_factor:
        raise UserError(
            f"model.rope_low_freq_factor={self.rope_low_freq_factor} must be positive and below "
            f"model.rope_high_freq_factor={self.rope_high_freq_factor} (Llama 3.1 uses 1 and 4).")
      if self.rope_scaling_factor <= 0 or self.rope_original_max_len <= 0:
        raise UserError(
            f"model.rope_scaling_factor={self.rope_scaling_factor} and model.rope_original_max_len="
            f"{self.rope_original_max_len} must be positive (Llama 3.1 uses 8 and 8192).")
    self._check_rope_variants()

  def _check_rope_variants(self) -> None:
    """Linear RoPE scaling and the local layers' own RoPE base, which need rotary positions
    (and, for the base, local layers to apply to)."""
    if self.rope_scaling is RopeScaling.LINEAR:
      if self.positions is not Positions.ROTARY:
        raise UserError("model.rope_scaling=linear needs model.positions=rotary.")
      if self.rope_scaling_factor <= 0:
        raise UserError(f"model.rope_scaling_factor={self.rope_scaling_factor:g} must be positive "
                        f"(the factor positions are slowed by; Gemma 3 4B and larger use 8).")
    theta = self.rope_local_theta
    if theta is None:
      return
    if self.positions is not Positions.ROTARY:
      raise UserError(f"model.rope_local_theta={theta:g} is the local layers' RoPE base and needs "
                      f"model.positions=rotary; unset it (null).")
    if self.sliding_window is None:
      raise UserError(f"model.rope_local_theta={theta:g} is the RoPE base of the sliding-window "
                      f"(local) layers, and this model has none: set model.sliding_window (and "
                      f"model.sliding_layers), or unset model.rope_local_theta (null).")


@_frozen
class MlpFields:
  """The MLP: its activation, gating and biases, or a Mixture of Experts."""

  activation: Activation = Activation.GELU_TANH
  gated_mlp: bool = False                # SwiGLU-style: act(x W_gate) * (x W_up)
  use_bias: bool = True                  # biases in the MLP and attention output projection
  # A sparse Mixture-of-Experts MLP in every block (Mixtral, Qwen3-MoE); num_experts 0: dense.
  moe: MoeConfig = MoeConfig()

  @property
  def expert_mlp_dim(self) -> int:
    """Each expert's hidden width."""
    return self.moe.mlp_dim or self.mlp_dim

  def _check_experts(self) -> None:
    """The experts' shape (whether a family needs them is ModelConfig's check)."""
    moe = self.moe
    if not self.gated_mlp:
      raise UserError(f"model.moe.num_experts={moe.num_experts}: lmjax's experts are gated "
                      f"(SwiGLU-style); set model.gated_mlp=true or model.moe.num_experts=0.")
    if moe.experts_per_token > moe.num_experts:
      raise UserError(f"model.moe.experts_per_token={moe.experts_per_token} exceeds "
                      f"model.moe.num_experts={moe.num_experts}: each token picks that many "
                      f"distinct experts.")
    if self.use_bias:
      raise UserError("model.moe: lmjax's experts have no biases; set model.use_bias=false.")


@_frozen
class HeadFields:
  """The embeddings and what reads the final hidden states: LM, MLM or classification heads."""

  tie_embeddings: bool = True
  type_vocab_size: int = 0               # BERT token-type embeddings; 0 for none
  # Gemma: the token embeddings are multiplied by sqrt(embed_dim) (in the compute dtype, as HF
  # casts the factor to the hidden states' dtype), as the embedding is tied to the output.
  embed_scale: bool = False
  head: Head = Head.CAUSAL_LM
  # Soft-capping, cap * tanh(x / cap), of the LM heads' output logits (Gemma 2). None: none.
  final_logit_softcap: float | None = None
  pooler: bool = False                   # BERT pooler (dense + activation on the first token)
  pooler_activation: PoolerActivation = PoolerActivation.TANH  # after the pooler's dense
  # The prediction head (`mlm_transform`: dense, activation, `mlm_norm`) before the MLM decoder:
  # its dense's bias (ModernBERT's classifier_bias), its activation (None: model.activation;
  # ModernBERT's classifier_activation), and the decoder's own bias (`output_bias`).
  head_bias: bool = True
  head_activation: Activation | None = None
  decoder_bias: bool = True
  # Head.CLASSIFICATION: which hidden states it reads (`token`: the encoders' first, the
  # decoders' last real one; `mean`: their mean over the real tokens), and whether it reads them
  # through the prediction head (mlm_transform, mlm_norm) first, as ModernBERT's classifier does
  # (so that fine-tuning from an MLM checkpoint keeps its trained head, as in transformers).
  classifier_pooling: ClassifierPooling = ClassifierPooling.TOKEN
  classifier_transform: bool = False
  num_labels: int | None = None          # Head.CLASSIFICATION; None: data.labels' count
  classifier_bias: bool = True           # the classifier's bias (BERT's has one, HF decoders'
                                         # `score` none)

  @property
  def prediction_head(self) -> bool:
    """Whether the model has the prediction head (mlm_transform, mlm_norm)."""
    return self.head is Head.MASKED_LM or (self.head is Head.CLASSIFICATION
                                           and self.classifier_transform)

  def _check_classifier(self) -> None:
    """The classifier's pooling and prediction head, which the pooler excludes."""
    if self.pooler and (self.classifier_pooling is ClassifierPooling.MEAN
                        or self.classifier_transform):
      raise UserError(f"model.pooler=true reads the first token through the pooler, which "
                      f"model.classifier_pooling={self.classifier_pooling.value} / "
                      f"model.classifier_transform={str(self.classifier_transform).lower()} "
                      f"replace: set model.pooler=false, or classifier_pooling=token and "
                      f"classifier_transform=false.")

  def _check_head(self) -> None:
    if self.head is Head.MASKED_LM and self.causal:
      raise UserError("a masked-LM head needs a bidirectional model: set model.causal=false.")

  def _check_labels(self) -> None:
    if self.num_labels is not None and self.num_labels < 2:
      raise UserError(f"model.num_labels must be at least 2 (a classifier tells labels apart), "
                      f"got {self.num_labels}.")


def _nearest_divisor(n: int, target: int) -> int:
  """The divisor of `n` nearest `target`, in O(sqrt(n)) steps (a width of 10**9 is a typo to
  name quickly, not a billion divisions)."""
  small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
  return min(small + [n // d for d in small], key=lambda d: (abs(d - target), d))


__all__ = ["AttentionFields", "HeadFields", "MlpFields", "NormFields", "PositionFields",
           "ShapeFields"]
