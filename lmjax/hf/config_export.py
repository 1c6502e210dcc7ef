"""The lmjax -> Hugging Face half of the model config's twin: ModelConfig -> `config.json`
dicts, refusing every switch the target `model_type` cannot express (naming it and the value it
needs). Its reading half is `config.py`."""

from __future__ import annotations

from typing import Any

from lmjax.errors import UserError
from lmjax.hf.tables import ACTIVATION_NAMES, ARCHITECTURES, ENCODERS
from lmjax.model.config import (FAMILY_DEFAULTS, Activation, ClassifierPooling, Family, Head,
                                ModelConfig, PoolerActivation, RopeScaling)


def export_model_type(config: ModelConfig) -> str:
  """The HF model_type `config` exports as: its family's, except where the graph names a variant
  (roberta: positions offset; qwen2: a Llama with biases on q/k/v only)."""
  if config.family is Family.BERT:
    return "roberta" if config.position_offset else "bert"
  if config.family is Family.LLAMA and config.qkv_bias and not config.use_bias:
    return "qwen2"
  if config.family is Family.GEMMA3:
    return "gemma3_text"  # transformers' "gemma3" is the multimodal model
  return config.family.value


_SLIDING_MODEL_TYPES = ("mistral", "qwen2", "qwen3", "gemma2",  # those with a sliding-window key
                        "gemma3_text", "mixtral", "qwen3_moe", "modernbert")
_MOE_MODEL_TYPES = ("mixtral", "qwen3_moe")  # those with experts
# Switches every HF model of a family has fixed; the rest are config.json keys.
_FIXED = ("norm", "norm_position", "gated_mlp", "positions", "causal", "qk_norm", "post_norms",
          "embed_scale")
# Gemma's keys, which no other model type has.
_GEMMA_MODEL_TYPES = ("gemma2", "gemma3_text")
_GEMMA2_ONLY = dict(query_pre_attn_scalar=None, attn_logit_softcap=None, final_logit_softcap=None)
# ModernBERT's switches, which every other model type has at these values.
_MODERNBERT_ONLY = dict(norm_bias=True, embedding_norm=False, first_attention_norm=True,
                        head_bias=True, decoder_bias=True,
                        classifier_pooling=ClassifierPooling.TOKEN, classifier_transform=False)
_MODERNBERT_FIXED = ("embedding_norm", "first_attention_norm", "classifier_transform")


def roberta_head_activation(activation: Activation, head: Head) -> Activation | None:
  """model.head_activation of a RoBERTa: its LM head applies exact GELU whatever hidden_act
  (None where that is the model's activation, or where there is no LM head)."""
  return None if activation is Activation.GELU or head is not Head.MASKED_LM else Activation.GELU


def _require(config: ModelConfig, model_type: str, **expected) -> None:
  """UserError unless each named field of `config` has the expected value."""
  plain = lambda value: getattr(value, "value", value)  # enums as their config spelling
  for name, value in expected.items():
    if getattr(config, name) != value:
      raise UserError(f"model.{name}={plain(getattr(config, name))!r} cannot be expressed as a "
                      f"Hugging Face {model_type} model, which needs {name}={plain(value)!r}.")


def _require_plain_heads(config: ModelConfig, model_type: str) -> None:
  if config.kv_heads != config.num_heads or config.dim_per_head * config.num_heads != config.embed_dim:
    raise UserError(f"model.num_kv_heads={config.num_kv_heads} / model.head_dim={config.head_dim}: "
                    f"a Hugging Face {model_type} model has as many key/value heads as query heads "
                    f"and head_dim = embed_dim / num_heads; set both to null.")


def model_config_to_hf_config(config: ModelConfig) -> dict[str, Any]:
  """The config.json dict (with "architectures" and "model_type") of the HF twin of `config`."""
  model_type = export_model_type(config)
  family = config.family
  _require(config, model_type, **{k: FAMILY_DEFAULTS[family][k] for k in _FIXED})
  if model_type == "modernbert":
    _require(config, model_type, **{k: FAMILY_DEFAULTS[family][k] for k in _MODERNBERT_FIXED})
  else:
    _require(config, model_type, **_MODERNBERT_ONLY)
    if config.prediction_head:  # RoBERTa's applies exact GELU, the others the model's activation
      _require(config, model_type, head_activation=(
          roberta_head_activation(config.activation, config.head) if model_type == "roberta"
          else None))
  if model_type not in _SLIDING_MODEL_TYPES:
    _require(config, model_type, sliding_window=None)
  if model_type not in _GEMMA_MODEL_TYPES:
    _require(config, model_type, **_GEMMA2_ONLY)
  if model_type not in _MOE_MODEL_TYPES and config.moe.enabled:
    raise UserError(f"model.moe.num_experts={config.moe.num_experts}: a Hugging Face {model_type} "
                    f"model has no experts; lmjax exports Mixture-of-Experts models as mixtral "
                    f"(model.family=mixtral) or qwen3_moe (model.family=qwen3_moe).")
  if model_type not in ("gemma3_text", "modernbert"):  # those with a RoPE base per layer type
    _require(config, model_type, rope_local_theta=None)
  heads = {head: name for name, head in ARCHITECTURES[model_type].items()}
  if config.head not in heads:
    raise UserError(f"model.head={config.head.value!r} has no Hugging Face {model_type} "
                    f"counterpart; lmjax exports heads "
                    f"{', '.join(h.value for h in heads)}.")
  if config.activation not in ACTIVATION_NAMES:
    raise UserError(f"model.activation={config.activation.value!r} cannot be exported.")
  out: dict[str, Any] = {"architectures": [heads[config.head]], "model_type": model_type}
  act = ACTIVATION_NAMES[config.activation]
  common = dict(vocab_size=config.vocab_size, initializer_range=config.initializer_range,
                tie_word_embeddings=config.tie_embeddings)
  if family is Family.GPT2:
    _require(config, model_type, use_bias=True, qkv_bias=True, type_vocab_size=0,
             position_offset=0)
    _require_plain_heads(config, model_type)
    out.update(common, n_positions=config.max_seq_len, n_embd=config.embed_dim,
               n_layer=config.num_layers, n_head=config.num_heads, n_inner=config.mlp_dim,
               activation_function=act, layer_norm_epsilon=config.norm_eps,
               resid_pdrop=config.dropout_rate, embd_pdrop=config.dropout_rate, attn_pdrop=0.0,
               bos_token_id=None, eos_token_id=None)
  elif family is Family.BERT:
    _require(config, model_type, use_bias=True, qkv_bias=True)
    _require_plain_heads(config, model_type)
    if model_type == "roberta":
      if config.position_offset < 1:
        raise UserError("a RoBERTa model numbers positions from pad_token_id + 1: set "
                        "model.position_offset (2 for RoBERTa's pad_token_id=1).")
    else:
      _require(config, model_type, position_offset=0)
    if config.pooler:
      _require(config, model_type, pooler_activation=PoolerActivation.TANH)
    out.update(common, hidden_size=config.embed_dim, num_hidden_layers=config.num_layers,
               num_attention_heads=config.num_heads, intermediate_size=config.mlp_dim,
               hidden_act=act, hidden_dropout_prob=config.dropout_rate,
               attention_probs_dropout_prob=0.0,
               max_position_embeddings=config.num_position_embeddings,
               type_vocab_size=config.type_vocab_size, layer_norm_eps=config.norm_eps,
               pad_token_id=config.position_offset - 1 if model_type == "roberta" else 0)
  elif family is Family.DISTILBERT:
    out.update(common, **_distilbert_hf_fields(config, model_type, act))
  elif family is Family.GEMMA2:
    out.update(common, **_gemma2_hf_fields(config, model_type, act))
  elif family is Family.GEMMA3:
    out.update(common, **_gemma3_hf_fields(config, model_type, act))
  elif family is Family.MODERNBERT:
    out.update(common, **_modernbert_hf_fields(config, model_type, act))
  elif model_type in _MOE_MODEL_TYPES:
    out.update(common, **_moe_hf_fields(config, model_type, act))
  else:
    out.update(common, **_llama_hf_fields(config, model_type, act))
  if config.head is Head.CLASSIFICATION:
    out.update(_classifier_hf_fields(config, model_type))
  return out


def _classifier_hf_fields(config: ModelConfig, model_type: str) -> dict[str, Any]:
  """A classifier's head as HF has it (BERT and RoBERTa: a pooled first token and a biased
  classifier; decoders: a bias-free `score` on the last token), with placeholder label names
  (LABEL_i) that an export replaces by the run's."""
  encoder = config.family in ENCODERS
  if model_type == "modernbert":  # its prediction head, then a biased classifier
    _require(config, model_type, pooler=False, classifier_bias=True)
  else:
    _require(config, model_type, pooler=encoder, classifier_bias=encoder)
  names = {i: f"LABEL_{i}" for i in range(config.num_labels)}
  return dict(id2label=names, label2id={name: i for i, name in names.items()},
              problem_type="single_label_classification")


def _distilbert_hf_fields(config: ModelConfig, model_type: str, act: str) -> dict[str, Any]:
  """DistilBERT's keys; its code fixes the LayerNorms' eps and has no token types, position
  offset or pooler but the classifier's (`pre_classifier`, through ReLU)."""
  _require(config, model_type, use_bias=True, qkv_bias=True, type_vocab_size=0,
           position_offset=0, norm_eps=1e-12, pooler=config.head is Head.CLASSIFICATION)
  if config.pooler:
    _require(config, model_type, pooler_activation=PoolerActivation.RELU)
  _require_plain_heads(config, model_type)
  # lmjax has no attention dropout; its classifier's dropout is the model's.
  return dict(dim=config.embed_dim, n_layers=config.num_layers, n_heads=config.num_heads,
              hidden_dim=config.mlp_dim, activation=act,
              max_position_embeddings=config.max_seq_len, sinusoidal_pos_embds=False,
              dropout=config.dropout_rate, attention_dropout=0.0,
              seq_classif_dropout=config.dropout_rate, qa_dropout=config.dropout_rate,
              pad_token_id=0)


def _llama_hf_fields(config: ModelConfig, model_type: str, act: str) -> dict[str, Any]:
  _require(config, model_type, type_vocab_size=0)
  if model_type == "qwen2":
    _require(config, model_type, qkv_bias=True, use_bias=False)
  elif model_type in ("mistral", "qwen3"):
    _require(config, model_type, qkv_bias=False, use_bias=False)
  else:
    _require(config, model_type, qkv_bias=config.use_bias)
  fields = dict(
      hidden_size=config.embed_dim, intermediate_size=config.mlp_dim,
      num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
      num_key_value_heads=config.kv_heads, head_dim=config.dim_per_head, hidden_act=act,
      max_position_embeddings=config.max_seq_len, rms_norm_eps=config.norm_eps,
      attention_dropout=0.0, bos_token_id=None, eos_token_id=None, **_rope_hf_fields(config))
  if model_type == "llama":
    fields.update(attention_bias=config.use_bias, mlp_bias=config.use_bias)
  elif model_type == "mistral":
    if config.sliding_window is not None:
      _require(config, model_type, sliding_layers=None)  # one window for every layer
    fields.update(sliding_window=config.sliding_window)
  else:
    if model_type == "qwen3":
      fields.update(attention_bias=False)
    fields.update(_qwen_sliding_hf_fields(config))
  return fields


def _moe_hf_fields(config: ModelConfig, model_type: str, act: str) -> dict[str, Any]:
  """Mixtral's and Qwen3-MoE's keys: Mistral's and Qwen3's, one window for every layer, and
  their experts. (A capacity_factor is lmjax's dispatch, not the function: HF computes the same
  model dropless.)"""
  moe = config.moe
  if config.sliding_window is not None:
    _require(config, model_type, sliding_layers=None)  # one window for every layer
  dense = _llama_hf_fields(config, "mistral" if model_type == "mixtral" else "qwen3", act)
  routing = dict(num_experts_per_tok=moe.experts_per_token,
                 router_aux_loss_coef=moe.aux_loss_coef, output_router_logits=False)
  if model_type == "mixtral":
    if not moe.normalize_weights or config.expert_mlp_dim != config.mlp_dim:
      raise UserError(f"model.moe.normalize_weights={moe.normalize_weights} / model.moe.mlp_dim="
                      f"{moe.mlp_dim}: a Hugging Face mixtral model renormalises the top-k "
                      f"weights and its experts are model.mlp_dim wide; set normalize_weights="
                      f"true and mlp_dim=null, or export as qwen3_moe.")
    return dict(dense, num_local_experts=moe.num_experts, router_jitter_noise=0.0, **routing)
  for key in ("layer_types", "max_window_layers"):  # Qwen3-MoE windows every layer alike
    dense.pop(key, None)
  return dict(dense, num_experts=moe.num_experts, norm_topk_prob=moe.normalize_weights,
              moe_intermediate_size=config.expert_mlp_dim, decoder_sparse_step=1,
              mlp_only_layers=[], **routing)


def _rope_hf_fields(config: ModelConfig) -> dict[str, Any]:
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


def _gemma2_hf_fields(config: ModelConfig, model_type: str, act: str) -> dict[str, Any]:
  """Gemma 2's keys. Its code always builds the sliding layers' mask, so a model without a
  window exports every layer as full_attention beside a placeholder window (the context)."""
  _require(config, model_type, type_vocab_size=0, qkv_bias=False, use_bias=False)
  if config.embed_dim % config.num_heads:
    raise UserError(f"model.embed_dim={config.embed_dim} cannot be expressed as a Hugging Face "
                    f"{model_type} model, which needs a multiple of model.num_heads="
                    f"{config.num_heads} "
                    f"(whatever model.head_dim).")
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
      layer_types=["full_attention" if w is None else "sliding_attention"
                   for w in config.layer_windows],
      use_bidirectional_attention=False, bos_token_id=None, eos_token_id=None, pad_token_id=0,
      **_rope_hf_fields(config))


def _gemma3_hf_fields(config: ModelConfig, model_type: str, act: str) -> dict[str, Any]:
  """Gemma 3's keys: Gemma 2's without the attention soft-cap (transformers' Gemma 3 never
  applies it), and its RoPE by layer type in v5's `rope_parameters`, repeated in v4's
  `rope_theta`, `rope_scaling` and `rope_local_base_freq` where those can say it (local layers
  of plain RoPE)."""
  _require(config, model_type, attn_logit_softcap=None)
  if config.rope_scaling is RopeScaling.LLAMA3:
    raise UserError(f"model.rope_scaling=llama3 cannot be expressed as a Hugging Face "
                    f"{model_type} model as lmjax converts it, which needs rope_scaling 'none' "
                    f"or 'linear'.")
  fields = _gemma2_hf_fields(config, model_type, act)
  for key in ("rope_parameters", "rope_theta", "rope_scaling"):
    fields.pop(key)
  full = _rope_hf_fields(config)["rope_parameters"]
  local = full if config.rope_local_theta is None else {"rope_type": "default",
                                                        "rope_theta": config.rope_local_theta}
  fields.update(rope_parameters={"sliding_attention": dict(local), "full_attention": full})
  if local["rope_type"] == "default":
    fields.update(rope_theta=config.rope_theta, rope_local_base_freq=local["rope_theta"],
                  rope_scaling=None if full["rope_type"] == "default" else dict(full))
  return fields


def _modernbert_hf_fields(config: ModelConfig, model_type: str, act: str) -> dict[str, Any]:
  """ModernBERT's keys: its layers' kinds and their one window (a local layer sees keys up to
  local_attention // 2 slots away on either side, lmjax's window - 1), each kind's RoPE base in
  v5's rope_parameters and v4's keys, and its prediction head's. v4 readers, which have no
  layer_types, get global_attn_every_n_layers where the layers follow its pattern."""
  _require(config, model_type, type_vocab_size=0, position_offset=0, pooler=False,
           rope_scaling=RopeScaling.NONE, qkv_bias=config.use_bias)
  _require_plain_heads(config, model_type)
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
      layer_types=["full_attention" if w is None else "sliding_attention" for w in windows],
      local_attention=2 * ((config.sliding_window or 65) - 1),
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


def _qwen_sliding_hf_fields(config: ModelConfig) -> dict[str, Any]:
  """Qwen2's and Qwen3's window keys: `layer_types` for transformers v5, and
  `max_window_layers` for readers without layer_types where the sliding layers are the last."""
  if config.sliding_window is None:
    return dict(use_sliding_window=False, sliding_window=None)
  windows = config.layer_windows
  first = next(i for i, w in enumerate(windows) if w is not None)
  fields = dict(use_sliding_window=True, sliding_window=config.sliding_window,
                layer_types=["full_attention" if w is None else "sliding_attention"
                             for w in windows])
  if all(w is not None for w in windows[first:]):
    fields.update(max_window_layers=first)
  return fields


__all__ = ["export_model_type", "model_config_to_hf_config"]
