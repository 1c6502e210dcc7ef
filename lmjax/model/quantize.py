"""Weight-only quantization of the blocks' projections (`model.quantization`), through Google's
qwix: a targeted kernel is held as a qwix `QArray` (integer `qvalue` in the kernel's shape,
float32 `scale` with the input dims reduced to 1, or to groups) and dequantized in the matmul.

    params = quantize_params(float_params, param_shapes(config))  # scheme: int8 | int4
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

QLoRA is this with `model.lora`: the QArrays are frozen params (lmjax.model.trainable), float
adapters train on top, and a float base (`model.init_from`, a resume's base) is quantized as it
loads (`quantize_like`), the same way each time. `mode: training` holds float kernels instead
and runs the targeted matmuls on int8 inputs (`int8_matmul`).
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from lmjax.extras import require
from lmjax.model import lora
from lmjax.model.quant_config import QuantizationConfig, QuantMode, QuantScheme


def _qwix():
  return require("qwix", extra="quant", needed_for="model.quantization")


def _qtype(scheme: QuantScheme) -> Any:
  return {QuantScheme.INT8: jnp.int8, QuantScheme.INT4: jnp.int4}[scheme]


def targeted(spec: QuantizationConfig, path: Sequence[str]) -> bool:
  """Whether the projection at module `path` (("layers", "attention", "query")) is quantized
  (held so, or computed so in training)."""
  module = lora.layer_module(tuple(path))
  return spec.enabled and module is not None and lora.targeted(spec.targets, module)


def held_quantized(spec: QuantizationConfig, path: Sequence[str]) -> bool:
  """Whether the projection at `path` stores its kernel as a QArray."""
  return spec.mode is QuantMode.WEIGHTS and targeted(spec, path)


def trains_quantized(spec: QuantizationConfig, path: Sequence[str]) -> bool:
  """Whether the projection at `path` runs its matmul on int8 inputs (quantized training)."""
  return spec.mode is QuantMode.TRAINING and targeted(spec, path)


def int8_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [rows, in] @ kernel [in, out] -> [rows, out] with both quantized to int8 (x per row,
  the kernel per output column, absmax), through qwix's quantization-aware dot_general: its
  backward pass is the float matmul's (straight-through), so float32 master weights train.
  Called directly, not through qwix's QtProvider, for the reasons the module docstring gives."""
  _qwix()  # names lmjax[quant] when qwix is missing
  from qwix._src.core import dot_general_qt  # qwix exports the provider, not the function
  config = dot_general_qt.DotGeneralQtConfig(lhs_qtype=jnp.int8, rhs_qtype=jnp.int8)
  return dot_general_qt.dot_general_qt(x, kernel, (((1,), (0,)), ((), ())), config)


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


def is_quantized(x: Any) -> bool:
  """Whether `x` is a QArray (concrete, or an abstract one of ShapeDtypeStructs); asks nothing
  of qwix until it is imported (then only quantized params made it), so float runs need no
  lmjax[quant]."""
  qwix = sys.modules.get("qwix")
  return qwix is not None and isinstance(x, qwix.QArray)


def quantize_like(value: Any, target: Any) -> Any:
  """Float `value` quantized as the QArray `target` (abstract or concrete) is: its integer type,
  and per its scale's shape which dims are channels (the scale keeps them whole), reduced
  (size 1) or grouped. Each part is placed on `target`'s part's sharding when it has one."""
  shape, scale_shape = tuple(target.shape), tuple(target.scale.shape)
  channelwise = [a for a, (k, s) in enumerate(zip(shape, scale_shape)) if s == k]
  tiled = {a: k // s for a, (k, s) in enumerate(zip(shape, scale_shape)) if 1 < s < k}
  q = _quantizer(target.qvalue.dtype, tuple(channelwise), tuple(sorted(tiled.items())))(value)
  place = lambda part, like: (jax.device_put(part, like.sharding)
                              if getattr(like, "sharding", None) is not None else part)
  return q.replace(qvalue=place(q.qvalue, target.qvalue), scale=place(q.scale, target.scale))


@functools.cache
def _quantizer(qtype: Any, channelwise: tuple[int, ...], tiled: tuple[tuple[int, int], ...]
               ) -> Callable[[Any], Any]:
  """qwix's quantize as one compiled program per kernel shape: done op by op, each of its ~10
  ops compiles on its own and holds a temporary as large as the kernel."""
  return jax.jit(lambda value: _qwix().quantize(
      jnp.asarray(value, jnp.float32), qtype, channelwise_axes=list(channelwise),
      tiled_axes=dict(tiled) or None))


def quantize_params(params: Any, abstract: Any) -> Any:
  """Float `params` (a plain tree, as lmjax.load gives) with each kernel that is a QArray in
  `abstract` (the quantized model's `param_shapes`, boxed or not) replaced by its QArray,
  quantized as the model creates it. Already quantized kernels are left as they are."""
  flat = traverse_util.flatten_dict(params)
  for path, target in traverse_util.flatten_dict(nn.unbox(abstract)).items():
    value = flat.get(path)
    if is_quantized(target) and value is not None and not is_quantized(value):
      flat[path] = quantize_like(value, target)
  return traverse_util.unflatten_dict(flat)


def dequantize_params(params: Any) -> Any:
  """`params` with every QArray as its float32 values: the float model it stands for."""
  return jax.tree.map(lambda x: dequantize(x) if is_quantized(x) else x, params,
                      is_leaf=is_quantized)


def dequantized_view(specs: dict[str, Any], read: Callable[[list[str]], dict[str, Any]]
                     ) -> tuple[dict[str, Any], Callable[[list[str]], dict[str, Any]]]:
  """A checkpoint's flat params as the float model they stand for: `specs` ("."-joined keys ->
  ShapeDtypeStruct or abstract QArray) with each quantized kernel's `kernel.qvalue` and
  `kernel.scale` (or QArray) seen as one float32 `kernel`, and a `read(keys)` that returns
  those dequantized. What a float export (merged weights, PEFT adapters) reads of a QLoRA run."""
  parts = {key.removesuffix(".qvalue"): (key, key.removesuffix("qvalue") + "scale")
           for key in specs if key.endswith(".qvalue")}
  hidden = {part for pair in parts.values() for part in pair}
  view = {key: (jax.ShapeDtypeStruct(spec.shape, jnp.float32) if is_quantized(spec) else spec)
          for key, spec in specs.items() if key not in hidden}
  view.update({key: jax.ShapeDtypeStruct(specs[qvalue].shape, jnp.float32)
               for key, (qvalue, _) in parts.items()})

  def read_view(keys: list[str]) -> dict[str, Any]:
    wanted = [k for k in keys if k not in parts] + [p for k in keys if k in parts for p in parts[k]]
    arrays = read(wanted)
    out = {k: (dequantize(arrays[k]) if is_quantized(arrays[k]) else arrays[k])
           for k in keys if k not in parts}
    qarray = _qwix().QArray
    for key in keys:
      if key in parts:
        qvalue, scale = (arrays[p] for p in parts[key])
        out[key] = dequantize(qarray(jnp.asarray(qvalue), jnp.asarray(scale)))
    return {k: jax.device_get(v) for k, v in out.items()}
  return view, read_view
