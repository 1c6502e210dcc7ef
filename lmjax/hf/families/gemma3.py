"""Gemma 3 (`gemma3`, HF model_type `gemma3_text`; transformers' "gemma3" is the multimodal
model): the Gemma graph (gemma.py) with QK-norm, no soft-caps, and a RoPE per layer type (the
local layers' base is model.rope_local_theta)."""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.errors import UserError
from lmjax.hf.config_fields import integer_key, rope_hf_fields
from lmjax.hf.families import decoder, gemma
from lmjax.hf.family import GgufArch, HfFamily, ModelType
from lmjax.model.config import ModelConfig
from lmjax.model.families import Family
from lmjax.model.options import Head, RopeScaling

# The config class's: every sliding_window_pattern-th layer global (6: five local, then one
# global), the global layers' RoPE base `rope_theta` (with `rope_scaling`) and the local layers'
# `rope_local_base_freq`, the keys of transformers v4; v5 nests both in `rope_parameters`.
CLASS_DEFAULTS = {
    **gemma.CLASS_DEFAULTS, "vocab_size": 262208, "max_position_embeddings": 131072,
    "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "rope_scaling": None,
    "rope_parameters": None, "sliding_window_pattern": 6, "final_logit_softcapping": None,
    "attn_logit_softcapping": None, "use_bidirectional_attention": False}


def read(d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  """With layer_types null, every `sliding_window_pattern`-th layer is global (5, 11, … for 6)
  and the others sliding. Its attention ignores attn_logit_softcapping (never soft-caps), so a
  checkpoint that sets one is ambiguous and refused."""
  cap = d["attn_logit_softcapping"]
  if cap is not None:
    raise UserError(f"attn_logit_softcapping={cap!r} is not supported for gemma3_text: "
                    f"transformers' Gemma 3 attention ignores it (it never soft-caps), so what the "
                    f"checkpoint expects is unclear; set it to null to convert what transformers "
                    f"computes.")
  kinds = d["layer_types"]
  if not kinds:
    pattern = integer_key(d, "sliding_window_pattern", 1,
                          "(every pattern-th layer is global), or give layer_types")
    kinds = ["sliding_attention" if (i + 1) % pattern else "full_attention"
             for i in range(d["num_hidden_layers"])]
  return {**gemma.read(d, kinds, "Gemma 3"), **_read_rope(d, kinds)}


def _read_rope(d: Mapping[str, Any], kinds: list[str]) -> dict[str, Any]:
  """RoPE by layer type, read as its config class does: v5's `rope_parameters`
  {"full_attention": …, "sliding_attention": …}, each entry's missing base from v4's
  `rope_theta` (global) and `rope_local_base_freq` (local), and v4's `rope_scaling` laid over
  the global entry. The global layers' RoPE is rope_theta and rope_scaling; the local layers',
  where it differs, rope_local_theta (plain RoPE, the only kind lmjax's local layers have)."""
  nested = d["rope_parameters"] or {}
  if nested and not {"full_attention", "sliding_attention"} & set(nested):
    raise UserError(f"rope_parameters={dict(nested)!r} has no entries by layer type; gemma3_text "
                    f"nests them under 'full_attention' and 'sliding_attention' (as transformers "
                    f"v5 writes them), or give rope_theta and rope_local_base_freq.")
  full = {**(nested.get("full_attention") or {"rope_type": "default"}), **(d["rope_scaling"] or {})}
  full.setdefault("rope_theta", d["rope_theta"] or 1_000_000.0)
  local = dict(nested.get("sliding_attention") or {"rope_type": "default"})
  local.setdefault("rope_theta", d["rope_local_base_freq"] or 10_000.0)
  global_rope = _layer_rope(d, full, "full_attention")
  local_rope = _layer_rope(d, local, "sliding_attention")
  global_type, theta, factor = global_rope
  fields: dict[str, Any] = dict(rope_theta=theta)
  if global_type == "linear":
    fields.update(rope_scaling=RopeScaling.LINEAR, rope_scaling_factor=factor)
  if "sliding_attention" in kinds and local_rope != global_rope:
    if local_rope[0] != "default":
      raise UserError(f"rope_parameters['sliding_attention'] has rope_type {local_rope[0]!r}, "
                      f"unlike the full_attention layers' RoPE: lmjax's local layers rotate as "
                      f"the global ones, or with plain ('default') RoPE of their own base.")
    fields.update(rope_local_theta=local_rope[1])
  return fields


def _layer_rope(d: Mapping[str, Any], rope: Mapping[str, Any], kind: str
                ) -> tuple[str, float, float | None]:
  """(rope_type, base, linear factor or None) of one layer type's RoPE entry."""
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ("default", "linear"):
    raise UserError(f"RoPE type {rope_type!r} of the {kind} layers is not supported for "
                    f"gemma3_text; lmjax converts default, linear.")
  if (rope.get("partial_rotary_factor") or d.get("partial_rotary_factor") or 1.0) != 1.0:
    raise UserError("partial_rotary_factor != 1 is not supported: lmjax rotates every head dim.")
  return rope_type, float(rope["rope_theta"]), (float(rope["factor"]) if rope_type == "linear"
                                                 else None)


def write(config: ModelConfig, act: str) -> dict[str, Any]:
  """Gemma's keys without the attention soft-cap (its attention never applies it), and its RoPE
  by layer type in v5's `rope_parameters`, repeated in v4's `rope_theta`, `rope_scaling` and
  `rope_local_base_freq` where those can say it (local layers of plain RoPE)."""
  if config.rope_scaling is RopeScaling.LLAMA3:
    raise UserError("model.rope_scaling=llama3 cannot be expressed as a Hugging Face gemma3_text "
                    "model as lmjax converts it, which needs rope_scaling 'none' or 'linear'.")
  fields = gemma.write(config, "gemma3_text", act)
  for key in ("rope_parameters", "rope_theta", "rope_scaling"):
    fields.pop(key)
  full = rope_hf_fields(config)["rope_parameters"]
  local = full if config.rope_local_theta is None else {"rope_type": "default",
                                                        "rope_theta": config.rope_local_theta}
  fields.update(rope_parameters={"sliding_attention": dict(local), "full_attention": full})
  if local["rope_type"] == "default":
    fields.update(rope_theta=config.rope_theta, rope_local_base_freq=local["rope_theta"],
                  rope_scaling=None if full["rope_type"] == "default" else dict(full))
  return fields


def read_gguf(keys: Mapping[str, Any], names: frozenset[str]) -> dict[str, Any]:
  """Gemma's keys (gemma.read_gguf; the 27B size has 62 layers). llama.cpp writes neither the
  layer pattern nor the local layers' RoPE base: it fixes them at 6 and 10000, this config
  class's defaults, and applies a RoPE scaling to the global layers only, as rope_scaling
  does here."""
  return gemma.read_gguf(keys, large_size_layers=62)


FAMILY = HfFamily(
    Family("gemma3", {**gemma.DEFAULTS, "qk_norm": True, "attn_logit_softcap": None,
                      "final_logit_softcap": None, "rope_theta": 1_000_000.0}),
    (ModelType("gemma3_text", "gemma3",
               {"Gemma3ForCausalLM": Head.CAUSAL_LM, "Gemma3TextModel": Head.NONE,
                "Gemma3TextForSequenceClassification": Head.CLASSIFICATION},
               CLASS_DEFAULTS, decoder.with_qk_norms(gemma.KEY_MAP), read, write,
               keys=(gemma.KEYS - {"attn_logit_softcap"}) | {"rope_local_theta"},
               gguf=GgufArch("gemma3", read_gguf, gemma.gguf_tensor)),))
