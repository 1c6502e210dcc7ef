"""BERT (`bert`) and RoBERTa (`roberta`, the alias `model.family: roberta`): the post-norm
encoder with learned positions and token types; RoBERTa's positions are numbered from
pad_token_id + 1 (`position_offset`) and its LM head applies exact GELU."""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.errors import UserError
from lmjax.hf.config_fields import activation_of, refuse, require, require_plain_heads
from lmjax.hf.families.graphs import ENCODER
from lmjax.hf.family import HfFamily, ModelType
from lmjax.hf.key_maps import CLASSIFIER, KeyMap, dense, norm, rule
from lmjax.hf.transforms import BIAS_TO_HEADS, LINEAR_FROM_HEADS, LINEAR_TO_HEADS, TRANSPOSE
from lmjax.model.config import ModelConfig
from lmjax.model.families import Family
from lmjax.model.options import Activation, Head, PoolerActivation

_BODY = (
    rule("token_embedding", "embeddings.word_embeddings.weight"),
    rule("position_embedding", "embeddings.position_embeddings.weight"),
    rule("token_type_embedding", "embeddings.token_type_embeddings.weight"),
    *norm("embedding_norm", "embeddings.LayerNorm"),
    *(r for name in ("query", "key", "value")
      for r in dense(f"layers.{{i}}.attention.{name}", f"encoder.layer.{{i}}.attention.self.{name}",
                     LINEAR_TO_HEADS, BIAS_TO_HEADS)),
    *dense("layers.{i}.attention.out", "encoder.layer.{i}.attention.output.dense",
           LINEAR_FROM_HEADS),
    *norm("layers.{i}.attention_norm", "encoder.layer.{i}.attention.output.LayerNorm"),
    *dense("layers.{i}.mlp.wi", "encoder.layer.{i}.intermediate.dense"),
    *dense("layers.{i}.mlp.wo", "encoder.layer.{i}.output.dense"),
    *norm("layers.{i}.mlp_norm", "encoder.layer.{i}.output.LayerNorm"),
    *dense("pooler", "pooler.dense"),
)
_IGNORED = (r"embeddings\.(position_ids|token_type_ids)",)

BERT_KEY_MAP = KeyMap(
    base_prefix="bert",
    body=_BODY,
    head=(*dense("mlm_transform", "cls.predictions.transform.dense"),
          *norm("mlm_norm", "cls.predictions.transform.LayerNorm"),
          rule("output_bias", "cls.predictions.bias"),
          rule("lm_head.kernel", "cls.predictions.decoder.weight", TRANSPOSE), *CLASSIFIER),
    tied_aliases=("cls.predictions.decoder.weight",),
    # The decoder bias is the same tensor as cls.predictions.bias; the next-sentence head of
    # pre-training checkpoints is dropped by HF's BertForMaskedLM too.
    ignored=(*_IGNORED, r"cls\.predictions\.decoder\.bias", r"cls\.seq_relationship\..*"),
)

# RoBERTa's classifier is two layers: its dense one is lmjax's pooler.
ROBERTA_KEY_MAP = KeyMap(
    base_prefix="roberta",
    body=_BODY,
    head=(*dense("mlm_transform", "lm_head.dense"),
          *norm("mlm_norm", "lm_head.layer_norm"),
          rule("output_bias", "lm_head.bias"),
          rule("lm_head.kernel", "lm_head.decoder.weight", TRANSPOSE),
          *dense("pooler", "classifier.dense", heads=(Head.CLASSIFICATION,)),
          *dense("classifier", "classifier.out_proj")),
    tied_aliases=("lm_head.decoder.weight",),
    ignored=(*_IGNORED, r"lm_head\.decoder\.bias"),
)

BERT_DEFAULTS = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
    max_position_embeddings=512, type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12,
    pad_token_id=0, is_decoder=False, add_cross_attention=False,
    position_embedding_type="absolute", tie_word_embeddings=True)
ROBERTA_DEFAULTS = {**BERT_DEFAULTS, "vocab_size": 50265, "pad_token_id": 1}


def _head_activation(activation: Activation, head: Head) -> Activation | None:
  """model.head_activation of a RoBERTa: its LM head applies exact GELU whatever hidden_act
  (None where that is the model's activation, or where there is no LM head)."""
  return None if activation is Activation.GELU or head is not Head.MASKED_LM else Activation.GELU


def _read(d: Mapping[str, Any], head: Head, offset_positions: bool) -> dict[str, Any]:
  refuse(d, "is_decoder", True, "bidirectional encoders only")
  refuse(d, "add_cross_attention", True, "no cross-attention")
  if d["position_embedding_type"] != "absolute":
    raise UserError(f"position_embedding_type={d['position_embedding_type']!r} is not "
                    f"supported; lmjax converts 'absolute'.")
  activation = activation_of(d["hidden_act"], "hidden_act")
  offset, head_activation = 0, None
  if offset_positions:
    head_activation = _head_activation(activation, head)
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
      pooler=head is Head.NONE)  # as HF's BertModel; the engine then goes by the weights


def _write(config: ModelConfig, act: str, model_type: str) -> dict[str, Any]:
  require(config, model_type, use_bias=True, qkv_bias=True)
  require_plain_heads(config, model_type)
  if model_type == "roberta":
    if config.position_offset < 1:
      raise UserError("a RoBERTa model numbers positions from pad_token_id + 1: set "
                      "model.position_offset (2 for RoBERTa's pad_token_id=1).")
    if config.prediction_head:
      require(config, model_type,
              head_activation=_head_activation(config.activation, config.head))
  else:
    require(config, model_type, position_offset=0)
  if config.pooler:
    require(config, model_type, pooler_activation=PoolerActivation.TANH)
  return dict(hidden_size=config.embed_dim, num_hidden_layers=config.num_layers,
              num_attention_heads=config.num_heads, intermediate_size=config.mlp_dim,
              hidden_act=act, hidden_dropout_prob=config.dropout_rate,
              attention_probs_dropout_prob=0.0,
              max_position_embeddings=config.num_position_embeddings,
              type_vocab_size=config.type_vocab_size, layer_norm_eps=config.norm_eps,
              pad_token_id=config.position_offset - 1 if model_type == "roberta" else 0)


def _architectures(prefix: str) -> dict[str, Head]:
  return {f"{prefix}ForMaskedLM": Head.MASKED_LM, f"{prefix}Model": Head.NONE,
          f"{prefix}ForSequenceClassification": Head.CLASSIFICATION}


BERT = ModelType("bert", "bert", _architectures("Bert"), BERT_DEFAULTS, BERT_KEY_MAP,
                 lambda d, head: _read(d, head, False), lambda c, act: _write(c, act, "bert"),
                 encoder=True, optional_pooler="pooler.dense.weight")
ROBERTA = ModelType("roberta", "bert", _architectures("Roberta"), ROBERTA_DEFAULTS,
                    ROBERTA_KEY_MAP, lambda d, head: _read(d, head, True),
                    lambda c, act: _write(c, act, "roberta"), encoder=True,
                    keys=frozenset({"head_activation"}), optional_pooler="pooler.dense.weight")

FAMILY = HfFamily(
    Family("bert", ENCODER, classifier_defaults={"pooler": True},
           aliases={"roberta": dict(position_offset=2, type_vocab_size=1, norm_eps=1e-5)}),
    (BERT, ROBERTA), export_as=lambda config: "roberta" if config.position_offset else "bert")
