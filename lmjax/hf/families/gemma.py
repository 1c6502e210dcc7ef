"""What Gemma 2 and Gemma 3 share: the rotary decoder (graphs.DECODER) with (1 + w) RMSNorms
also after attention and the MLP (sandwich norms), scaled embeddings, GeGLU, soft-capped logits
and sliding layers by type; its tensor names, its config class's defaults and its keys both
ways, and what their GGUF files (lmjax/hf/gguf/) store differently."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from lmjax.hf.config_fields import activation_of, layer_type_windows, layer_types, refuse
from lmjax.hf.config_fields import require, rope_hf_fields
from lmjax.hf.families import decoder
from lmjax.hf.families.graphs import DECODER
from lmjax.hf.key_maps import norm
from lmjax.errors import UserError
from lmjax.model.config import ModelConfig
from lmjax.model.options import Activation, Norm

# transformers' soft-caps are its Gemma 2 config's defaults, which every released size uses.
DEFAULTS = {
    **DECODER, "norm": Norm.RMS_NORM_PLUS_ONE, "norm_eps": 1e-6,
    "activation": Activation.GELU_TANH, "tie_embeddings": True, "post_norms": True,
    "embed_scale": True, "attn_logit_softcap": 50.0, "final_logit_softcap": 30.0}

KEY_MAP = dataclasses.replace(decoder.KEY_MAP, body=(  # four norms in each layer
    *(r for r in decoder.KEY_MAP.body if not r.lmjax[0].startswith("layers.{i}.mlp_norm.")),
    *norm("layers.{i}.attention_post_norm", "layers.{i}.post_attention_layernorm"),
    *norm("layers.{i}.mlp_norm", "layers.{i}.pre_feedforward_layernorm"),
    *norm("layers.{i}.mlp_post_norm", "layers.{i}.post_feedforward_layernorm"),
))

# The config class's: every layer type alternates from sliding_attention when layer_types is
# null.
CLASS_DEFAULTS = dict(
    vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
    num_attention_heads=8, num_key_value_heads=4, head_dim=256,
    hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192, initializer_range=0.02,
    rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=10000.0, attention_bias=False,
    query_pre_attn_scalar=256, sliding_window=4096, layer_types=None,
    final_logit_softcapping=30.0, attn_logit_softcapping=50.0, use_bidirectional_attention=None)
# The switches whose config.json keys these model types have.
KEYS = frozenset({"query_pre_attn_scalar", "attn_logit_softcap", "final_logit_softcap",
                  "sliding_window"})


def read(d: Mapping[str, Any], kinds: list[str], name: str) -> dict[str, Any]:
  """The shared keys, and the windows of `kinds`, the layers' types; `name` for messages."""
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


def write(config: ModelConfig, model_type: str, act: str) -> dict[str, Any]:
  """The shared keys. Its code always builds the sliding layers' mask, so a model without a
  window exports every layer as full_attention beside a placeholder window (the context)."""
  require(config, model_type, type_vocab_size=0, qkv_bias=False, use_bias=False)
  if config.embed_dim % config.num_heads:
    raise UserError(f"model.embed_dim={config.embed_dim} cannot be expressed as a Hugging Face "
                    f"{model_type} model, which needs a multiple of model.num_heads="
                    f"{config.num_heads} (whatever model.head_dim).")
  scalar = config.query_pre_attn_scalar or config.dim_per_head
  return dict(
      hidden_size=config.embed_dim, intermediate_size=config.mlp_dim,
      num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
      num_key_value_heads=config.kv_heads, head_dim=config.dim_per_head,
      hidden_activation="gelu_pytorch_tanh" if config.activation is Activation.GELU_TANH else act,
      max_position_embeddings=config.max_seq_len, rms_norm_eps=config.norm_eps,
      attention_bias=False, attention_dropout=0.0,
      query_pre_attn_scalar=int(scalar) if float(scalar).is_integer() else scalar,
      attn_logit_softcapping=config.attn_logit_softcap,
      final_logit_softcapping=config.final_logit_softcap,
      sliding_window=config.sliding_window or config.max_seq_len,
      layer_types=layer_types(config), use_bidirectional_attention=False, bos_token_id=None,
      eos_token_id=None, pad_token_id=0, **rope_hf_fields(config))


def read_gguf(keys: Mapping[str, Any], *, large_size_layers: int) -> dict[str, Any]:
  """The config.json keys a Gemma GGUF's metadata implies beyond the common ones: its window,
  and the query scale llama.cpp applies (it stores none): 1/sqrt(head_dim), except for the
  27B size, which it recognises by its layer count (`large_size_layers`), where it is
  1/sqrt(hidden / heads), as that checkpoint's query_pre_attn_scalar says."""
  hidden, heads = keys["embedding_length"], keys["attention.head_count"]
  large = keys["block_count"] == large_size_layers
  fields = dict(query_pre_attn_scalar=hidden // heads if large else
                keys.get("attention.key_length") or hidden // heads)
  if "attention.sliding_window" in keys:
    fields.update(sliding_window=keys["attention.sliding_window"])
  return fields


def gguf_tensor(name: str, values, hf_config: Mapping[str, Any]):
  """llama.cpp stores Gemma's (1 + w) RMSNorm gains as 1 + w: this gives w back, in float32."""
  return values - 1.0 if name.endswith("norm.weight") else values
