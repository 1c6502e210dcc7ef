"""LoRA adapters on the way to Hugging Face: merged into the weights, or as a `peft` adapter.

`merged_view` presents a LoRA model's params as those of the same model without LoRA (each
kernel plus its adapter's product), so the ordinary export writes merged weights.
`export_peft` writes the adapters alone as a PEFT LoRA directory, `adapter_config.json` and
`adapter_model.safetensors`, that `peft.PeftModel.from_pretrained(base, dir)` loads onto the
base model's Hugging Face export:

    lora_A [rank, fan_in]  = lora_a (kernel's in dims flattened).T
    lora_B [fan_out, rank] = lora_b (kernel's out dims flattened).T

named `base_model.model.<HF module>.lora_{A,B}.weight`. GPT-2 fuses q/k/v into one `c_attn`
Conv1D: its adapter is the q/k/v adapters side by side (A stacked, B block-diagonal, of rank
3r), with peft's `rank_pattern`/`alpha_pattern` keeping the scale.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from lmjax.errors import UserError
from lmjax.files import staged_directory
from lmjax.hf.bindings import bind
from lmjax.hf.config import model_config_to_hf_config
from lmjax.hf.family import model_type_named
from lmjax.hf.safetensors_files import TensorEntry, write_safetensors_file
from lmjax.model import Head, ModelConfig
from lmjax.model.config import LoraConfig
from lmjax.model.lora import ADAPTER_NAMES, adapter_delta, scale

Read = Callable[[Sequence[str]], Mapping[str, Any]]
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def without_lora(config: ModelConfig) -> ModelConfig:
  return dataclasses.replace(config, lora=LoraConfig())


def _adapter_keys(kernel_key: str) -> tuple[str, str]:
  module = kernel_key.removesuffix(".kernel")
  return f"{module}.lora_a", f"{module}.lora_b"


def merged_view(config: ModelConfig, specs: Mapping[str, jax.ShapeDtypeStruct], read: Read
                ) -> tuple[ModelConfig, dict[str, jax.ShapeDtypeStruct], Read]:
  """(config, specs, read) of the same model without LoRA: kernels read with their adapters'
  product added, adapter params gone."""
  spec = config.lora
  factor = scale(spec.alpha, spec.rank, spec.rslora)
  base_specs = {k: v for k, v in specs.items() if k.rsplit(".", 1)[-1] not in ADAPTER_NAMES}

  def read_merged(keys: Sequence[str]) -> dict[str, Any]:
    adapted = [k for k in keys if _adapter_keys(k)[0] in specs]
    arrays = dict(read([*keys, *(a for k in adapted for a in _adapter_keys(k))]))
    for key in adapted:
      a, b = (arrays.pop(name) for name in _adapter_keys(key))
      kernel = np.asarray(arrays[key])
      arrays[key] = (kernel.astype(np.float32) + adapter_delta(a, b, kernel.shape, factor)
                     ).astype(kernel.dtype)
    return arrays
  return without_lora(config), base_specs, read_merged


def export_peft(config: ModelConfig, specs: Mapping[str, jax.ShapeDtypeStruct], read: Read,
                out_dir: str | os.PathLike, *, base_model: str | None = None) -> None:
  """Writes the LoRA adapters of a model's params as a PEFT adapter directory `out_dir` (new or
  empty); `base_model` goes into `base_model_name_or_path`. Nothing appears unless it all
  succeeds."""
  spec = config.lora
  if not spec.enabled:
    raise UserError("this run has no LoRA adapters (model.lora.rank=0): export it with "
                    "`lmjax convert lmjax-to-hf` instead.")
  if config.head is not Head.CAUSAL_LM:
    raise UserError(f"PEFT adapters are exported for causal LMs; this model's head is "
                    f"{config.head.value}. Export merged weights with `lmjax convert lmjax-to-hf`.")
  base = without_lora(config)
  hf_config = model_config_to_hf_config(base)
  key_map = model_type_named(hf_config["model_type"]).key_map
  factor = scale(spec.alpha, spec.rank, spec.rslora)
  tensors, modules, patterns = [], set(), {}
  # The adapters are small (rank r): read them all once, not once per layer of a stacked one.
  arrays = read([k for k in specs if k.rsplit(".", 1)[-1] in ADAPTER_NAMES])
  for binding in bind(key_map, base):
    keys = [key for key, _ in binding.targets]
    adapted = [k for k in keys if _adapter_keys(k)[0] in specs]
    if not adapted or not binding.hf_name.endswith(".weight"):
      continue
    module = binding.hf_name.removesuffix(".weight")
    layer = binding.targets[0][1]
    take = lambda x: np.asarray(x if layer is None else x[layer], np.float32)
    pairs = {k: (take(arrays[_adapter_keys(k)[0]]), take(arrays[_adapter_keys(k)[1]]))
             for k in adapted}
    lora_a, lora_b = _peft_pair(keys, pairs, specs, layer)
    name = f"base_model.model.{key_map.base_prefix}.{module}"
    tensors += [(f"{name}.lora_A.weight", lora_a), (f"{name}.lora_B.weight", lora_b)]
    short = module.rsplit(".", 1)[-1]
    modules.add(short)
    if lora_a.shape[0] != spec.rank:  # a fused module: its rank is the sum of its parts'
      rank = lora_a.shape[0]
      patterns[short] = (rank, factor * (math.sqrt(rank) if spec.rslora else rank))
  adapter_config = {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": spec.rank, "lora_alpha": spec.alpha,
      "lora_dropout": spec.dropout, "target_modules": sorted(modules), "bias": "none",
      "fan_in_fan_out": key_map.conv1d, "use_rslora": spec.rslora,
      "base_model_name_or_path": base_model, "inference_mode": True,
      "rank_pattern": {k: r for k, (r, _) in patterns.items()},
      "alpha_pattern": {k: a for k, (_, a) in patterns.items()},
  }
  entries = [TensorEntry(name=n, shape=t.shape, dtype=np.dtype(np.float32),
                         make=lambda t=t: t) for n, t in tensors]
  with staged_directory(out_dir) as staging:
    (staging / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2) + "\n")
    write_safetensors_file(staging / ADAPTER_WEIGHTS, entries)


def _peft_pair(keys: Sequence[str], pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
               specs: Mapping[str, jax.ShapeDtypeStruct], layer: int | None
               ) -> tuple[np.ndarray, np.ndarray]:
  """(lora_A [rank, fan_in], lora_B [fan_out, rank]) of the HF module the kernels `keys` make:
  one kernel, or several whose outputs HF concatenates (GPT-2's c_attn), each adapted or not."""
  fan_out = [_fan_out(k, specs, stacked=layer is not None) for k in keys]
  a_rows, b_blocks, start = [], [], 0
  for key, out in zip(keys, fan_out):
    if key in pairs:
      a, b = pairs[key]
      rank = a.shape[-1]
      a_rows.append(a.reshape(-1, rank).T)                  # [rank, fan_in]
      block = np.zeros((sum(fan_out), rank), np.float32)
      block[start:start + out] = b.reshape(rank, -1).T      # [fan_out, rank]
      b_blocks.append(block)
    start += out
  return np.concatenate(a_rows, axis=0), np.concatenate(b_blocks, axis=1)


def _fan_out(kernel_key: str, specs: Mapping[str, jax.ShapeDtypeStruct], *, stacked: bool
             ) -> int:
  """The flattened size of a kernel's output dims (per layer). Its input dims are as many as
  its adapter's lora_a has before the rank; an unadapted kernel (a part of GPT-2's fused q/k/v)
  is a block's [embed, heads, head_dim], with one."""
  shape = specs[kernel_key].shape[1:] if stacked else specs[kernel_key].shape
  a_key = _adapter_keys(kernel_key)[0]
  n_in = len(specs[a_key].shape) - 1 - stacked if a_key in specs else 1
  return math.prod(shape[n_in:])
