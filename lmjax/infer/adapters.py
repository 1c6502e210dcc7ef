"""Several LoRA adapters over one base model, chosen per request (multi-LoRA serving).

    adapters = read_adapters(loaded, {"sql": "adapters/sql", "poet": "adapters/poet"})
    adapters.model                  # the base with LoRA on every projection any adapter adapts
    adapters.stacked                # {"layers.attention.query.lora_a": [1 + n, L, *in, rank], …}
    adapters.index("poet")          # 2 (0 is the base itself: zero adapters)
    params = with_adapter(base_params, select(adapters.stacked, index))  # index may be traced

Each adapter is a PEFT LoRA directory of the base (what `peft` saves, what `lmjax convert
lmjax-to-peft` writes), read by lmjax.hf.peft_import. Adapters of different ranks, scales and
targets share one model: each is padded with zeros to the largest rank (zero columns of
`lora_a` and rows of `lora_b` add nothing), its scale is folded into its `lora_b` (the shared
model's scale is 1), and a projection it does not adapt gets zero adapters. So one program runs
every adapter, and the engine picks each slot's by gathering its index (lmjax.infer.slots),
as Punica/S-LoRA-style servers do with a batched gather.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lmjax.config import is_run_directory
from lmjax.errors import UserError
from lmjax.hf.peft_import import read_peft
from lmjax.model import Transformer, param_shapes
from lmjax.model.config import LoraConfig
from lmjax.model.lora import ADAPTER_NAMES, layer_module, merge_lora, scale
from lmjax.run.loader import Loaded


@dataclasses.dataclass(frozen=True)
class Adapters:
  """The adapters served beside their base: `names[i]` is adapter i + 1."""

  model: Transformer
  names: tuple[str, ...]
  stacked: dict[str, jax.Array]  # flat "."-joined param keys -> [1 + len(names), …]

  def index(self, name: str) -> int:
    return self.names.index(name) + 1


def base_of(loaded: Loaded) -> tuple[Transformer, Any]:
  """The model and params adapters go on: a LoRA run's own adapters are merged into it."""
  spec = loaded.model.config.lora
  if not spec.enabled:
    return loaded.model, loaded.params
  if loaded.model.config.quantization.enabled:
    raise UserError(f"{loaded.source} is a QLoRA run: its adapters cannot be folded into its "
                    f"quantized base (the sums are not integers). Serve the run alone, or export "
                    f"its adapter (lmjax convert lmjax-to-peft) and serve it with --adapter over "
                    f"its base (--quantize "
                    f"{loaded.model.config.quantization.scheme.value} keeps the base quantized).")
  params = merge_lora(jax.device_get(loaded.params), spec.rank, spec.alpha, spec.rslora)
  config = dataclasses.replace(loaded.model.config, lora=LoraConfig())
  return Transformer(config, loaded.model.dtype), params


def read_adapters(loaded: Loaded, paths: Mapping[str, str | pathlib.Path]) -> Adapters:
  """The PEFT adapter directories `paths` (by name) of `loaded`'s model, on one shared model."""
  base, _ = base_of(loaded)  # a quantized base stays so: the adapters add to its dequantized kernels
  read = {}
  for name, path in paths.items():
    if is_run_directory(path):
      raise UserError(f"adapter {name}: {path} is an lmjax run directory; write its adapters as a "
                      f"PEFT directory with `lmjax convert lmjax-to-peft {path} ADAPTER_DIR` and "
                      f"pass {name}=ADAPTER_DIR.")
    if not pathlib.Path(path).is_dir():
      raise UserError(f"adapter {name}: {path} is not a directory (give a PEFT LoRA adapter "
                      f"directory: adapter_config.json and adapter_model.safetensors).")
    try:
      read[name] = read_peft(path, base.config)
    except UserError as e:
      raise UserError(f"adapter {name}: {e}") from None
  rank = max(spec.rank for spec, _ in read.values())
  modules = sorted({layer_module(tuple(key.split(".")[:-1]))
                    for _, arrays in read.values() for key in arrays})
  spec = LoraConfig(rank=rank, alpha=float(rank), targets=tuple(re.escape(m) for m in modules))
  model = Transformer(dataclasses.replace(base.config, lora=spec), base.dtype)
  shapes = {key: leaf.value.shape if hasattr(leaf, "value") else leaf.shape
            for key, leaf in traverse_util.flatten_dict(
                param_shapes(model.config), sep=".").items()
            if key.rsplit(".", 1)[-1] in ADAPTER_NAMES}
  stacked = {key: np.zeros((1 + len(read), *shape), np.float32) for key, shape in shapes.items()}
  rank_axis_b = 1 if model.config.scan_layers else 0  # lora_b [layers?, rank, *out]
  for i, (adapter, arrays) in enumerate(read.values(), start=1):
    factor = scale(adapter.alpha, adapter.rank, adapter.rslora)
    for key, array in arrays.items():
      ranks = slice(0, adapter.rank)  # the rest stays zero: padding to the shared rank
      if key.endswith(".lora_a"):  # [layers?, *in, rank]
        stacked[key][i][..., ranks] = array
      else:
        stacked[key][i][(slice(None),) * rank_axis_b + (ranks,)] = array * factor
  return Adapters(model, tuple(read), {k: jnp.asarray(v) for k, v in stacked.items()})


def select(stacked: Mapping[str, jax.Array] | None, index: Any) -> dict[str, jax.Array] | None:
  """Adapter `index`'s lora_a/lora_b of the stack (0: the base's zeros); an index [rows] gives
  each row's, [rows, …]. None without adapters."""
  if stacked is None:
    return None
  return {key: jnp.take(value, index, axis=0) for key, value in stacked.items()}


def with_adapter(params: Any, adapter: Mapping[str, jax.Array] | None) -> Any:
  """`params` (the base's nested dict) with an adapter's flat lora_a/lora_b keys (`select`'s)
  added; `params` itself without one."""
  if adapter is None:
    return params
  flat = traverse_util.flatten_dict(params, sep=".")
  flat.update(adapter)
  return traverse_util.unflatten_dict(flat, sep=".")


__all__ = ["Adapters", "base_of", "read_adapters", "select", "with_adapter"]
