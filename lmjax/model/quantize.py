"""Weight-only quantization of the blocks' projections (`model.quantization`), through Google's
qwix: a targeted kernel is held as a qwix `QArray` (integer `qvalue` in the kernel's shape,
float32 `scale` with the input dims reduced to 1, or to groups) and dequantized in the matmul.

    params = quantize_params(float_params, config)   # config.quantization.scheme: int8 | int4
    logits = Transformer(config).apply({"params": params}, ids)

Why qwix's arrays and not `qwix.quantize_model` with a `PtqProvider`: the provider intercepts
`jax.lax.dot_general` and finds the weight by tracing the operand back to a param, but
lmjax's `matmul` (lmjax.model.layers) uses `@`, which reaches dot_general through jax's
internals, so nothing is intercepted and the model silently stays float; routed through
`jax.lax.dot_general`, the provider then stores the 2-D compute view of each [*in, *out]
kernel and fails on its logical axis names (flax_util.update_sharding asserts one name a dim),
and decoding rebuilds the model unrolled (lmjax.model.unrolled), dropping the provider's
wrapped class. So the model creates the QArray itself (`quantized_init`), with boxes that keep
the kernel's logical axes, and `quantize_params` quantizes trained float params the same way.
The matmul dequantizes first, as `qwix.dot_general` does itself for a float input and a
quantized weight (its "slow path", which XLA fuses).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from lmjax.extras import require
from lmjax.model import lora
from lmjax.model.quant_config import QuantizationConfig, QuantScheme


def _qwix():
  return require("qwix", extra="quant", needed_for="model.quantization")


def _qtype(scheme: QuantScheme) -> Any:
  return {QuantScheme.INT8: jnp.int8, QuantScheme.INT4: jnp.int4}[scheme]


def targeted(spec: QuantizationConfig, path: Sequence[str]) -> bool:
  """Whether the projection at module `path` (("layers", "attention", "query")) is quantized."""
  module = lora.layer_module(tuple(path))
  return spec.enabled and module is not None and lora.targeted(spec.targets, module)


def quantize_kernel(kernel: jax.Array, spec: QuantizationConfig, *, in_dims: Sequence[int]
                    ) -> Any:
  """kernel [..., *in, *out] -> QArray with one scale per output channel (and per any leading
  layers axis), or per `spec.group_size` consecutive inputs along the last input dim
  `in_dims[-1]` (then per index of the other input dims: a group stays inside one head)."""
  grouped = in_dims[-1:] if spec.group_size else in_dims
  channelwise = [a for a in range(kernel.ndim) if a not in grouped]
  tiled = {in_dims[-1]: spec.group_size} if spec.group_size else None
  return _qwix().quantize(kernel.astype(jnp.float32), _qtype(spec.scheme),
                          channelwise_axes=channelwise, tiled_axes=tiled)


def quantized_init(init: Callable, axes: Sequence[str | None], spec: QuantizationConfig, *,
                   in_dims: int) -> Callable:
  """A param initializer: `init`'s float kernel, quantized, each part in a logically
  partitioned box (the scale's reduced input dims unsharded)."""
  def create(key, shape, dtype=jnp.float32):
    q = quantize_kernel(init(key, shape, dtype), spec, in_dims=tuple(range(in_dims)))
    scale_axes = (None,) * in_dims + tuple(axes[in_dims:])  # reduced (or grouped) inputs
    return q.replace(qvalue=nn.LogicallyPartitioned(q.qvalue, tuple(axes)),
                     scale=nn.LogicallyPartitioned(q.scale, scale_axes))
  return create


def dequantize(kernel: Any) -> jax.Array:
  """A QArray's float32 values (integer steps times scales)."""
  return _qwix().dequantize(kernel)


def quantize_params(params: Any, abstract: Any, spec: QuantizationConfig) -> Any:
  """Float `params` (a plain tree, as lmjax.load gives) with each kernel that `spec` targets
  replaced by its QArray, quantized as the model creates it: `abstract` is the quantized
  model's `param_shapes`, whose QArrays tell which kernels and which dims. Already quantized
  kernels are left as they are."""
  qarray = _qwix().QArray
  flat = traverse_util.flatten_dict(params)
  for path, target in traverse_util.flatten_dict(nn.unbox(abstract)).items():
    value = flat.get(path)
    if isinstance(target, qarray) and value is not None and not isinstance(value, qarray):
      flat[path] = quantize_kernel(jnp.asarray(value), spec, in_dims=_input_dims(target))
  return traverse_util.unflatten_dict(flat)


def _input_dims(target: Any) -> tuple[int, ...]:
  """The input dims of a quantized kernel's abstract QArray: those its scale reduces (grouped:
  the last input dim only, as `quantize_kernel` treats the others as channels)."""
  return tuple(a for a, (k, s) in enumerate(zip(target.shape, target.scale.shape)) if s != k)


def dequantize_params(params: Any) -> Any:
  """`params` with every QArray as its float32 values: the float model it stands for."""
  qarray = _qwix().QArray
  return jax.tree.map(lambda x: dequantize(x) if isinstance(x, qarray) else x, params,
                      is_leaf=lambda x: isinstance(x, qarray))
