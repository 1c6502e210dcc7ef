"""The model config's Hugging Face twin: `config.json` dicts <-> ModelConfig, for gpt2, bert,
roberta, distilbert, modernbert, llama, mistral, qwen2, qwen3, gemma2, gemma3_text, mixtral and
qwen3_moe.

Reading fills keys a config.json leaves out with the defaults of the matching `transformers`
config class (old checkpoints only store what differs), and refuses what the lmjax graph cannot
compute exactly: the error names the key, the value and what is supported. Writing checks the
reverse: every switch of the ModelConfig must be expressible in the target `model_type`. Plain
dicts only: reading and writing the files is lmjax.convert's; the writing half is
`hf_export.py` (re-exported here).
"""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.errors import UserError
from lmjax.model.config import (Activation, ClassifierPooling, Family, Head, ModelConfig,
                                RopeScaling)
from lmjax.hf.config_export import (export_model_type, model_config_to_hf_config,
                                   roberta_head_activation)
from lmjax.model.moe_config import MoeConfig
from lmjax.hf.tables import ACTIVATIONS, ARCHITECTURES, CLASS_DEFAULTS, ENCODERS, MODEL_TYPES

def _supported(names) -> str:
  return ", ".join(sorted(names))


def model_type_of(hf_config: Mapping[str, Any]) -> str:
  """The checked `model_type` of a config.json dict."""
  model_type = hf_config.get("model_type")
  if model_type not in MODEL_TYPES:
    raise UserError(f"Hugging Face model_type {model_type!r} is not supported; lmjax converts "
                    f"{_supported(MODEL_TYPES)}.")
  return model_type


def _head(model_type: str, hf_config: Mapping[str, Any]) -> Head:
  architectures = hf_config.get("architectures") or []
  heads = ARCHITECTURES[model_type]
  if not architectures:  # a bare config: decoders are language models, encoders bare bodies
    return Head.NONE if MODEL_TYPES[model_type] in ENCODERS else Head.CAUSAL_LM
  if architectures[0] not in heads:
    raise UserError(f"architecture {architectures[0]!r} is not supported for model_type "
                    f"{model_type!r}; lmjax converts {_supported(heads)}.")
  return heads[architectures[0]]


def _activation(name: str, key: str) -> Activation:
  if name not in ACTIVATIONS:
    raise UserError(f"{key}={name!r} has no exact lmjax equivalent; supported: "
                    f"{_supported(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def _refuse(d: Mapping[str, Any], key: str, bad: Any, why: str) -> None:
  if d.get(key) == bad:
    raise UserError(f"{key}={bad!r} is not supported by lmjax ({why}); convert a model with "
                    f"{key}={not bad!r}.")


def _integer(d: Mapping[str, Any], key: str, low: int, why: str) -> int:
  """d[key], checked to be an integer of at least `low` (0 or 1); `why` ends the message."""
  value = d[key]
  if not isinstance(value, int) or isinstance(value, bool) or value < low:
    kind = "positive" if low == 1 else "non-negative"
    raise UserError(f"{key}={value!r} must be a {kind} integer {why}.")
  return value


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
                   Family.GEMMA2: _gemma2_fields, Family.GEMMA3: _gemma3_fields,
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
                      f"{_supported(_POOLINGS)}.")
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
    every = _integer(d, "global_attn_every_n_layers", 1,
                     "(every n-th layer is global), or give layer_types")
    kinds = ["sliding_attention" if i % every else "full_attention" for i in range(layers)]
  local = _integer(d, "local_attention", 0, "(the local layers' window, both sides together)")
  windows = _layer_type_windows(kinds, local // 2 + 1, layers, "")
  rope = _modernbert_rope(d)
  classifier_act = _activation(d["classifier_activation"], "classifier_activation")
  activation = _activation(d["hidden_activation"], "hidden_activation")
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
  _refuse(d, "scale_attn_weights", False, "attention is always scaled by 1/sqrt(head_dim)")
  _refuse(d, "scale_attn_by_inverse_layer_idx", True, "no per-layer attention scaling")
  _refuse(d, "add_cross_attention", True, "decoder-only")
  # reorder_and_upcast_attn only changes rounding in half precision: lmjax's softmax is float32.
  return dict(
      vocab_size=d["vocab_size"], num_layers=d["n_layer"], embed_dim=d["n_embd"],
      num_heads=d["n_head"], mlp_dim=d["n_inner"] or 4 * d["n_embd"],
      max_seq_len=d["n_positions"], norm_eps=float(d["layer_norm_epsilon"]),
      activation=_activation(d["activation_function"], "activation_function"),
      tie_embeddings=bool(d["tie_word_embeddings"]), dropout_rate=float(d["resid_pdrop"]))


def _bert_fields(model_type: str, d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  """Fields of bert and roberta: the same graph, with RoBERTa's positions offset."""
  _refuse(d, "is_decoder", True, "bidirectional encoders only")
  _refuse(d, "add_cross_attention", True, "no cross-attention")
  if d["position_embedding_type"] != "absolute":
    raise UserError(f"position_embedding_type={d['position_embedding_type']!r} is not "
                    f"supported; lmjax converts 'absolute'.")
  activation = _activation(d["hidden_act"], "hidden_act")
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
      norm_eps=1e-12, activation=_activation(d["activation"], "activation"),
      tie_embeddings=bool(d["tie_word_embeddings"]), dropout_rate=float(d["dropout"]))


def _llama_fields(model_type: str, d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  """Fields of llama, mistral, qwen2 and qwen3, which share one graph (Qwen3's with QK-norm, a
  family default)."""
  hidden, heads = d["hidden_size"], d["num_attention_heads"]
  activation = _activation(d["hidden_act"], "hidden_act")
  if model_type == "qwen2":
    qkv_bias, use_bias = True, False
  elif model_type == "mistral":
    qkv_bias = use_bias = False
  elif model_type == "qwen3":
    _refuse(d, "attention_bias", True, "Qwen3's attention_bias biases q/k/v and o_proj but not "
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
      **_rope_fields(d), **_sliding_fields(model_type, d))


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


def _sliding_fields(model_type: str, d: Mapping[str, Any]) -> dict[str, Any]:
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
  return _layer_type_windows(
      kinds, window, layers,
      f"use_sliding_window={d['use_sliding_window']}, sliding_window="
      f"{d.get('sliding_window')!r}): set use_sliding_window=true and sliding_window")


def _layer_type_windows(kinds: list[str], window: int | None, layers: int, missing: str
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


def _gemma2_fields(model_type: str, d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  """Fields of gemma2: Llama's graph with the family's (1 + w) sandwich norms, scaled
  embeddings and GeGLU, plus the keys below; with layer_types null, Gemma2Config makes the
  even layers (0, 2, …) sliding."""
  kinds = d["layer_types"] or ["sliding_attention" if i % 2 == 0 else "full_attention"
                               for i in range(d["num_hidden_layers"])]
  return {**_gemma_fields(model_type, d, kinds), **_rope_fields(d)}


def _gemma3_fields(model_type: str, d: Mapping[str, Any], head: Head) -> dict[str, Any]:
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
    pattern = _integer(d, "sliding_window_pattern", 1,
                       "(every pattern-th layer is global), or give layer_types")
    kinds = ["sliding_attention" if (i + 1) % pattern else "full_attention"
             for i in range(d["num_hidden_layers"])]
  return {**_gemma_fields(model_type, d, kinds), **_gemma3_rope_fields(d, kinds)}


def _gemma_fields(model_type: str, d: Mapping[str, Any], kinds: list[str]) -> dict[str, Any]:
  """What gemma2 and gemma3_text share: the keys below, and the windows of `kinds`, the
  layers' types."""
  name = "Gemma 2" if model_type == "gemma2" else "Gemma 3"
  _refuse(d, "attention_bias", True, f"{name}'s attention_bias biases q/k/v and o_proj but not "
          "the MLP, and lmjax has one switch for o_proj and the MLP")
  _refuse(d, "use_bidirectional_attention", True, f"{name} converts as a causal decoder")
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
      activation=_activation(d["hidden_activation"], "hidden_activation"),
      tie_embeddings=bool(d["tie_word_embeddings"]),
      query_pre_attn_scalar=None if scalar == head_dim else float(scalar),
      attn_logit_softcap=cap("attn_logit_softcapping"),
      final_logit_softcap=cap("final_logit_softcapping"),
      **_layer_type_windows(kinds, d["sliding_window"], layers,
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


_ROPE_TYPES = ("default", "llama3", "linear")


def _rope_fields(d: Mapping[str, Any]) -> dict[str, Any]:
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


__all__ = ["hf_config_to_model_config", "hf_labels", "model_config_to_hf_config", "export_model_type",
           "model_type_of", "MODEL_TYPES", "ARCHITECTURES"]
