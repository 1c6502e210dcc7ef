"""Base weights from a run or Hugging Face directory, and runs loaded together with their base.

`load_source` reads the params of `model.init_from` (an lmjax run directory or an HF model
directory) in a config's layer layout. A LoRA run fine-tuned from such a base saves only its
adapters (lmjax.run.base_ref); `load_run` loads those and the base they refer to, checked by
content hash, so that every reader of a run (generate, eval, predict, export, fine-tuning from
it) sees the whole model.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from lmjax.config import is_run_directory
from lmjax.errors import UserError
from lmjax.hf.engine import from_hf
from lmjax.model import ModelConfig, Transformer
from lmjax.model.lora import merge_lora
from lmjax.model.trainable import frozen_dtype
from lmjax.run.base_ref import BaseRef, check_base
from lmjax.run.load import load_run_at as load_checkpoint_at
from lmjax.run.run_dir import RunDir


def load_run(run_dir: str | pathlib.Path, step: int | None = None, *, mesh: Mesh | None = None,
             rules: Any = None) -> tuple[Transformer, Any]:
  """The run's float32 model and params at `step` (default: the latest complete checkpoint).

  Params are placed on `mesh` (default: all devices, data parallel) by `rules` (a table as
  `mesh.rules` takes, e.g. [["embed", "fsdp"], ["heads", "tensor"]]; default: the run's own
  `mesh.rules`, else the standard one, lmjax.sharding.LOGICAL_AXIS_RULES). With `step=None`,
  a newest checkpoint that cannot be restored (a torn or damaged write) is skipped with a
  warning and the next older one is loaded. A LoRA run whose checkpoints hold only its adapters
  comes with its base, loaded from `model.init_from` once its content hash matches.
  """
  model, params, _ = load_run_at(run_dir, step, mesh=mesh, rules=rules)
  return model, params


def load_run_at(run_dir: str | pathlib.Path, step: int | None = None, *, mesh: Mesh | None = None,
                rules: Any = None) -> tuple[Transformer, Any, int]:
  """`load_run`, also returning the step it loaded."""
  config = RunDir(run_dir).require_config()
  return load_checkpoint_at(run_dir, step, mesh=mesh, rules=rules, base=lambda ref, abstract:
                            frozen_params(ref, config.init_from, config.model, abstract))


def load_source(source: str | pathlib.Path, config: ModelConfig, step: int | None = None
                ) -> tuple[Any, int | None]:
  """(params, the checkpoint step read) of run or HF directory `source` in `config`'s layer
  layout (host or device arrays; the step is None for an HF directory). A run's own LoRA
  adapters, if they are not `config`'s, are merged into its weights."""
  if is_run_directory(source):
    model, params, step = load_run_at(source, step)
    spec = model.config.lora
    if spec.enabled and spec != config.lora:  # another adapter: fold it into the base weights
      params = merge_lora(jax.device_get(params), spec.rank, spec.alpha, spec.rslora)
  else:
    _, params = from_hf(source, scan_layers=config.scan_layers)
  return to_layer_layout(params, scanned=config.scan_layers, num_layers=config.num_layers), step


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


def frozen_params(ref: BaseRef, configured: str | None, config: ModelConfig, abstract: Any) -> Any:
  """The frozen params `abstract` (ShapeDtypeStructs, sharded or not) names, read from the base
  `ref` refers to (at `configured`, the run's `model.init_from`, else where it was), checked
  to be the one trained on, as training held them (rounded to `model.lora.base_dtype`)."""
  source = check_base(ref, configured)
  loaded = traverse_util.flatten_dict(load_source(source, config, ref.step)[0], sep="/")
  stored = frozen_dtype(config)
  placed = {}
  for path, spec in traverse_util.flatten_dict(abstract, sep="/").items():
    value = loaded.get(path)
    if value is None or tuple(value.shape) != tuple(spec.shape):
      raise UserError(f"the base model {source} has no param {path} of shape "
                      f"{list(spec.shape)}, which this run's model needs.")
    array = np.asarray(value).astype(stored).astype(spec.dtype)
    sharding = getattr(spec, "sharding", None)
    placed[path] = jax.device_put(array, sharding) if sharding is not None else array
  return traverse_util.unflatten_dict(placed, sep="/")
