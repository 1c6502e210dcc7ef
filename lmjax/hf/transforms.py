"""Named, exact tensor transforms between Hugging Face weights and lmjax params.

Each transform maps one HF tensor to one or more lmjax arrays and back. They only transpose,
reshape, split and concatenate, so a round trip reproduces every bit. Head counts come from
the lmjax side (`head_dim` is the config's), so one transform serves query and key/value alike.

HF layouts: `nn.Linear` weights are [out, in]; GPT-2's `Conv1D` weights are already [in, out].
lmjax kernels are in x out, with attention heads split out: query/key/value [embed, heads,
head_dim], output [heads, head_dim, embed].
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from lmjax.model.config import ModelConfig

ToLmjax = Callable[[np.ndarray, ModelConfig], tuple[np.ndarray, ...]]
ToHf = Callable[[Sequence[np.ndarray], ModelConfig], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Transform:
  """An invertible map: HF tensor -> tuple of lmjax arrays (`to_lmjax`) and back (`to_hf`)."""

  name: str
  to_lmjax: ToLmjax
  to_hf: ToHf


def _one(name: str, to_lmjax: Callable[[np.ndarray, ModelConfig], np.ndarray],
         to_hf: Callable[[np.ndarray, ModelConfig], np.ndarray]) -> Transform:
  """A transform between one HF tensor and one lmjax array."""
  return Transform(name, lambda t, c: (to_lmjax(t, c),), lambda a, c: to_hf(a[0], c))


IDENTITY = _one("identity", lambda t, c: t, lambda a, c: a)

# nn.Linear weight [out, in] <-> kernel [in, out].
TRANSPOSE = _one("transpose", lambda t, c: t.T, lambda a, c: a.T)

# nn.Linear q/k/v weight [heads * head_dim, embed] <-> kernel [embed, heads, head_dim].
LINEAR_TO_HEADS = _one(
    "linear_to_heads",
    lambda t, c: t.T.reshape(t.shape[1], -1, c.dim_per_head),
    lambda a, c: a.reshape(a.shape[0], -1).T)

# q/k/v bias [heads * head_dim] <-> [heads, head_dim].
BIAS_TO_HEADS = _one(
    "bias_to_heads",
    lambda t, c: t.reshape(-1, c.dim_per_head),
    lambda a, c: a.reshape(-1))

# nn.Linear output weight [embed, heads * head_dim] <-> kernel [heads, head_dim, embed].
LINEAR_FROM_HEADS = _one(
    "linear_from_heads",
    lambda t, c: t.T.reshape(-1, c.dim_per_head, t.shape[0]),
    lambda a, c: a.reshape(-1, a.shape[-1]).T)

# Conv1D output weight [heads * head_dim, embed] <-> kernel [heads, head_dim, embed].
CONV1D_FROM_HEADS = _one(
    "conv1d_from_heads",
    lambda t, c: t.reshape(-1, c.dim_per_head, t.shape[1]),
    lambda a, c: a.reshape(-1, a.shape[-1]))


def _split_qkv_kernel(t: np.ndarray, c: ModelConfig) -> tuple[np.ndarray, ...]:
  # [embed, 3 * heads * head_dim] -> 3 x [embed, heads, head_dim]; columns are q | k | v.
  return tuple(part.reshape(t.shape[0], -1, c.dim_per_head) for part in np.split(t, 3, axis=1))


def _merge_qkv_kernel(arrays: Sequence[np.ndarray], c: ModelConfig) -> np.ndarray:
  return np.concatenate([a.reshape(a.shape[0], -1) for a in arrays], axis=1)


# GPT-2's fused Conv1D `c_attn` weight [embed, 3 * embed] <-> query, key, value kernels.
FUSED_QKV_KERNEL = Transform("fused_qkv_kernel", _split_qkv_kernel, _merge_qkv_kernel)

# GPT-2's fused `c_attn` bias [3 * embed] <-> query, key, value biases [heads, head_dim].
FUSED_QKV_BIAS = Transform(
    "fused_qkv_bias",
    lambda t, c: tuple(part.reshape(-1, c.dim_per_head) for part in np.split(t, 3)),
    lambda arrays, c: np.concatenate([a.reshape(-1) for a in arrays]))


# ModernBERT's fused nn.Linear `Wqkv` weight [3 * heads * head_dim, embed] (rows q | k | v)
# <-> query, key, value kernels; its bias is FUSED_QKV_BIAS.
LINEAR_FUSED_QKV_KERNEL = Transform(
    "linear_fused_qkv_kernel", lambda t, c: _split_qkv_kernel(t.T, c),
    lambda arrays, c: _merge_qkv_kernel(arrays, c).T)

# ModernBERT's fused nn.Linear `Wi` weight [2 * mlp, embed] <-> gate and up kernels [embed, mlp]:
# the first half of its output is activated (the gate), the second multiplies it.
LINEAR_FUSED_GATE_UP_KERNEL = Transform(
    "linear_fused_gate_up_kernel", lambda t, c: tuple(np.split(t.T, 2, axis=1)),
    lambda arrays, c: np.concatenate(arrays, axis=1).T)

# Its bias [2 * mlp] <-> gate and up biases [mlp].
FUSED_GATE_UP_BIAS = Transform(
    "fused_gate_up_bias", lambda t, c: tuple(np.split(t, 2)),
    lambda arrays, c: np.concatenate(arrays))


def hf_shape(transform: Transform, lmjax_shapes: Sequence[tuple[int, ...]], dtype: np.dtype,
             config: ModelConfig) -> tuple[int, ...]:
  """The HF tensor shape that `transform` makes from lmjax arrays of `lmjax_shapes`.

  Runs the transform on zero-stride stand-ins, which reshape and transpose without allocating.
  """
  stand_ins = [np.broadcast_to(np.zeros((), dtype), shape) for shape in lmjax_shapes]
  return tuple(transform.to_hf(stand_ins, config).shape)


__all__ = ["Transform", "IDENTITY", "TRANSPOSE", "LINEAR_TO_HEADS", "BIAS_TO_HEADS",
           "LINEAR_FROM_HEADS", "CONV1D_FROM_HEADS", "FUSED_QKV_KERNEL", "FUSED_QKV_BIAS",
           "LINEAR_FUSED_QKV_KERNEL", "LINEAR_FUSED_GATE_UP_KERNEL", "FUSED_GATE_UP_BIAS",
           "hf_shape"]
