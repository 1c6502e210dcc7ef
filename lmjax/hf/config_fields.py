"""Readers of config.json keys that several Hugging Face families share: activations, refused
values, RoPE (`rope_parameters` / `rope_theta` + `rope_scaling`) and sliding windows
(`sliding_window`, `layer_types`). Plain dicts in, ModelConfig fields out; UserError names the
key, the value and what is supported."""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.errors import UserError
from lmjax.hf.tables import ACTIVATIONS
from lmjax.model.config import Activation, RopeScaling


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


def sliding_fields(model_type: str, d: Mapping[str, Any]) -> dict[str, Any]:
  """The sliding window and the layers it applies to, as transformers reads them: Mistral's
  `sliding_window` covers every layer; Qwen2's and Qwen3's only counts with
  `use_sliding_window`, on the layers `layer_types` calls sliding_attention (without
  layer_types: from layer `max_window_layers` on)."""
  window, layers = d.get("sliding_window"), d["num_hidden_layers"]
  if model_type == "llama":
    return {}
  if model_type == "mistral":  # transformers' Mistral ignores layer_types (Ministral has them)
    return dict(sliding_window=window)
  window = window if d["use_sliding_window"] else None
  kinds = d.get("layer_types") or [
      "sliding_attention" if window is not None and i >= d["max_window_layers"]
      else "full_attention" for i in range(layers)]
  return layer_type_windows(
      kinds, window, layers,
      f"use_sliding_window={d['use_sliding_window']}, sliding_window="
      f"{d.get('sliding_window')!r}): set use_sliding_window=true and sliding_window")


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
