"""config.json keys that several Hugging Face families share, both ways: activations, refused
values, biases, RoPE (`rope_parameters` / `rope_theta` + `rope_scaling`) and `layer_types`
windows. Readers take plain dicts and give ModelConfig fields, writers the reverse; UserError
names the key, the value and what is supported (or the model field and the value it needs)."""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.errors import UserError
from lmjax.hf.tables import ACTIVATIONS
from lmjax.model.config import Activation, ModelConfig, RopeScaling


def supported(names) -> str:
  return ", ".join(sorted(names))


def activation_of(name: str, key: str) -> Activation:
  if name not in ACTIVATIONS:
    raise UserError(f"{key}={name!r} has no exact lmjax equivalent; supported: "
                    f"{supported(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def refuse(d: Mapping[str, Any], key: str, bad: Any, why: str) -> None:
  if d.get(key) == bad:
    raise UserError(f"{key}={bad!r} is not supported by lmjax ({why}); convert a model with "
                    f"{key}={not bad!r}.")


def integer_key(d: Mapping[str, Any], key: str, low: int, why: str) -> int:
  """d[key], checked to be an integer of at least `low` (0 or 1); `why` ends the message."""
  value = d[key]
  if not isinstance(value, int) or isinstance(value, bool) or value < low:
    kind = "positive" if low == 1 else "non-negative"
    raise UserError(f"{key}={value!r} must be a {kind} integer {why}.")
  return value


def layer_type_windows(kinds: list[str], window: int | None, layers: int, missing: str
                        ) -> dict[str, Any]:
  """sliding_window and sliding_layers from transformers' `layer_types`; `missing`: the keys
  that leave `window` unset, and how to set it."""
  unknown = sorted(set(kinds) - {"full_attention", "sliding_attention"})
  if unknown:
    raise UserError(f"layer_types names {', '.join(map(repr, unknown))}, which lmjax does not "
                    f"convert: its layers are 'full_attention' or 'sliding_attention'.")
  if len(kinds) != layers:
    raise UserError(f"layer_types has {len(kinds)} entries for num_hidden_layers={layers}.")
  sliding = tuple(i for i, kind in enumerate(kinds) if kind == "sliding_attention")
  if sliding and window is None:
    raise UserError(f"layer_types has 'sliding_attention' layers ({', '.join(map(str, sliding))}) "
                    f"without a window ({missing}, or call those layers 'full_attention'.")
  if not sliding:
    return {}
  return dict(sliding_window=window, sliding_layers=None if len(sliding) == layers else sliding)


_ROPE_TYPES = ("default", "llama3", "linear")


def rope_fields(d: Mapping[str, Any]) -> dict[str, Any]:
  """RoPE fields from v5 `rope_parameters` or the older `rope_theta` + `rope_scaling`.

  Where both are given, `rope_scaling` wins, as in transformers v5.
  """
  rope = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  theta = float(rope.get("rope_theta") or d["rope_theta"] or 10000.0)
  if rope_type not in _ROPE_TYPES:
    raise UserError(f"RoPE type {rope_type!r} is not supported; lmjax converts "
                    f"{', '.join(_ROPE_TYPES)}.")
  if (rope.get("partial_rotary_factor") or d.get("partial_rotary_factor") or 1.0) != 1.0:
    raise UserError("partial_rotary_factor != 1 is not supported: lmjax rotates every head dim.")
  if rope_type == "default":
    return dict(rope_theta=theta)
  if rope_type == "linear":
    return dict(rope_theta=theta, rope_scaling=RopeScaling.LINEAR,
                rope_scaling_factor=float(rope["factor"]))
  return dict(rope_theta=theta, rope_scaling=RopeScaling.LLAMA3,
              rope_scaling_factor=float(rope["factor"]),
              rope_low_freq_factor=float(rope["low_freq_factor"]),
              rope_high_freq_factor=float(rope["high_freq_factor"]),
              rope_original_max_len=int(rope.get("original_max_position_embeddings")
                                        or d["max_position_embeddings"]))


def one_bias_switch(d: Mapping[str, Any]) -> bool:
  """attention_bias and mlp_bias, which lmjax's one switch for the output projection's and the
  MLP's biases must see equal."""
  if d["attention_bias"] != d["mlp_bias"]:
    raise UserError(f"attention_bias={d['attention_bias']} with mlp_bias={d['mlp_bias']} is not "
                    f"supported: lmjax has one switch for the output-projection and MLP biases; "
                    f"convert a model where both are equal.")
  return bool(d["attention_bias"])


def require(config: ModelConfig, model_type: str, **expected) -> None:
  """UserError unless each named field of `config` has the expected value."""
  plain = lambda value: getattr(value, "value", value)  # enums as their config spelling
  for name, value in expected.items():
    if getattr(config, name) != value:
      raise UserError(f"model.{name}={plain(getattr(config, name))!r} cannot be expressed as a "
                      f"Hugging Face {model_type} model, which needs {name}={plain(value)!r}.")


def require_plain_heads(config: ModelConfig, model_type: str) -> None:
  """As many key/value heads as query heads, each embed_dim / num_heads wide."""
  if (config.kv_heads != config.num_heads
      or config.dim_per_head * config.num_heads != config.embed_dim):
    raise UserError(f"model.num_kv_heads={config.num_kv_heads} / model.head_dim={config.head_dim}: "
                    f"a Hugging Face {model_type} model has as many key/value heads as query heads "
                    f"and head_dim = embed_dim / num_heads; set both to null.")


def rope_hf_fields(config: ModelConfig) -> dict[str, Any]:
  """v5 `rope_parameters`, and the same RoPE in the keys of transformers v4 (and of tools that
  read them)."""
  rope: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_theta}
  if config.rope_scaling is RopeScaling.LLAMA3:
    rope = {"rope_type": "llama3", "rope_theta": config.rope_theta,
            "factor": config.rope_scaling_factor,
            "low_freq_factor": config.rope_low_freq_factor,
            "high_freq_factor": config.rope_high_freq_factor,
            "original_max_position_embeddings": config.rope_original_max_len}
  elif config.rope_scaling is RopeScaling.LINEAR:
    rope = {"rope_type": "linear", "rope_theta": config.rope_theta,
            "factor": config.rope_scaling_factor}
  return dict(rope_parameters=rope, rope_theta=config.rope_theta,
              rope_scaling=None if rope["rope_type"] == "default" else dict(rope))


def layer_types(config: ModelConfig) -> list[str]:
  """transformers' `layer_types` of `config`'s layers."""
  return ["full_attention" if w is None else "sliding_attention" for w in config.layer_windows]
