"""A GGUF file's Q8_0 projections kept as the file's own int8 blocks, where lmjax's int8 scheme
holds the same numbers.

    params = file_quantized("model.Q8_0.gguf", config, params)  # config: int8, group_size 32

Q8_0 stores each row of a weight [out, in] in blocks of 32 consecutive inputs: 32 int8 values and
one float16 scale, symmetric (value = q * d). lmjax's int8 scheme with `group_size: 32`
(lmjax.model.quantize) holds a kernel [*in, *out] as int8 values with one float32 scale per 32
consecutive inputs of its last input dim, for each output: the same grouping wherever a group
never straddles a head (head_dim a multiple of 32, for the attention output, whose input dims
are [heads, head_dim]). There the file's int8 values and scales (float16 -> float32 is exact)
are the QArray itself, and dequantize to exactly the float weights the import wrote (an int8
times a float16 fits float32's mantissa), whereas quantizing those floats again may round a
value to its neighbour. The mapping is checked, not assumed: each kernel's scales, carried
through the model type's value transform (Llama's q/k row order) and the key map's transform
like the float tensor, must be constant on every lmjax group and give back the import's float
values bit for bit; a kernel that does not (another ggml type, another grouping) is left float,
to be quantized like any other.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from lmjax.hf.bindings import Binding, abstract_params, bind, flatten, index_dims, unflatten
from lmjax.hf.gguf.config import hf_config, model_type_of_gguf
from lmjax.hf.gguf.reader import GgufFile, gguf_library, open_gguf
from lmjax.hf.gguf.tensors import hf_names
from lmjax.model import ModelConfig
from lmjax.model.quant_config import QuantScheme
from lmjax.model.quantize import is_quantized

log = logging.getLogger(__name__)

BLOCK = 32  # Q8_0's values per scale


def _blocks(file: GgufFile, name: str) -> tuple[np.ndarray, np.ndarray]:
  """Q8_0 tensor `name` as (int8 values [out, in], float32 scales [out, in / 32])."""
  out, inputs = file.shape(name)
  raw = np.asarray(file.tensors[name].data, np.uint8).reshape(-1, 2 + BLOCK)  # d, then 32 q
  scales = raw[:, :2].copy().view(np.float16).astype(np.float32).reshape(out, inputs // BLOCK)
  return raw[:, 2:].copy().view(np.int8).reshape(out, inputs), scales


def _hf_blocks(file: GgufFile, name: str, fix: Any, hf_cfg: dict[str, Any]
               ) -> tuple[np.ndarray, np.ndarray] | None:
  """(values, scales repeated to [out, in]) of Q8_0 tensor `name` in HF's order (the model
  type's transform undone on both), or None where that transform does not carry them exactly."""
  values, scales = _blocks(file, name)
  scales = np.repeat(scales, BLOCK, axis=1)
  if fix is None:
    return values, scales
  fixed_values = np.asarray(fix(name, values.astype(np.float32), hf_cfg), np.float32)
  fixed_scales = np.asarray(fix(name, scales, hf_cfg), np.float32)
  floats = np.asarray(fix(name, values * scales, hf_cfg), np.float32)  # what the import wrote
  if not np.array_equal(fixed_values * fixed_scales, floats) or not np.array_equal(
      fixed_values, np.clip(np.round(fixed_values), -128, 127)):
    return None
  return fixed_values.astype(np.int8), fixed_scales


def _grouped(scales: np.ndarray, scale_shape: tuple[int, ...]) -> np.ndarray | None:
  """Scales [*kernel shape] (one per value) as `scale_shape` (one per lmjax group), or None
  where they are not constant on each group."""
  tiles = [k // s for k, s in zip(scales.shape, scale_shape)]
  grouped = scales[tuple(slice(None, None, t) for t in tiles)]
  back = grouped
  for axis, tile in enumerate(tiles):
    back = np.repeat(back, tile, axis=axis)
  return grouped if np.array_equal(back, scales) else None


def _fill(binding: Binding, blocks: tuple[np.ndarray, np.ndarray], config: ModelConfig,
          specs: dict[str, Any], parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> bool:
  """Writes `binding`'s kernels (values and grouped scales) into `parts`; False where one's
  scales do not fit lmjax's groups."""
  values = binding.transform.to_lmjax(blocks[0], config)
  scales = binding.transform.to_lmjax(blocks[1], config)
  for (key, index), value, scale in zip(binding.targets, values, scales):
    spec = specs[key]
    grouped = _grouped(scale, tuple(spec.scale.shape[index_dims(index):]))
    if grouped is None:
      return False
    qvalue, qscale = parts.setdefault(key, (np.zeros(spec.shape, np.int8),
                                            np.zeros(spec.scale.shape, np.float32)))
    where = () if index is None else index if isinstance(index, tuple) else (index,)
    qvalue[where] = value
    qscale[where] = grouped
  return True


def stores_q8_0(path: str | os.PathLike) -> bool:
  """Whether GGUF file `path` holds its blocks' matrices (blk.N.*.weight, 2-D) as Q8_0."""
  q8_0 = gguf_library().GGMLQuantizationType.Q8_0
  with open_gguf(path) as file:
    matrices = [name for name in file.tensor_names
                if name.startswith("blk.") and len(file.shape(name)) == 2]
    return bool(matrices) and all(file.tensors[n].tensor_type == q8_0 for n in matrices)


def file_quantized(path: str | os.PathLike, config: ModelConfig, params: dict[str, Any]
                   ) -> dict[str, Any]:
  """`params` (float, of GGUF file `path`'s model) with each kernel that `config` holds as int8
  in groups of 32, and that the file stores as Q8_0 blocks matching those groups, replaced by
  the QArray of the file's values and scales (see the module docstring). `config` is the
  quantized model's; other kernels are left as they are."""
  spec = config.quantization
  if spec.scheme is not QuantScheme.INT8 or spec.group_size != BLOCK:
    return params
  specs = {key: s for key, s in abstract_params(config).items()
           if is_quantized(s) and s.qvalue.dtype == jnp.int8}
  q8_0 = gguf_library().GGMLQuantizationType.Q8_0
  parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
  left_float: set[str] = set()
  with open_gguf(path) as file:
    model_type = model_type_of_gguf(file)
    hf_cfg = hf_config(file)
    gguf_name = {hf: name for name, (hf, _) in hf_names(file, model_type, hf_cfg).items()}
    key_map = model_type.key_map
    for binding in bind(key_map, config):
      keys = [key for key, _ in binding.targets]
      if not all(key in specs for key in keys):
        continue
      hf_name = f"{key_map.base_prefix}.{binding.hf_name}" if binding.in_body else binding.hf_name
      name = gguf_name[hf_name]
      blocks = (_hf_blocks(file, name, model_type.gguf.tensor, hf_cfg)
                if file.tensors[name].tensor_type == q8_0 else None)
      if blocks is None or not _fill(binding, blocks, config, specs, parts):
        left_float.update(keys)
  kept = {key: specs[key].replace(qvalue=jnp.asarray(q), scale=jnp.asarray(s))
          for key, (q, s) in parts.items() if key not in left_float}
  if kept:
    log.info("%s: %d of %d int8 kernels hold the file's Q8_0 values and scales as they are",
             path, len(kept), len(specs))
  return unflatten({**flatten(params), **kept})


__all__ = ["BLOCK", "file_quantized", "stores_q8_0"]
