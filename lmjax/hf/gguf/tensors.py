"""A GGUF file's tensors as the Hugging Face tensors of its config.json: names, shapes, values.

The HF names are the ones lmjax's key map expects for that config (lmjax.hf.bindings); each
gets its GGUF name from the gguf library's own table of llama.cpp's names
(`gguf.get_tensor_name_map`: `model.layers.3.self_attn.q_proj` -> `blk.3.attn_q`), so no name
table lives here. Values are dequantized to float32, then the model type's `GgufArch.tensor`
undoes what llama.cpp's converter did to them (Llama's q/k row order, Gemma's 1 + w norms).
Every tensor is checked (present, expected, shaped as the metadata says) before any is read.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np

from lmjax.errors import UserError
from lmjax.hf.bindings import abstract_params, bind
from lmjax.hf.config import hf_config_to_model_config
from lmjax.hf.family import ModelType
from lmjax.hf.gguf.reader import GgufFile, gguf_library
from lmjax.hf.safetensors_files import TensorEntry

# llama.cpp's precomputed RoPE frequency factors (Llama 3.1-style scaling): no config.json key
# states them, so a file holding them is refused rather than imported without them.
_ROPE_FACTORS = "rope_freqs.weight"


def _shown(names, limit: int = 5) -> str:
  names = sorted(names)
  return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit
                                     else "")


def hf_names(file: GgufFile, model_type: ModelType, hf_config: Mapping[str, Any]
             ) -> dict[str, tuple[str, tuple[int, ...]]]:
  """{GGUF tensor name: (HF tensor name, HF shape)} for every tensor of `file`; UserError for
  a tensor the model has no place for, one it lacks, or a shape the metadata contradicts."""
  config = hf_config_to_model_config(hf_config, scan_layers=False)
  if _ROPE_FACTORS in file.tensors:
    raise UserError(f"{file.path} holds {_ROPE_FACTORS}, llama.cpp's per-frequency RoPE factors "
                    f"(Llama 3.1-style rope scaling), which its metadata does not state as "
                    f"config.json parameters: lmjax cannot import it yet. Convert the model's "
                    f"Hugging Face checkpoint instead.")
  gguf = gguf_library()
  arch = next((a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == file.arch), None)
  if arch is None:
    raise UserError(f"{file.path}: the installed gguf library does not know architecture "
                    f"{file.arch!r}: upgrade it (pip install -U gguf).")
  name_map = gguf.get_tensor_name_map(arch, config.num_layers)
  params = abstract_params(config)
  key_map = model_type.key_map
  expected = {}
  for binding in bind(key_map, config):
    hf_name = f"{key_map.base_prefix}.{binding.hf_name}" if binding.in_body else binding.hf_name
    stem, suffix = hf_name.rsplit(".", 1)
    gguf_name = name_map.get_name(stem)
    if gguf_name is None:
      raise UserError(f"{file.path}: the gguf library names no {file.arch} tensor for "
                      f"{hf_name}, which this model needs: upgrade gguf (pip install -U gguf).")
    expected[f"{gguf_name}.{suffix}"] = (hf_name, binding.hf_shape(params, config))
  unexpected = set(file.tensors) - set(expected)
  if unexpected:
    raise UserError(f"{file.path} holds tensor(s) its {file.arch} model has no place for: "
                    f"{_shown(unexpected)}. Is its metadata the model's own?")
  missing = set(expected) - set(file.tensors)
  if missing:
    raise UserError(f"{file.path} lacks tensor(s) its metadata implies: {_shown(missing)}. It "
                    f"is damaged, or not a whole model.")
  for name, (hf_name, shape) in expected.items():
    if file.shape(name) != tuple(shape):
      raise UserError(f"{file.path}: tensor {name} has shape {list(file.shape(name))}, but the "
                      f"file's metadata implies {list(shape)} ({hf_name}).")
  return expected


def _values(file: GgufFile, name: str, model_type: ModelType,
            hf_config: Mapping[str, Any]) -> np.ndarray:
  values = file.read(name)
  fix = model_type.gguf.tensor
  return values if fix is None else np.asarray(fix(name, values, hf_config), np.float32)


def hf_tensors(file: GgufFile, model_type: ModelType, hf_config: Mapping[str, Any]
               ) -> list[TensorEntry]:
  """The HF tensors of `file` as safetensors entries (lmjax.hf.safetensors_files), each read
  and dequantized only when it is written: memory holds one tensor at a time."""
  names = hf_names(file, model_type, hf_config)
  return [TensorEntry(hf_name, shape, np.dtype(np.float32),
                      functools.partial(_values, file, name, model_type, hf_config))
          for name, (hf_name, shape) in names.items()]


__all__ = ["hf_names", "hf_tensors"]
