"""A `peft` LoRA adapter directory read into lmjax adapters: the inverse of `export_peft`.

`read_peft(adapter_dir, config)` gives the `LoraConfig` and the `lora_a`/`lora_b` params (flat
keys, layers stacked when `config.scan_layers`) of the base model `config` describes:

    lora_a [*in, rank] = lora_A.T,   lora_b [rank, *out] = lora_B.T

A fused HF module (GPT-2's `c_attn`) gives each of lmjax's q/k/v the shared A and its rows of
B; the block-diagonal form `export_peft` writes (rank 3r) is read back at rank r. lmjax has one
rank and one alpha for all adapters: an adapter whose modules differ in scale is refused.
"""

from __future__ import annotations

import collections
import json
import math
import pathlib
import re
from typing import Any

import numpy as np

from lmjax.errors import UserError
from lmjax.hf.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, without_lora
from lmjax.hf.bindings import abstract_params, bind
from lmjax.hf.config import model_config_to_hf_config
from lmjax.hf.family import model_type_named
from lmjax.hf.safetensors_files import check_weight
from lmjax.model import ModelConfig
from lmjax.model.config import LoraConfig
from lmjax.model.lora import layer_module, scale
from lmjax.storage import as_path, is_remote


def read_peft(adapter_dir: str | pathlib.Path, config: ModelConfig
              ) -> tuple[LoraConfig, dict[str, np.ndarray]]:
  """(LoraConfig, {flat lmjax key: array}) of the PEFT LoRA adapter in `adapter_dir` for the
  base model `config`; UserError for anything lmjax cannot represent exactly."""
  adapter_dir = as_path(adapter_dir)  # local, or on a bucket (gs://, s3://)
  settings = _settings(adapter_dir)
  tensors = _tensors(adapter_dir)
  base = without_lora(config)
  hf_config = model_config_to_hf_config(base)
  key_map = model_type_named(hf_config["model_type"]).key_map
  specs = abstract_params(base)
  rank, alpha, rslora = settings["r"], float(settings["lora_alpha"]), settings["use_rslora"]
  factor = scale(alpha, rank, rslora)
  per_layer: dict[str, dict[int | None, tuple[np.ndarray, np.ndarray]]] = {}
  used = set()
  for binding in bind(key_map, base):
    if not binding.hf_name.endswith(".weight"):
      continue
    name = f"base_model.model.{key_map.base_prefix}.{binding.hf_name.removesuffix('.weight')}"
    pair = _pair(tensors, name)
    if pair is None:
      continue
    used.update(pair[2])
    lora_a, lora_b = pair[0], pair[1]
    keys = [key for key, _ in binding.targets]
    shapes = [tuple(specs[k].shape[1:] if layer is not None else specs[k].shape)
              for k, layer in binding.targets]
    module_factor = _module_factor(settings, binding.hf_name, lora_a.shape[0])
    parts = _split(lora_a, lora_b, keys, shapes, rank, module_factor, factor, name)
    for key, (a, b), layer in zip(keys, parts, (layer for _, layer in binding.targets)):
      per_layer.setdefault(key, {})[layer] = (a, b)
  unknown = sorted(set(tensors) - used)
  if unknown:
    raise UserError(f"{adapter_dir}: adapter tensor {unknown[0]} is on a module lmjax does not "
                    f"adapt (only the blocks' projections take LoRA) or does not exist in this "
                    f"base model ({len(unknown)} such tensors).")
  if not per_layer:
    raise UserError(f"{adapter_dir} holds no LoRA tensors for this base model's projections.")
  arrays, layers_of = {}, collections.Counter()
  for key, layers in per_layer.items():
    module_key = key.removesuffix(".kernel")
    if None in layers:  # unrolled layers: one key per layer
      (a, b), = layers.values()
    else:  # stacked: every layer's slice
      a, b = (np.stack([layers[i][n] for i in sorted(layers)]) for n in (0, 1))
    arrays[f"{module_key}.lora_a"], arrays[f"{module_key}.lora_b"] = a, b
    module = layer_module(tuple(module_key.split(".")))
    layers_of[module] += 1 if None in layers else len(layers)
  partial = [m for m, n in layers_of.items() if n != config.num_layers]
  if partial:
    raise UserError(f"{adapter_dir} adapts {partial[0]} in {layers_of[partial[0]]} of the "
                    f"{config.num_layers} layers; lmjax adapts a projection in every layer.")
  targets = tuple(sorted(layers_of))
  lora = LoraConfig(rank=rank, alpha=alpha, dropout=float(settings.get("lora_dropout") or 0.0),
                    targets=tuple(re.escape(t) for t in targets), rslora=rslora)
  return lora, arrays


def _settings(adapter_dir: pathlib.Path) -> dict[str, Any]:
  path = adapter_dir / ADAPTER_CONFIG
  if not path.is_file():
    raise UserError(f"{adapter_dir} is not a PEFT adapter directory: it has no {ADAPTER_CONFIG}.")
  try:
    settings = json.loads(path.read_text(encoding="utf-8"))
  except ValueError as e:
    raise UserError(f"{path} is not valid JSON ({e}).") from None
  if settings.get("peft_type") != "LORA":
    raise UserError(f"{path}: peft_type is {settings.get('peft_type')!r}; lmjax reads LoRA "
                    f"adapters only.")
  if settings.get("bias", "none") != "none":
    raise UserError(f"{path}: bias={settings['bias']!r} trains biases too; lmjax reads adapters "
                    f"with bias 'none'.")
  for unsupported in ("use_dora", "lora_bias"):
    if settings.get(unsupported):
      raise UserError(f"{path}: {unsupported} is set; lmjax reads plain LoRA only.")
  if not isinstance(settings.get("r"), int) or settings["r"] < 1:
    raise UserError(f"{path}: r={settings.get('r')!r} must be a positive integer.")
  settings.setdefault("lora_alpha", settings["r"])
  settings["use_rslora"] = bool(settings.get("use_rslora"))
  return settings


def _tensors(adapter_dir: pathlib.Path) -> dict[str, np.ndarray]:
  path = adapter_dir / ADAPTER_WEIGHTS
  if not path.is_file():
    raise UserError(f"{adapter_dir} has no {ADAPTER_WEIGHTS} (pickled adapter_model.bin files "
                    f"are not read).")
  from safetensors.numpy import load, load_file  # the format's own readers
  try:
    # An adapter is small (rank r): one from a bucket is read whole, without a local copy.
    tensors = load(path.read_bytes()) if is_remote(path) else load_file(path)
  except Exception as e:  # noqa: BLE001 -- a damaged file, said in one line
    raise UserError(f"{path} cannot be read as safetensors ({type(e).__name__}: {e}).") from None
  return {k.replace(".default.", "."): check_weight(v, k, path).astype(np.float32)
          for k, v in tensors.items()}


def _pair(tensors, name):
  a, b = f"{name}.lora_A.weight", f"{name}.lora_B.weight"
  if a not in tensors and b not in tensors:
    return None
  if a not in tensors or b not in tensors:
    raise UserError(f"adapter tensors of {name} are incomplete: it needs lora_A and lora_B.")
  return tensors[a], tensors[b], (a, b)


def _module_factor(settings, hf_name: str, module_rank: int) -> float:
  """The scale peft applies to this module (its rank_pattern / alpha_pattern entries)."""
  short = hf_name.removesuffix(".weight").rsplit(".", 1)[-1]
  pick = lambda patterns, default: next(
      (v for k, v in (patterns or {}).items()
       if re.fullmatch(rf"(.*\.)?{k}", hf_name.removesuffix(".weight")) or k == short), default)
  alpha = float(pick(settings.get("alpha_pattern"), settings["lora_alpha"]))
  rank = int(pick(settings.get("rank_pattern"), settings["r"]))
  if rank != module_rank:
    raise UserError(f"{hf_name}: lora_A has rank {module_rank}, the adapter config says {rank}.")
  return scale(alpha, rank, settings["use_rslora"])


def _split(lora_a: np.ndarray, lora_b: np.ndarray, keys: list[str],
           shapes: list[tuple[int, ...]], rank: int, module_factor: float, factor: float,
           name: str) -> list[tuple[np.ndarray, np.ndarray]]:
  """Each lmjax kernel's (lora_a, lora_b) from one HF module's lora_A [rm, in], lora_B
  [out, rm]: one kernel, or several whose outputs HF concatenates (sharing A at rank r, or
  block-diagonal at rank n x r as `export_peft` writes them)."""
  n_in = [_in_dims(key) for key in keys]
  outs = [math.prod(shape[n:]) for shape, n in zip(shapes, n_in)]
  starts = np.cumsum([0, *outs])
  rows = [slice(starts[i], starts[i + 1]) for i in range(len(keys))]
  module_rank = lora_a.shape[0]
  fan_in = math.prod(shapes[0][:n_in[0]])
  if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_a.shape[1] != fan_in \
      or lora_b.shape != (starts[-1], module_rank):
    raise UserError(f"{name}: lora_A {list(lora_a.shape)} and lora_B {list(lora_b.shape)} do not "
                    f"fit this base model's projection ({fan_in} -> {starts[-1]}, so "
                    f"[rank, {fan_in}] and [{starts[-1]}, rank]): was the adapter trained on "
                    f"another base model?")
  if not math.isclose(module_factor, factor, rel_tol=1e-6):
    raise UserError(f"{name}: its scale {module_factor:g} differs from the adapter's {factor:g}; "
                    f"lmjax uses one scale for all adapters.")
  if module_rank == rank:
    blocks = [(lora_a, lora_b[r]) for r in rows]
  elif module_rank == len(keys) * rank and all(
      not np.any(np.delete(lora_b[r], np.s_[i * rank:(i + 1) * rank], axis=1))
      for i, r in enumerate(rows)):
    blocks = [(lora_a[i * rank:(i + 1) * rank], lora_b[r, i * rank:(i + 1) * rank])
              for i, r in enumerate(rows)]
  else:
    raise UserError(f"{name}: rank {module_rank} differs from the adapter's rank {rank}; lmjax "
                    f"uses one rank for all adapters.")
  return [(a.T.reshape(*shape[:n], rank), b.T.reshape(rank, *shape[n:]))
          for (a, b), shape, n in zip(blocks, shapes, n_in)]


def _in_dims(kernel_key: str) -> int:
  """A block kernel's input dims: the attention output's are (heads, head_dim), others one."""
  return 2 if kernel_key.endswith("attention.out.kernel") else 1
