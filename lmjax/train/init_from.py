"""Initial weights for fine-tuning: `model.init_from` = a run directory or a Hugging Face dir.

Parameters are matched by path: those the source has with the same shape are loaded, those it
lacks (e.g. a new classification head) keep their fresh initialisation, and those only the
source has (e.g. an MLM head when fine-tuning a classifier) are left out. Scanned and unrolled
layer layouts are converted as needed.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from lmjax.config import is_run_directory
from lmjax.convert import from_hf
from lmjax.model import ModelConfig
from lmjax.model.lora import is_adapter, merge_lora
from lmjax.run.load import load_run
from lmjax.train.trainable import trained_part


def load_source_params(source: str | pathlib.Path, config: ModelConfig) -> Any:
  """The params of run or HF directory `source`, in `config`'s layer layout (host or device
  arrays)."""
  if is_run_directory(source):
    model, params = load_run(source)
    spec = model.config.lora
    if spec.enabled and spec != config.lora:  # another adapter: fold it into the base weights
      params = merge_lora(jax.device_get(params), spec.rank, spec.alpha, spec.rslora)
  else:
    _, params = from_hf(source, scan_layers=config.scan_layers)
  return to_layer_layout(params, scanned=config.scan_layers, num_layers=config.num_layers)


def to_layer_layout(params: dict, *, scanned: bool, num_layers: int) -> dict:
  """Stacks `layers_i` into `layers` (scanned) or splits `layers` into `layers_i`."""
  params = dict(params)
  if scanned and "layers_0" in params:
    per_layer = [params.pop(f"layers_{i}") for i in range(num_layers)]
    params["layers"] = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *per_layer)
  elif not scanned and "layers" in params:
    stacked = params.pop("layers")
    for i in range(num_layers):
      params[f"layers_{i}"] = jax.tree.map(lambda x: x[i], stacked)
  return params


def merge_params(fresh: Any, loaded: Any) -> tuple[Any, list[str], list[str]]:
  """(`fresh` with every same-path, same-shape leaf of `loaded` copied in onto its sharding,
  paths kept fresh, paths of `loaded` left out)."""
  fresh_flat = traverse_util.flatten_dict(fresh, sep="/")
  loaded_flat = traverse_util.flatten_dict(loaded, sep="/")
  merged, kept_fresh = {}, []
  for path, value in fresh_flat.items():
    source = loaded_flat.get(path)
    if source is not None and tuple(source.shape) == tuple(value.shape):
      merged[path] = jax.device_put(np.asarray(source, dtype=value.dtype), value.sharding)
    else:
      merged[path] = value
      kept_fresh.append(path)
  unused = sorted(set(loaded_flat) - set(fresh_flat))
  return traverse_util.unflatten_dict(merged, sep="/"), kept_fresh, unused


def start_from_source(state, tx, opt_state_shardings, source: str, config: ModelConfig):
  """`state` (freshly initialised, sharded) with the weights of `source` (a run or an HF
  directory) and a new optimizer state; also returns a one-line report of what was loaded."""
  params, kept_fresh, unused = merge_params(state.params, load_source_params(source, config))
  opt_state = jax.jit(tx.init, out_shardings=opt_state_shardings)(trained_part(params, config))
  report = f"initialised from {source}"
  adapters = [p for p in kept_fresh if is_adapter(p.split("/"))]
  kept_fresh = [p for p in kept_fresh if p not in adapters]
  if adapters:
    report += (f"; {len(adapters) // 2} new LoRA adapter(s) of rank {config.lora.rank} on "
               f"{', '.join(sorted({p.rsplit('/', 1)[0] for p in adapters}))}")
  if kept_fresh:
    report += f"; new (randomly initialised): {', '.join(kept_fresh)}"
  if unused:
    report += f"; not used: {', '.join(unused)}"
  return state.replace(params=params, opt_state=opt_state), report
