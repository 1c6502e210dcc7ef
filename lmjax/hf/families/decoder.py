"""What the Hugging Face decoders built on the rotary pre-norm graph share (graphs.DECODER):
their tensor names (`model.layers.{i}.self_attn.q_proj`, …), QK-norms and experts, the
config.json keys of their attention, MLP and RoPE, and their two ways of placing a sliding
window (every layer, or by `layer_types` / `max_window_layers`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from lmjax.hf.config_fields import activation_of, layer_type_windows, layer_types, rope_fields
from lmjax.hf.config_fields import require, rope_hf_fields
from lmjax.hf.key_maps import QKV, SCORE, KeyMap, Rule, dense, norm, rule
from lmjax.hf.transforms import BIAS_TO_HEADS, LINEAR_FROM_HEADS, LINEAR_TO_HEADS, TRANSPOSE
from lmjax.model.config import ModelConfig
from lmjax.model.options import Head

KEY_MAP = KeyMap(  # biases where the model has them
    base_prefix="model",
    body=(
        rule("token_embedding", "embed_tokens.weight"),
        *norm("layers.{i}.attention_norm", "layers.{i}.input_layernorm"),
        *(r for lm, hf in zip(QKV, ("q_proj", "k_proj", "v_proj"))
          for r in dense(f"layers.{{i}}.{lm}", f"layers.{{i}}.self_attn.{hf}", LINEAR_TO_HEADS,
                         BIAS_TO_HEADS)),
        *dense("layers.{i}.attention.out", "layers.{i}.self_attn.o_proj", LINEAR_FROM_HEADS),
        *norm("layers.{i}.mlp_norm", "layers.{i}.post_attention_layernorm"),
        *dense("layers.{i}.mlp.wi_gate", "layers.{i}.mlp.gate_proj"),
        *dense("layers.{i}.mlp.wi_up", "layers.{i}.mlp.up_proj"),
        *dense("layers.{i}.mlp.wo", "layers.{i}.mlp.down_proj"),
        *norm("final_norm", "norm"),
    ),
    head=(rule("lm_head.kernel", "lm_head.weight", TRANSPOSE), *SCORE),
    tied_aliases=("lm_head.weight",),
    ignored=(r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
)


def with_qk_norms(key_map: KeyMap) -> KeyMap:
  """`key_map` and each layer's QK-norms (`self_attn.q_norm`, `self_attn.k_norm`)."""
  return dataclasses.replace(key_map, body=(
      *key_map.body,
      *norm("layers.{i}.attention.query_norm", "layers.{i}.self_attn.q_norm"),
      *norm("layers.{i}.attention.key_norm", "layers.{i}.self_attn.k_norm")))


def with_experts(key_map: KeyMap, moe: str, gate: str, up: str, down: str) -> KeyMap:
  """`key_map` with a router and each expert's gated MLP in tensors of its own (`{e}`) for its
  MLP, as every checkpoint on the Hub stores them and as transformers v5 writes them (its fused
  in-memory layout is converted on load and back on save)."""
  expert = f"layers.{{i}}.{moe}.experts.{{e}}"
  experts: tuple[Rule, ...] = (
      rule("layers.{i}.mlp.router", f"layers.{{i}}.{moe}.gate.weight", TRANSPOSE),
      rule("layers.{i}.mlp.experts_gate", f"{expert}.{gate}.weight", TRANSPOSE),
      rule("layers.{i}.mlp.experts_up", f"{expert}.{up}.weight", TRANSPOSE),
      rule("layers.{i}.mlp.experts_down", f"{expert}.{down}.weight", TRANSPOSE))
  body = tuple(r for r in key_map.body if not r.lmjax[0].startswith("layers.{i}.mlp."))
  return dataclasses.replace(key_map, body=(*body, *experts))


def architectures(prefix: str) -> dict[str, Head]:
  """The classes of a decoder whose names start with `prefix` (e.g. "Qwen3")."""
  return {f"{prefix}ForCausalLM": Head.CAUSAL_LM, f"{prefix}Model": Head.NONE,
          f"{prefix}ForSequenceClassification": Head.CLASSIFICATION}


# The `transformers` v5 LlamaConfig defaults of every key read here; the others' build on it.
CLASS_DEFAULTS = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=None, head_dim=None, hidden_act="silu",
    max_position_embeddings=2048, initializer_range=0.02, rms_norm_eps=1e-6,
    tie_word_embeddings=False, rope_theta=10000.0, attention_bias=False, mlp_bias=False)
# The window keys of the decoders that place it by layer: only with use_sliding_window, on the
# layers from max_window_layers on (or as layer_types says).
LAYERED_WINDOW_DEFAULTS = dict(use_sliding_window=False, sliding_window=4096,
                               max_window_layers=28)


def read(d: Mapping[str, Any], *, qkv_bias: bool, use_bias: bool) -> dict[str, Any]:
  """The fields every such decoder's config.json gives, with the biases its model type has."""
  hidden, heads = d["hidden_size"], d["num_attention_heads"]
  head_dim = d["head_dim"]
  return dict(
      vocab_size=d["vocab_size"], num_layers=d["num_hidden_layers"], embed_dim=hidden,
      num_heads=heads, num_kv_heads=d["num_key_value_heads"] or heads,
      head_dim=None if head_dim in (None, hidden // heads) else head_dim,
      mlp_dim=d["intermediate_size"], max_seq_len=d["max_position_embeddings"],
      norm_eps=float(d["rms_norm_eps"]), activation=activation_of(d["hidden_act"], "hidden_act"),
      tie_embeddings=bool(d["tie_word_embeddings"]), qkv_bias=qkv_bias, use_bias=use_bias,
      **rope_fields(d))


def write(config: ModelConfig, model_type: str, act: str) -> dict[str, Any]:
  """The keys every such decoder's config.json has."""
  require(config, model_type, type_vocab_size=0)
  return dict(
      hidden_size=config.embed_dim, intermediate_size=config.mlp_dim,
      num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
      num_key_value_heads=config.kv_heads, head_dim=config.dim_per_head, hidden_act=act,
      max_position_embeddings=config.max_seq_len, rms_norm_eps=config.norm_eps,
      attention_dropout=0.0, bos_token_id=None, eos_token_id=None, **rope_hf_fields(config))


def read_layered_window(d: Mapping[str, Any]) -> dict[str, Any]:
  """The window as transformers reads it for decoders that place it by layer: it counts only
  with `use_sliding_window`, on the layers `layer_types` calls sliding_attention (without
  layer_types: from layer `max_window_layers` on)."""
  window, layers = d.get("sliding_window"), d["num_hidden_layers"]
  window = window if d["use_sliding_window"] else None
  kinds = d.get("layer_types") or [
      "sliding_attention" if window is not None and i >= d["max_window_layers"]
      else "full_attention" for i in range(layers)]
  return layer_type_windows(
      kinds, window, layers,
      f"use_sliding_window={d['use_sliding_window']}, sliding_window="
      f"{d.get('sliding_window')!r}): set use_sliding_window=true and sliding_window")


def write_layered_window(config: ModelConfig) -> dict[str, Any]:
  """Those decoders' window keys: `layer_types` for transformers v5, and `max_window_layers`
  for readers without layer_types where the sliding layers are the last."""
  if config.sliding_window is None:
    return dict(use_sliding_window=False, sliding_window=None)
  windows = config.layer_windows
  first = next(i for i, w in enumerate(windows) if w is not None)
  fields = dict(use_sliding_window=True, sliding_window=config.sliding_window,
                layer_types=layer_types(config))
  if all(w is not None for w in windows[first:]):
    fields.update(max_window_layers=first)
  return fields


def read_every_layer_window(d: Mapping[str, Any]) -> dict[str, Any]:
  """One `sliding_window` for every layer (or none): transformers' Mistral ignores layer_types."""
  return dict(sliding_window=d.get("sliding_window"))


def write_every_layer_window(config: ModelConfig, model_type: str) -> dict[str, Any]:
  """One `sliding_window` for every layer (or none)."""
  if config.sliding_window is not None:
    require(config, model_type, sliding_layers=None)
  return dict(sliding_window=config.sliding_window)
