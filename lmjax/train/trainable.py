"""Which params an update trains: all of them, or (with LoRA) only the adapters.

`split` parts a params tree into the trained and the frozen params, `combine` puts them back.
The step differentiates only the trained part and the optimizer holds state only for it, so a
LoRA run keeps no gradient or Adam moments for the frozen base (lmjax.model.lora).
"""

from __future__ import annotations

from typing import Any

from flax import traverse_util

from lmjax.model import ModelConfig
from lmjax.model.lora import is_adapter


def split(params: Any, config: ModelConfig) -> tuple[Any, Any]:
  """(trained, frozen) params; without LoRA, (params, {}) unchanged."""
  if not config.lora.enabled:
    return params, {}
  flat = traverse_util.flatten_dict(params)
  trained = {k: v for k, v in flat.items() if is_adapter(k)}
  frozen = {k: v for k, v in flat.items() if not is_adapter(k)}
  return traverse_util.unflatten_dict(trained), traverse_util.unflatten_dict(frozen)


def combine(trained: Any, frozen: Any) -> Any:
  """The params tree `split` parted."""
  if not frozen:
    return trained
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(frozen),
                                       **traverse_util.flatten_dict(trained)})


def trained_part(params: Any, config: ModelConfig) -> Any:
  return split(params, config)[0]
