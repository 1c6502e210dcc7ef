"""Building blocks: dense projections, norms, rotary positions and the MLP.

Parameters are float32 and carry logical axis names; computation happens in `dtype`. Norm
statistics are always taken in float32.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmjax.model import lora, quantize
from lmjax.model.config import Activation, ModelConfig, Norm, RopeScaling
from lmjax.model.context_parallel import context_split


def initializer(config: ModelConfig) -> nn.initializers.Initializer:
  return nn.initializers.normal(stddev=config.initializer_range)


class DenseGeneral(nn.Module):
  """x @ kernel (+ bias) over the trailing `len(in_shape)` dims of x; kernel is in x out.

  Shapes: x [..., *in_shape] -> [..., *out_shape]. `axes` names kernel dims (in then out). A
  block projection that `config.lora` targets adds its low-rank adapter (lmjax.model.lora),
  whose dropout is off when `deterministic`; one that `config.quantization` targets holds its
  kernel quantized (lmjax.model.quantize) and dequantizes it for the matmul.
  """

  in_shape: Sequence[int]
  out_shape: Sequence[int]
  axes: Sequence[str | None]
  use_bias: bool
  config: ModelConfig
  dtype: jnp.dtype = jnp.float32
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_shape, out_shape = tuple(self.in_shape), tuple(self.out_shape)
    kernel = self._kernel(in_shape + out_shape, len(in_shape))
    int8 = quantize.trains_quantized(self.config.quantization, self.path)
    y = matmul(x, kernel, in_dims=len(in_shape), dtype=self.dtype, rows=self._rows(),
               product=quantize.int8_matmul if int8 else jnp.matmul)
    if self._adapted():
      y = y + self._adapter(x, in_shape, out_shape)
    if self.use_bias:
      bias = self.param(
          "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(self.axes[len(in_shape):])),
          out_shape, jnp.float32)
      y = y + bias.astype(self.dtype)
    return y

  def _kernel(self, shape: tuple[int, ...], in_dims: int) -> jax.Array:
    """The kernel [*in, *out], float32 (dequantized if it is stored quantized)."""
    spec = self.config.quantization
    if not quantize.held_quantized(spec, self.path):
      return self.param("kernel", nn.with_logical_partitioning(
          initializer(self.config), tuple(self.axes)), shape, jnp.float32)
    return quantize.dequantize(self.param("kernel", quantize.quantized_init(
        initializer(self.config), self.axes, spec, in_dims=in_dims), shape, jnp.float32))

  def _rows(self) -> bool:
    """Whether x's leading dims may be flattened (see `matmul`): not over a split sequence."""
    return context_split(self.config) is None

  def _adapted(self) -> bool:
    spec = self.config.lora
    module = lora.layer_module(tuple(self.path))
    return spec.enabled and module is not None and lora.targeted(spec.targets, module)

  def _adapter(self, x: jax.Array, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
               ) -> jax.Array:
    """scale * dropout(x) lora_a lora_b, as peft computes it."""
    spec, n_in = self.config.lora, len(in_shape)
    fan_in = math.prod(in_shape)
    a = self.param("lora_a", nn.with_logical_partitioning(
        _peft_uniform(fan_in), (*self.axes[:n_in], "lora_rank")),
        (*in_shape, spec.rank), jnp.float32)
    b = self.param("lora_b", nn.with_logical_partitioning(
        nn.initializers.zeros_init(), ("lora_rank", *self.axes[n_in:])),
        (spec.rank, *out_shape), jnp.float32)
    h = nn.Dropout(spec.dropout)(x, deterministic=self.deterministic)
    rows = self._rows()
    h = matmul(h, a, in_dims=n_in, dtype=self.dtype, rows=rows)            # [..., rank]
    return matmul(h, b, in_dims=1, dtype=self.dtype, rows=rows) * lora.scale(spec.alpha, spec.rank,
                                                                             spec.rslora)


def _peft_uniform(fan_in: int) -> nn.initializers.Initializer:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): what peft's kaiming_uniform_(a=sqrt(5)) draws."""
  bound = fan_in ** -0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def embedding_lookup(table: jax.Array, ids: jax.Array, rows: str | None = None) -> jax.Array:
  """The rows `ids` [batch, length] of an embedding table [rows, embed] -> [batch, length, embed].

  The table is gathered over `fsdp` first (its `embed` axis whole on every device, as FSDP does
  for every weight it uses): a gather from embed-sharded rows leaves its output sharded over
  `embed` by `fsdp`, and moving that to the activations' `batch` sharding over the same axis is
  an all-to-all XLA's partitioner cannot do for a gather, so it replicated the whole output
  ("Involuntary full rematerialization", meshes with fsdp and tensor both > 1). Rows split over
  `tensor` (the vocabulary) stay split: each device looks up its rows and the partial lookups
  are summed, Megatron's vocabulary-parallel embedding.
  """
  table = nn.with_logical_constraint(table, (rows, None))
  return jnp.take(table, ids, axis=0, mode="clip")


def matmul(x: jax.Array, kernel: jax.Array, *, in_dims: int, dtype: jnp.dtype,
           rows: bool = True, product=jnp.matmul) -> jax.Array:
  """x [..., *in] @ kernel [*in, *out] -> [..., *out], computed as one 2-D matmul.

  The leading dims of x and the in/out dims of the kernel are flattened first (free reshapes of
  contiguous arrays): XLA:CPU's backward pass of a contraction over several dims (the kernel's
  gradient sums over batch and length) takes a path 2x slower than the 2-D matmul it amounts to,
  and accelerators do not care. `rows=False` keeps the leading dims apart: where the sequence is
  split across devices as well as the batch, [batch, length] has no sharded flat form, and XLA
  would gather the whole sequence onto each device to make one. `product` multiplies the 2-D
  operands (lmjax.model.quantize.int8_matmul for quantized training).
  """
  in_shape, out_shape = kernel.shape[:in_dims], kernel.shape[in_dims:]
  lead = x.shape[:x.ndim - in_dims]
  x2 = x.reshape(*((-1,) if rows else lead), math.prod(in_shape)).astype(dtype)  # [rows, in]
  k2 = kernel.reshape(math.prod(in_shape), math.prod(out_shape)).astype(dtype)  # [in, out]
  return product(x2, k2).reshape(*lead, *out_shape)


class LayerNorm(nn.Module):
  """LayerNorm (with a bias unless `norm_bias` is off) or RMSNorm (scaled by w, or by 1 + w as Gemma's), as the config says,
  over the last dim of x; statistics in float32. `axis` is that dim's logical name: "embed" for
  the blocks' norms, "kv" (head_dim) for the QK-norms."""

  config: ModelConfig
  dtype: jnp.dtype = jnp.float32
  axis: str = "embed"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    axes = (self.axis,)
    plus_one = self.config.norm is Norm.RMS_NORM_PLUS_ONE
    init = nn.initializers.zeros_init() if plus_one else nn.initializers.ones_init()
    scale = self.param("scale", nn.with_logical_partitioning(init, axes), (d,), jnp.float32)
    x32 = x.astype(jnp.float32)
    if self.config.norm in (Norm.RMS_NORM, Norm.RMS_NORM_PLUS_ONE):
      y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.config.norm_eps)
      if plus_one:  # as HF's Gemma2RMSNorm: scaled by 1 + w in float32, then cast back
        return (y * (1.0 + scale)).astype(self.dtype)
      # As HF's LlamaRMSNorm: normalise in float32, cast back, then scale.
      return scale.astype(self.dtype) * y.astype(self.dtype)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.config.norm_eps) * scale
    if self.config.norm_bias:
      y = y + self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), axes),
                         (d,), jnp.float32)
    return y.astype(self.dtype)


def soft_cap(x: jax.Array, cap: float | None) -> jax.Array:
  """cap * tanh(x / cap), as Gemma 2 bounds its logits (HF's order of operations); None: x."""
  return x if cap is None else jnp.tanh(x / cap) * cap


def activation(kind: Activation, x: jax.Array) -> jax.Array:
  match kind:
    case Activation.GELU_TANH:
      return jax.nn.gelu(x, approximate=True)
    case Activation.GELU:
      return jax.nn.gelu(x, approximate=False)
    case Activation.SILU:
      return jax.nn.silu(x)
    case Activation.RELU:
      return jax.nn.relu(x)
  raise ValueError(f"unknown activation {kind}")


class Mlp(nn.Module):
  """Feed-forward block: wo(act(wi x)) or, gated, wo(act(wi_gate x) * wi_up x)."""

  config: ModelConfig
  dtype: jnp.dtype = jnp.float32
  deterministic: bool = True  # LoRA dropout off

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    dense = lambda name, i, o, axes: DenseGeneral(
        (i,), (o,), axes, cfg.use_bias, cfg, self.dtype, self.deterministic, name=name)
    if cfg.gated_mlp:
      gate = dense("wi_gate", cfg.embed_dim, cfg.mlp_dim, ("embed", "mlp"))(x)
      up = dense("wi_up", cfg.embed_dim, cfg.mlp_dim, ("embed", "mlp"))(x)
      h = activation(cfg.activation, gate) * up  # [batch, length, mlp]
    else:
      h = activation(cfg.activation, dense("wi", cfg.embed_dim, cfg.mlp_dim, ("embed", "mlp"))(x))
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    return dense("wo", cfg.mlp_dim, cfg.embed_dim, ("mlp", "embed"))(h)


def rope_inverse_frequencies(config: ModelConfig, *, local: bool = False) -> np.ndarray:
  """The rotary inverse frequencies, float32 [head_dim / 2], computed as Hugging Face does.

  theta^(-2j/head_dim) for j < head_dim/2, in float32 as HF's `rope_init_fn`s; with `linear`
  scaling, all divided by `factor`; with Llama 3.1's `llama3` scaling, wavelengths longer than
  original_len / low_freq_factor are slowed by `factor`, those shorter than
  original_len / high_freq_factor are kept, and those between are blended. `local`: those of the
  sliding-window layers, plain RoPE of base `rope_local_theta` where the config sets one. A
  static numpy constant: it depends only on the config.
  """
  own_base = local and config.rope_local_theta is not None
  theta = config.rope_local_theta if own_base else config.rope_theta
  head_dim = config.dim_per_head
  exponents = np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)
  # torch raises a Python-float base to float32 exponents in float64, then rounds: so do we.
  powers = (np.float64(theta) ** exponents.astype(np.float64)).astype(np.float32)
  inv_freq = np.float32(1.0) / powers  # [head_dim / 2]
  if own_base or config.rope_scaling is RopeScaling.NONE:
    return inv_freq
  if config.rope_scaling is RopeScaling.LINEAR:  # HF divides in float32 by the factor
    return inv_freq / np.float32(config.rope_scaling_factor)
  # Scalars combine in float64 and meet the float32 arrays as float32, as HF's torch code does.
  factor, low, high = (config.rope_scaling_factor, config.rope_low_freq_factor,
                       config.rope_high_freq_factor)
  original_len = config.rope_original_max_len
  f32 = np.float32
  low_freq_wavelen, high_freq_wavelen = f32(original_len / low), f32(original_len / high)
  wavelen = f32(2 * np.pi) / inv_freq
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / f32(factor), inv_freq)
  smooth = (f32(original_len) / wavelen - f32(low)) / f32(high - low)
  smoothed = (f32(1) - smooth) * scaled / f32(factor) + smooth * scaled
  medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def layer_inverse_frequencies(config: ModelConfig) -> tuple[np.ndarray, ...] | None:
  """Each layer's rotary inverse frequencies [head_dim / 2] where the local (sliding-window)
  layers have a RoPE base of their own (`rope_local_theta`: Gemma 3, ModernBERT); None where
  every layer rotates alike (the attention then takes the config's one constant)."""
  if config.rope_local_theta is None:
    return None
  local, other = (rope_inverse_frequencies(config, local=True), rope_inverse_frequencies(config))
  return tuple(other if window is None else local for window in config.layer_windows)


def rotary_embedding(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray | jax.Array
                     ) -> jax.Array:
  """Rotary positions in Hugging Face's rotate-half layout.

  x: [batch, length, heads, head_dim]; positions: [batch, length] int; inv_freq: [head_dim / 2]
  from `rope_inverse_frequencies` (a scanned layer's slice of a stacked table: data, not a
  constant). The first half of the head dims pairs with the second half,
  so HF Llama q/k weights load without permutation.
  """
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [batch, length, head_dim/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [batch, length, 1, head_dim]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)
