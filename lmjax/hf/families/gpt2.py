"""GPT-2 (`gpt2`): a pre-norm decoder with learned positions, GELU (tanh), biases everywhere,
fused q/k/v and Conv1D kernels (stored in x out)."""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.hf.config_fields import activation_of, refuse, require, require_plain_heads
from lmjax.hf.families.graphs import ENCODER
from lmjax.hf.family import HfFamily, ModelType
from lmjax.hf.key_maps import QKV, SCORE, KeyMap, dense, norm, rule
from lmjax.hf.transforms import (CONV1D_FROM_HEADS, FUSED_QKV_BIAS, FUSED_QKV_KERNEL, IDENTITY,
                                 TRANSPOSE)
from lmjax.model.config import ModelConfig
from lmjax.model.families import Family
from lmjax.model.options import Activation, Head, NormPosition

# The encoder's layers (learned positions, LayerNorm, biases), pre-norm and causal.
DEFAULTS = {**ENCODER, "norm_eps": 1e-5, "norm_position": NormPosition.PRE,
            "activation": Activation.GELU_TANH, "causal": True, "type_vocab_size": 0,
            "head": Head.CAUSAL_LM, "classifier_bias": False}

KEY_MAP = KeyMap(
    base_prefix="transformer",
    body=(
        rule("token_embedding", "wte.weight"),
        rule("position_embedding", "wpe.weight"),
        *norm("layers.{i}.attention_norm", "h.{i}.ln_1"),
        rule(tuple(f"layers.{{i}}.{p}.kernel" for p in QKV), "h.{i}.attn.c_attn.weight",
             FUSED_QKV_KERNEL),
        rule(tuple(f"layers.{{i}}.{p}.bias" for p in QKV), "h.{i}.attn.c_attn.bias",
             FUSED_QKV_BIAS),
        *dense("layers.{i}.attention.out", "h.{i}.attn.c_proj", CONV1D_FROM_HEADS),
        *norm("layers.{i}.mlp_norm", "h.{i}.ln_2"),
        *dense("layers.{i}.mlp.wi", "h.{i}.mlp.c_fc", IDENTITY),   # Conv1D: already in x out
        *dense("layers.{i}.mlp.wo", "h.{i}.mlp.c_proj", IDENTITY),
        *norm("final_norm", "ln_f"),
    ),
    head=(rule("lm_head.kernel", "lm_head.weight", TRANSPOSE), *SCORE),
    tied_aliases=("lm_head.weight",),
    ignored=(r"h\.\d+\.attn\.(bias|masked_bias)",),  # causal-mask buffers of old checkpoints
    conv1d=True,
)

CLASS_DEFAULTS = dict(
    vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
    activation_function="gelu_new", resid_pdrop=0.1, layer_norm_epsilon=1e-5,
    initializer_range=0.02, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
    add_cross_attention=False, tie_word_embeddings=True)


def read(d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  refuse(d, "scale_attn_weights", False, "attention is always scaled by 1/sqrt(head_dim)")
  refuse(d, "scale_attn_by_inverse_layer_idx", True, "no per-layer attention scaling")
  refuse(d, "add_cross_attention", True, "decoder-only")
  # reorder_and_upcast_attn only changes rounding in half precision: lmjax's softmax is float32.
  return dict(
      vocab_size=d["vocab_size"], num_layers=d["n_layer"], embed_dim=d["n_embd"],
      num_heads=d["n_head"], mlp_dim=d["n_inner"] or 4 * d["n_embd"],
      max_seq_len=d["n_positions"], norm_eps=float(d["layer_norm_epsilon"]),
      activation=activation_of(d["activation_function"], "activation_function"),
      tie_embeddings=bool(d["tie_word_embeddings"]), dropout_rate=float(d["resid_pdrop"]))


def write(config: ModelConfig, act: str) -> dict[str, Any]:
  require(config, "gpt2", use_bias=True, qkv_bias=True, type_vocab_size=0, position_offset=0)
  require_plain_heads(config, "gpt2")
  return dict(n_positions=config.max_seq_len, n_embd=config.embed_dim, n_layer=config.num_layers,
              n_head=config.num_heads, n_inner=config.mlp_dim, activation_function=act,
              layer_norm_epsilon=config.norm_eps, resid_pdrop=config.dropout_rate,
              embd_pdrop=config.dropout_rate, attn_pdrop=0.0, bos_token_id=None,
              eos_token_id=None)


FAMILY = HfFamily(Family("gpt2", DEFAULTS), (ModelType(
    "gpt2", "gpt2", {"GPT2LMHeadModel": Head.CAUSAL_LM, "GPT2Model": Head.NONE,
                     "GPT2ForSequenceClassification": Head.CLASSIFICATION},
    CLASS_DEFAULTS, KEY_MAP, read, write),))
