"""ModernBERT (`modernbert`): a pre-norm encoder on the rotary graph (graphs.DECODER made
bidirectional): GeGLU, bias-free LayerNorms (also after the embeddings, but not before layer 0's
attention), fused q/k/v and gate/up, local (sliding-window) layers of their own RoPE base
between global ones, and one prediction head (dense, activation, norm) for the MLM decoder and
the classifier alike."""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.errors import UserError
from lmjax.hf.config_fields import (activation_of, integer_key, layer_type_windows, layer_types,
                                    one_bias_switch, require, require_plain_heads, supported)
from lmjax.hf.families.graphs import DECODER
from lmjax.hf.family import HfFamily, ModelType
from lmjax.hf.key_maps import CLASSIFIER, QKV, KeyMap, dense, norm, rule
from lmjax.hf.tables import ACTIVATION_NAMES
from lmjax.hf.transforms import (FUSED_GATE_UP_BIAS, FUSED_QKV_BIAS, LINEAR_FROM_HEADS,
                                 LINEAR_FUSED_GATE_UP_KERNEL, LINEAR_FUSED_QKV_KERNEL, TRANSPOSE)
from lmjax.model.config import ModelConfig
from lmjax.model.families import Family
from lmjax.model.options import Activation, ClassifierPooling, Head, Norm, RopeScaling

# Its global layers' RoPE base is its config class's; the local layers' 10,000 is
# model.rope_local_theta, which needs the sliding window the presets give.
DEFAULTS = {
    **DECODER, "norm": Norm.LAYER_NORM, "norm_bias": False, "activation": Activation.GELU,
    "causal": False, "tie_embeddings": True, "head": Head.MASKED_LM, "classifier_bias": True,
    "embedding_norm": True, "first_attention_norm": False, "head_bias": False,
    "classifier_transform": True, "rope_theta": 160_000.0}

KEY_MAP = KeyMap(  # its `head` is the prediction head of both heads
    base_prefix="model",
    body=(
        rule("token_embedding", "embeddings.tok_embeddings.weight"),
        *norm("embedding_norm", "embeddings.norm"),
        *norm("layers.{i}.attention_norm", "layers.{i}.attn_norm", first_layer=1),
        rule(tuple(f"layers.{{i}}.{p}.kernel" for p in QKV), "layers.{i}.attn.Wqkv.weight",
             LINEAR_FUSED_QKV_KERNEL),
        rule(tuple(f"layers.{{i}}.{p}.bias" for p in QKV), "layers.{i}.attn.Wqkv.bias",
             FUSED_QKV_BIAS),
        *dense("layers.{i}.attention.out", "layers.{i}.attn.Wo", LINEAR_FROM_HEADS),
        *norm("layers.{i}.mlp_norm", "layers.{i}.mlp_norm"),
        rule(("layers.{i}.mlp.wi_gate.kernel", "layers.{i}.mlp.wi_up.kernel"),
             "layers.{i}.mlp.Wi.weight", LINEAR_FUSED_GATE_UP_KERNEL),
        rule(("layers.{i}.mlp.wi_gate.bias", "layers.{i}.mlp.wi_up.bias"),
             "layers.{i}.mlp.Wi.bias", FUSED_GATE_UP_BIAS),
        *dense("layers.{i}.mlp.wo", "layers.{i}.mlp.Wo"),
        *norm("final_norm", "final_norm"),
    ),
    head=(*dense("mlm_transform", "head.dense"), *norm("mlm_norm", "head.norm"),
          rule("output_bias", "decoder.bias"),
          rule("lm_head.kernel", "decoder.weight", TRANSPOSE), *CLASSIFIER),
    tied_aliases=("decoder.weight",),
)

# Its config class's (v5), with the v4 keys its __post_init__ still reads: every
# global_attn_every_n_layers-th layer global from layer 0, the others local, and each kind's RoPE
# base; v5 writes layer_types and rope_parameters by layer type instead.
CLASS_DEFAULTS = dict(
    vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22,
    num_attention_heads=12, hidden_activation="gelu", max_position_embeddings=8192,
    initializer_range=0.02, norm_eps=1e-5, norm_bias=False, attention_bias=False,
    attention_dropout=0.0, layer_types=None, rope_parameters=None, rope_scaling=None,
    local_attention=128, global_attn_every_n_layers=3, global_rope_theta=160_000.0,
    local_rope_theta=10_000.0, embedding_dropout=0.0, mlp_bias=False, mlp_dropout=0.0,
    decoder_bias=True, classifier_pooling="cls", classifier_dropout=0.0, classifier_bias=False,
    classifier_activation="gelu", tie_word_embeddings=True)

_POOLINGS = {"cls": ClassifierPooling.TOKEN, "mean": ClassifierPooling.MEAN}


def read(d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  """Its layers' kinds from layer_types (else every global_attn_every_n_layers-th layer global
  from layer 0), a local layer seeing the keys at most local_attention // 2 slots away on either
  side, and each kind's RoPE base. Its dropouts (embeddings, MLP, classifier) become lmjax's
  one dropout_rate, their largest."""
  bias = one_bias_switch(d)
  layers = d["num_hidden_layers"]
  kinds = d["layer_types"]
  if not kinds:
    every = integer_key(d, "global_attn_every_n_layers", 1,
                        "(every n-th layer is global), or give layer_types")
    kinds = ["sliding_attention" if i % every else "full_attention" for i in range(layers)]
  local = integer_key(d, "local_attention", 0, "(the local layers' window, both sides together)")
  windows = layer_type_windows(kinds, local // 2 + 1, layers, "")
  rope = _read_rope(d)
  classifier_act = activation_of(d["classifier_activation"], "classifier_activation")
  activation = activation_of(d["hidden_activation"], "hidden_activation")
  return dict(
      vocab_size=d["vocab_size"], num_layers=layers, embed_dim=d["hidden_size"],
      num_heads=d["num_attention_heads"], mlp_dim=d["intermediate_size"],
      max_seq_len=d["max_position_embeddings"], norm_eps=float(d["norm_eps"]),
      norm_bias=bool(d["norm_bias"]), activation=activation,
      head_activation=None if classifier_act is activation else classifier_act,
      head_bias=bool(d["classifier_bias"]), decoder_bias=bool(d["decoder_bias"]),
      tie_embeddings=bool(d["tie_word_embeddings"]), qkv_bias=bias, use_bias=bias,
      dropout_rate=max(float(d[k]) for k in ("embedding_dropout", "mlp_dropout",
                                             "classifier_dropout")),
      rope_theta=rope["full_attention"],
      rope_local_theta=(rope["sliding_attention"] if windows and rope["sliding_attention"]
                        != rope["full_attention"] else None),
      **windows)


def _read_rope(d: Mapping[str, Any]) -> dict[str, float]:
  """Each layer kind's RoPE base, read as its config class does: v5's `rope_parameters` by
  layer type, each entry's missing base from v4's `global_rope_theta` / `local_rope_theta`, and
  v4's `rope_scaling` laid over both. lmjax converts plain ('default') RoPE only."""
  nested = d["rope_parameters"] or {}
  bases = {}
  for kind, key in (("full_attention", "global_rope_theta"),
                    ("sliding_attention", "local_rope_theta")):
    rope = {"rope_type": "default", **(nested.get(kind) or {}), **(d["rope_scaling"] or {})}
    rope_type = rope.get("rope_type", rope.get("type"))
    if rope_type != "default":
      raise UserError(f"RoPE type {rope_type!r} of the {kind} layers is not supported for "
                      f"modernbert; lmjax converts plain ('default') RoPE.")
    if (rope.get("partial_rotary_factor") or 1.0) != 1.0:
      raise UserError("partial_rotary_factor != 1 is not supported: lmjax rotates every head "
                      "dim.")
    bases[kind] = float(rope.get("rope_theta") or d[key])
  return bases


def read_classifier(d: Mapping[str, Any]) -> dict[str, Any]:
  """Its classifier reads the prediction head's output (a family default) of the first token or
  the mean of all (`classifier_pooling`), then a biased classifier."""
  pooling = d["classifier_pooling"]
  if pooling not in _POOLINGS:
    raise UserError(f"classifier_pooling={pooling!r} is not supported; lmjax converts "
                    f"{supported(_POOLINGS)}.")
  return dict(classifier_pooling=_POOLINGS[pooling])


def write(config: ModelConfig, act: str) -> dict[str, Any]:
  """Its layers' kinds and their one window (a local layer sees keys up to local_attention // 2
  slots away on either side, lmjax's window - 1), each kind's RoPE base in v5's rope_parameters
  and v4's keys, and its prediction head's. v4 readers, which have no layer_types, get
  global_attn_every_n_layers where the layers follow its pattern."""
  require(config, "modernbert", type_vocab_size=0, position_offset=0, pooler=False,
          rope_scaling=RopeScaling.NONE, qkv_bias=config.use_bias)
  require_plain_heads(config, "modernbert")
  windows = config.layer_windows  # one window (model.sliding_window) for every local layer
  global_every = next((n for n in range(1, config.num_layers + 1)
                       if all((w is None) == (i % n == 0) for i, w in enumerate(windows))), None)
  local = config.rope_local_theta or config.rope_theta
  rope = lambda theta: {"rope_type": "default", "rope_theta": theta}
  fields = dict(
      hidden_size=config.embed_dim, intermediate_size=config.mlp_dim,
      num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
      hidden_activation=act, max_position_embeddings=config.max_seq_len,
      norm_eps=config.norm_eps, norm_bias=config.norm_bias, attention_bias=config.use_bias,
      mlp_bias=config.use_bias, attention_dropout=0.0, embedding_dropout=config.dropout_rate,
      mlp_dropout=config.dropout_rate, classifier_dropout=config.dropout_rate,
      layer_types=layer_types(config), local_attention=2 * ((config.sliding_window or 65) - 1),
      rope_parameters={"full_attention": rope(config.rope_theta),
                       "sliding_attention": rope(local)},
      global_rope_theta=config.rope_theta, local_rope_theta=local,
      classifier_activation=ACTIVATION_NAMES[config.head_activation or config.activation],
      classifier_bias=config.head_bias, decoder_bias=config.decoder_bias,
      classifier_pooling="mean" if config.classifier_pooling is ClassifierPooling.MEAN else "cls",
      sparse_prediction=False, pad_token_id=None, bos_token_id=None, eos_token_id=None,
      cls_token_id=None, sep_token_id=None)
  if global_every is not None:
    fields.update(global_attn_every_n_layers=global_every)
  return fields


FAMILY = HfFamily(Family("modernbert", DEFAULTS), (ModelType(
    "modernbert", "modernbert",
    {"ModernBertForMaskedLM": Head.MASKED_LM, "ModernBertModel": Head.NONE,
     "ModernBertForSequenceClassification": Head.CLASSIFICATION},
    CLASS_DEFAULTS, KEY_MAP, read, write, encoder=True,
    keys=frozenset({"norm_bias", "head_bias", "decoder_bias", "classifier_pooling",
                    "head_activation", "sliding_window", "rope_local_theta"}),
    classifier={"pooler": False, "classifier_bias": True}, read_classifier=read_classifier),))
