"""The model config's Hugging Face twin: `config.json` dicts <-> ModelConfig, for gpt2, bert,
roberta, distilbert, modernbert, llama, mistral, qwen2, qwen3, gemma2, gemma3_text, mixtral and
qwen3_moe.

Reading fills keys a config.json leaves out with the defaults of the matching `transformers`
config class (old checkpoints only store what differs), and refuses what the lmjax graph cannot
compute exactly: the error names the key, the value and what is supported. Writing checks the
reverse: every switch of the ModelConfig must be expressible in the target `model_type`. Plain
dicts only: reading and writing the files is lmjax.convert's; the writing half is
`config_export.py` (re-exported here).
"""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.errors import UserError
from lmjax.hf.config_export import (export_model_type, model_config_to_hf_config,
                                    roberta_head_activation)
from lmjax.hf.config_fields import (activation_of, integer_key, layer_type_windows, refuse,
                                    rope_fields, sliding_fields, supported)
from lmjax.hf.config_gemma import gemma2_fields, gemma3_fields
from lmjax.hf.tables import ARCHITECTURES, CLASS_DEFAULTS, ENCODERS, MODEL_TYPES
from lmjax.model.config import ClassifierPooling, Family, Head, ModelConfig
from lmjax.model.moe_config import MoeConfig


def model_type_of(hf_config: Mapping[str, Any]) -> str:
  """The checked `model_type` of a config.json dict."""
  model_type = hf_config.get("model_type")
  if model_type not in MODEL_TYPES:
    raise UserError(f"Hugging Face model_type {model_type!r} is not supported; lmjax converts "
                    f"{supported(MODEL_TYPES)}.")
  return model_type


def _head(model_type: str, hf_config: Mapping[str, Any]) -> Head:
  architectures = hf_config.get("architectures") or []
  heads = ARCHITECTURES[model_type]
  if not architectures:  # a bare config: decoders are language models, encoders bare bodies
    return Head.NONE if MODEL_TYPES[model_type] in ENCODERS else Head.CAUSAL_LM
  if architectures[0] not in heads:
    raise UserError(f"architecture {architectures[0]!r} is not supported for model_type "
                    f"{model_type!r}; lmjax converts {supported(heads)}.")
  return heads[architectures[0]]


def _one_bias_switch(d: Mapping[str, Any]) -> bool:
  """attention_bias and mlp_bias, which lmjax's one switch for the output projection's and the
  MLP's biases must see equal."""
  if d["attention_bias"] != d["mlp_bias"]:
    raise UserError(f"attention_bias={d['attention_bias']} with mlp_bias={d['mlp_bias']} is not "
                    f"supported: lmjax has one switch for the output-projection and MLP biases; "
                    f"convert a model where both are equal.")
  return bool(d["attention_bias"])


def hf_config_to_model_config(hf_config: Mapping[str, Any], *, scan_layers: bool = True
                              ) -> ModelConfig:
  """The ModelConfig computing the same function as a Hugging Face config.json dict.

  Raises UserError for an unsupported model_type, architecture, activation, RoPE scaling or
  other option, naming it and listing what is supported.
  """
  model_type = model_type_of(hf_config)
  d = {**CLASS_DEFAULTS[model_type], **hf_config}  # an explicit null means what it means to HF
  family = MODEL_TYPES[model_type]
  fields: dict[str, Any] = dict(head=_head(model_type, hf_config), scan_layers=scan_layers,
                                initializer_range=float(d["initializer_range"]))
  family_fields = {Family.GPT2: _gpt2_fields, Family.BERT: _bert_fields,
                   Family.LLAMA: _llama_fields, Family.MISTRAL: _llama_fields,
                   Family.QWEN3: _llama_fields, Family.DISTILBERT: _distilbert_fields,
                   Family.GEMMA2: gemma2_fields, Family.GEMMA3: gemma3_fields,
                   Family.MIXTRAL: _moe_fields, Family.QWEN3_MOE: _moe_fields,
                   Family.MODERNBERT: _modernbert_fields}[family]
  fields.update(family_fields(model_type, d, fields["head"]))
  if fields["head"] is Head.CLASSIFICATION:
    fields.update(_classifier_fields(model_type, d))
  return ModelConfig.for_family(family, **fields)


def hf_labels(hf_config: Mapping[str, Any]) -> tuple[str, ...]:
  """A sequence classifier's label names in index order: its `id2label`, else LABEL_0, … for
  its `num_labels` (transformers' defaults)."""
  id2label = hf_config.get("id2label")
  if id2label:
    try:
      by_index = {int(i): str(name) for i, name in id2label.items()}
    except (AttributeError, TypeError, ValueError):
      raise UserError(f"id2label={id2label!r} must map label indices to names.") from None
    if sorted(by_index) != list(range(len(by_index))):
      raise UserError(f"id2label={id2label!r} must name every index 0…{len(by_index) - 1}.")
    return tuple(by_index[i] for i in range(len(by_index)))
  return tuple(f"LABEL_{i}" for i in range(int(hf_config.get("num_labels") or 2)))


def _classifier_fields(model_type: str, d: Mapping[str, Any]) -> dict[str, Any]:
  """A sequence classifier's label count; BERT's, RoBERTa's and DistilBERT's heads read a
  pooled first token (RoBERTa's `classifier.dense` and DistilBERT's `pre_classifier` are lmjax's
  pooler), the decoders' `score` has no bias."""
  problem = d.get("problem_type")
  if problem not in (None, "single_label_classification"):
    raise UserError(f"problem_type={problem!r} is not supported: lmjax classifiers are "
                    f"single-label (softmax over the labels).")
  num_labels = len(hf_labels(d))
  if num_labels < 2:
    raise UserError(f"num_labels={num_labels} is a regression head; lmjax classifiers have two "
                    f"labels or more.")
  if model_type == "modernbert":  # its prediction head (a family default), then a biased classifier
    pooling = d["classifier_pooling"]
    if pooling not in _POOLINGS:
      raise UserError(f"classifier_pooling={pooling!r} is not supported; lmjax converts "
                      f"{supported(_POOLINGS)}.")
    return dict(num_labels=num_labels, classifier_pooling=_POOLINGS[pooling])
  encoder = MODEL_TYPES[model_type] in ENCODERS
  return dict(num_labels=num_labels, pooler=encoder, classifier_bias=encoder)


_POOLINGS = {"cls": ClassifierPooling.TOKEN, "mean": ClassifierPooling.MEAN}


def _modernbert_fields(model_type: str, d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  """Fields of modernbert: the family's graph, its layers' kinds from layer_types (else every
  global_attn_every_n_layers-th layer global from layer 0), a local layer seeing the keys at
  most local_attention // 2 slots away on either side, and each kind's RoPE base. Its dropouts
  (embeddings, MLP, classifier) become lmjax's one dropout_rate, their largest."""
  bias = _one_bias_switch(d)
  layers = d["num_hidden_layers"]
  kinds = d["layer_types"]
  if not kinds:
    every = integer_key(d, "global_attn_every_n_layers", 1,
                     "(every n-th layer is global), or give layer_types")
    kinds = ["sliding_attention" if i % every else "full_attention" for i in range(layers)]
  local = integer_key(d, "local_attention", 0, "(the local layers' window, both sides together)")
  windows = layer_type_windows(kinds, local // 2 + 1, layers, "")
  rope = _modernbert_rope(d)
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


def _modernbert_rope(d: Mapping[str, Any]) -> dict[str, float]:
  """Each layer kind's RoPE base, read as ModernBertConfig does: v5's `rope_parameters` by layer
  type, each entry's missing base from v4's `global_rope_theta` / `local_rope_theta`, and v4's
  `rope_scaling` laid over both. lmjax converts plain ('default') RoPE only."""
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


def _gpt2_fields(model_type: str, d: Mapping[str, Any], head: Head) -> dict[str, Any]:
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


def _bert_fields(model_type: str, d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  """Fields of bert and roberta: the same graph, with RoBERTa's positions offset."""
  refuse(d, "is_decoder", True, "bidirectional encoders only")
  refuse(d, "add_cross_attention", True, "no cross-attention")
  if d["position_embedding_type"] != "absolute":
    raise UserError(f"position_embedding_type={d['position_embedding_type']!r} is not "
                    f"supported; lmjax converts 'absolute'.")
  activation = activation_of(d["hidden_act"], "hidden_act")
  offset, head_activation = 0, None
  if model_type == "roberta":
    head_activation = roberta_head_activation(activation, head)
    if not isinstance(d["pad_token_id"], int):
      raise UserError(f"pad_token_id={d['pad_token_id']!r}: RoBERTa numbers positions from "
                      f"pad_token_id + 1, so it must be an integer (1 in RoBERTa checkpoints).")
    offset = d["pad_token_id"] + 1
  return dict(
      vocab_size=d["vocab_size"], num_layers=d["num_hidden_layers"], embed_dim=d["hidden_size"],
      num_heads=d["num_attention_heads"], mlp_dim=d["intermediate_size"],
      max_seq_len=d["max_position_embeddings"] - offset, position_offset=offset,
      type_vocab_size=d["type_vocab_size"], norm_eps=float(d["layer_norm_eps"]),
      activation=activation, head_activation=head_activation,
      tie_embeddings=bool(d["tie_word_embeddings"]),
      dropout_rate=float(d["hidden_dropout_prob"]),
      pooler=head is Head.NONE)  # as HF's BertModel; from_hf then goes by the weights


def _distilbert_fields(model_type: str, d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  """Fields of distilbert: BERT's graph without token types or a pooler (its classifier's
  ReLU pooler is a family default), every LayerNorm at eps 1e-12 (fixed in HF's code, not a
  key). `sinusoidal_pos_embds` only decides how HF initialises the position table; a checkpoint
  holds the table, which converts as learned positions whatever the flag."""
  return dict(
      vocab_size=d["vocab_size"], num_layers=d["n_layers"], embed_dim=d["dim"],
      num_heads=d["n_heads"], mlp_dim=d["hidden_dim"], max_seq_len=d["max_position_embeddings"],
      norm_eps=1e-12, activation=activation_of(d["activation"], "activation"),
      tie_embeddings=bool(d["tie_word_embeddings"]), dropout_rate=float(d["dropout"]))


def _llama_fields(model_type: str, d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  """Fields of llama, mistral, qwen2 and qwen3, which share one graph (Qwen3's with QK-norm, a
  family default)."""
  hidden, heads = d["hidden_size"], d["num_attention_heads"]
  activation = activation_of(d["hidden_act"], "hidden_act")
  if model_type == "qwen2":
    qkv_bias, use_bias = True, False
  elif model_type == "mistral":
    qkv_bias = use_bias = False
  elif model_type == "qwen3":
    refuse(d, "attention_bias", True, "Qwen3's attention_bias biases q/k/v and o_proj but not "
            "the MLP, and lmjax has one switch for o_proj and the MLP")
    qkv_bias = use_bias = False
  else:
    qkv_bias = use_bias = _one_bias_switch(d)
  head_dim = d["head_dim"]
  return dict(
      vocab_size=d["vocab_size"], num_layers=d["num_hidden_layers"], embed_dim=hidden,
      num_heads=heads, num_kv_heads=d["num_key_value_heads"] or heads,
      head_dim=None if head_dim in (None, hidden // heads) else head_dim,
      mlp_dim=d["intermediate_size"], max_seq_len=d["max_position_embeddings"],
      norm_eps=float(d["rms_norm_eps"]), activation=activation,
      tie_embeddings=bool(d["tie_word_embeddings"]), qkv_bias=qkv_bias, use_bias=use_bias,
      **rope_fields(d), **sliding_fields(model_type, d))


def _moe_fields(model_type: str, d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  """Fields of mixtral and qwen3_moe: Mistral's and Qwen3's attention (a window on every layer,
  where there is one), with experts in every layer's MLP."""
  if model_type == "mixtral":
    if d["router_jitter_noise"]:
      raise UserError(f"router_jitter_noise={d['router_jitter_noise']!r} is not supported: "
                      f"lmjax's router adds no noise in training; convert a model with 0.")
    fields = _llama_fields("mistral", d, head)
    # transformers v5 maps `num_experts` to `num_local_experts` (and writes Qwen3-MoE's so)
    experts, normalize, width = d.get("num_experts", d["num_local_experts"]), True, \
        d["intermediate_size"]
  else:
    sparse_step, dense_layers = d["decoder_sparse_step"], d["mlp_only_layers"] or []
    if sparse_step != 1 or dense_layers:
      raise UserError(f"decoder_sparse_step={sparse_step} with mlp_only_layers={dense_layers} "
                      f"makes some layers dense, which lmjax's uniform (scanned) stack does not "
                      f"build; convert a model with experts in every layer (decoder_sparse_step=1, "
                      f"mlp_only_layers=[]).")
    # Qwen3-MoE's window covers every layer; its config has no layer_types.
    fields = _llama_fields("qwen3", {**d, "layer_types": None, "max_window_layers": 0}, head)
    experts, normalize = d.get("num_local_experts", d["num_experts"]), bool(d["norm_topk_prob"])
    width = d["moe_intermediate_size"]
  fields["moe"] = MoeConfig(
      num_experts=experts, experts_per_token=d["num_experts_per_tok"],
      mlp_dim=None if width == fields["mlp_dim"] else width, normalize_weights=normalize,
      aux_loss_coef=float(d["router_aux_loss_coef"]))
  return fields


__all__ = ["hf_config_to_model_config", "hf_labels", "model_config_to_hf_config", "export_model_type",
           "model_type_of", "MODEL_TYPES", "ARCHITECTURES"]
