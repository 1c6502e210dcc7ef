"""Gemma 2 and Gemma 3 (gemma2, gemma3_text) config.json keys -> ModelConfig fields: Llama's
graph with (1 + w) sandwich norms, scaled embeddings, GeGLU, soft-caps, sliding layers by type,
and (Gemma 3) QK-norm with a RoPE per layer type."""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.errors import UserError
from lmjax.hf.config_fields import (activation_of, integer_key, layer_type_windows, refuse,
                                    rope_fields)
from lmjax.model.config import Head, RopeScaling


def gemma2_fields(model_type: str, d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  """Fields of gemma2: Llama's graph with the family's (1 + w) sandwich norms, scaled
  embeddings and GeGLU, plus the keys below; with layer_types null, Gemma2Config makes the
  even layers (0, 2, …) sliding."""
  kinds = d["layer_types"] or ["sliding_attention" if i % 2 == 0 else "full_attention"
                               for i in range(d["num_hidden_layers"])]
  return {**_gemma_fields(model_type, d, kinds), **rope_fields(d)}


def gemma3_fields(model_type: str, d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  """Fields of gemma3_text: Gemma 2's graph with the family's QK-norms and a RoPE per layer
  type; with layer_types null, Gemma3TextConfig makes every `sliding_window_pattern`-th layer
  global (5, 11, … for 6) and the others sliding. Its attention ignores attn_logit_softcapping
  (never soft-caps), so a checkpoint that sets one is ambiguous and refused."""
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
  return {**_gemma_fields(model_type, d, kinds), **_gemma3_rope_fields(d, kinds)}


def _gemma_fields(model_type: str, d: Mapping[str, Any], kinds: list[str]) -> dict[str, Any]:
  """What gemma2 and gemma3_text share: the keys below, and the windows of `kinds`, the
  layers' types."""
  name = "Gemma 2" if model_type == "gemma2" else "Gemma 3"
  refuse(d, "attention_bias", True, f"{name}'s attention_bias biases q/k/v and o_proj but not "
          "the MLP, and lmjax has one switch for o_proj and the MLP")
  refuse(d, "use_bidirectional_attention", True, f"{name} converts as a causal decoder")
  hidden, heads, layers = d["hidden_size"], d["num_attention_heads"], d["num_hidden_layers"]
  head_dim = d["head_dim"] or hidden // heads
  scalar = d["query_pre_attn_scalar"]
  cap = lambda key: None if d[key] is None else float(d[key])
  return dict(
      vocab_size=d["vocab_size"], num_layers=layers, embed_dim=hidden, num_heads=heads,
      num_kv_heads=d["num_key_value_heads"] or heads,
      head_dim=None if head_dim == hidden // heads else head_dim,
      mlp_dim=d["intermediate_size"], max_seq_len=d["max_position_embeddings"],
      norm_eps=float(d["rms_norm_eps"]),
      activation=activation_of(d["hidden_activation"], "hidden_activation"),
      tie_embeddings=bool(d["tie_word_embeddings"]),
      query_pre_attn_scalar=None if scalar == head_dim else float(scalar),
      attn_logit_softcap=cap("attn_logit_softcapping"),
      final_logit_softcap=cap("final_logit_softcapping"),
      **layer_type_windows(kinds, d["sliding_window"], layers,
                            "sliding_window=None): set sliding_window"))


def _gemma3_rope_fields(d: Mapping[str, Any], kinds: list[str]) -> dict[str, Any]:
  """Gemma 3's RoPE by layer type, read as Gemma3TextConfig does: v5's `rope_parameters`
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
  """(rope_type, base, linear factor or None) of one layer type's Gemma 3 RoPE entry."""
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ("default", "linear"):
    raise UserError(f"RoPE type {rope_type!r} of the {kind} layers is not supported for "
                    f"gemma3_text; lmjax converts default, linear.")
  if (rope.get("partial_rotary_factor") or d.get("partial_rotary_factor") or 1.0) != 1.0:
    raise UserError("partial_rotary_factor != 1 is not supported: lmjax rotates every head dim.")
  return rope_type, float(rope["rope_theta"]), (float(rope["factor"]) if rope_type == "linear"
                                                 else None)
