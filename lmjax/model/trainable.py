"""Which params an update trains: all of them, or (with LoRA) only the adapters.

`split` parts a params tree into the trained and the frozen params, `combine` puts them back.
A LoRA run trains the adapters and, for a classifier, its head. The step differentiates only
the trained part and the optimizer holds state only for it, so a LoRA run keeps no gradient or
Adam moments for the frozen base (lmjax.model.lora); a LoRA run fine-tuned from a base saves
only the trained part (lmjax.run.base_ref).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from lmjax.model.config import Head, ModelConfig
from lmjax.model.options import ParamDtype
from lmjax.model.lora import is_adapter
from lmjax.model.quantize import is_quantized


def is_trained(path: tuple[str, ...], config: ModelConfig) -> bool:
  """Whether a LoRA run trains the param at `path`: the adapters, and a classifier's new head
  (as peft's `modules_to_save` does for sequence classification)."""
  return is_adapter(path) or (config.head is Head.CLASSIFICATION and path[0] == "classifier")


def split(params: Any, config: ModelConfig) -> tuple[Any, Any]:
  """(trained, frozen) params; without LoRA, (params, {}) unchanged."""
  if not config.lora.enabled:
    return params, {}
  flat = traverse_util.flatten_dict(params)
  trained = {k: v for k, v in flat.items() if is_trained(k, config)}
  frozen = {k: v for k, v in flat.items() if not is_trained(k, config)}
  return traverse_util.unflatten_dict(trained), traverse_util.unflatten_dict(frozen)


def combine(trained: Any, frozen: Any) -> Any:
  """The params tree `split` parted."""
  if not frozen:
    return trained
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(frozen),
                                       **traverse_util.flatten_dict(trained)})


def frozen_dtype(config: ModelConfig) -> Any:
  """The dtype a LoRA run holds its frozen base in (`model.lora.base_dtype`)."""
  return jnp.bfloat16 if config.lora.base_dtype is ParamDtype.BFLOAT16 else jnp.float32


def cast_frozen(params: Any, config: ModelConfig) -> Any:
  """`params` with the frozen base in `model.lora.base_dtype` (bfloat16 halves its memory; it
  never receives an update, so nothing accumulates in low precision). Quantized kernels (QLoRA)
  stay as they are: integers, with float32 scales."""
  if not config.lora.enabled or config.lora.base_dtype is ParamDtype.FLOAT32:
    return params
  trained, frozen = split(params, config)
  cast = lambda x: x if is_quantized(x) else x.astype(frozen_dtype(config))
  return combine(trained, jax.tree.map(cast, frozen, is_leaf=is_quantized))


def trained_part(params: Any, config: ModelConfig) -> Any:
  return split(params, config)[0]
