"""DistilBERT (`distilbert`): BERT's graph under its own names, without token types; its
classifier reads the first token through `pre_classifier` (lmjax's pooler, with ReLU)."""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.hf.config_fields import activation_of, require, require_plain_heads
from lmjax.hf.families.graphs import ENCODER
from lmjax.hf.family import HfFamily, ModelType
from lmjax.hf.key_maps import CLASSIFIER, QKV, KeyMap, dense, norm, rule
from lmjax.hf.transforms import BIAS_TO_HEADS, LINEAR_FROM_HEADS, LINEAR_TO_HEADS, TRANSPOSE
from lmjax.model.config import ModelConfig
from lmjax.model.families import Family
from lmjax.model.options import Head, PoolerActivation

KEY_MAP = KeyMap(
    base_prefix="distilbert",
    body=(
        rule("token_embedding", "embeddings.word_embeddings.weight"),
        rule("position_embedding", "embeddings.position_embeddings.weight"),
        *norm("embedding_norm", "embeddings.LayerNorm"),
        *(r for lm, hf in zip(QKV, ("q_lin", "k_lin", "v_lin"))
          for r in dense(f"layers.{{i}}.{lm}", f"transformer.layer.{{i}}.attention.{hf}",
                         LINEAR_TO_HEADS, BIAS_TO_HEADS)),
        *dense("layers.{i}.attention.out", "transformer.layer.{i}.attention.out_lin",
               LINEAR_FROM_HEADS),
        *norm("layers.{i}.attention_norm", "transformer.layer.{i}.sa_layer_norm"),
        *dense("layers.{i}.mlp.wi", "transformer.layer.{i}.ffn.lin1"),
        *dense("layers.{i}.mlp.wo", "transformer.layer.{i}.ffn.lin2"),
        *norm("layers.{i}.mlp_norm", "transformer.layer.{i}.output_layer_norm"),
    ),
    head=(*dense("mlm_transform", "vocab_transform"),
          *norm("mlm_norm", "vocab_layer_norm"),
          rule("output_bias", "vocab_projector.bias"),
          rule("lm_head.kernel", "vocab_projector.weight", TRANSPOSE),
          *dense("pooler", "pre_classifier"), *CLASSIFIER),
    tied_aliases=("vocab_projector.weight",),
    ignored=(r"embeddings\.position_ids",),
)

# Its LayerNorms' eps is 1e-12 in the code, not a key.
CLASS_DEFAULTS = dict(
    vocab_size=30522, max_position_embeddings=512, sinusoidal_pos_embds=False, n_layers=6,
    n_heads=12, dim=768, hidden_dim=3072, dropout=0.1, activation="gelu",
    initializer_range=0.02, tie_word_embeddings=True)


def read(d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  """Every LayerNorm at eps 1e-12 (fixed in HF's code). `sinusoidal_pos_embds` only decides how
  HF initialises the position table; a checkpoint holds the table, which converts as learned
  positions whatever the flag."""
  return dict(
      vocab_size=d["vocab_size"], num_layers=d["n_layers"], embed_dim=d["dim"],
      num_heads=d["n_heads"], mlp_dim=d["hidden_dim"], max_seq_len=d["max_position_embeddings"],
      norm_eps=1e-12, activation=activation_of(d["activation"], "activation"),
      tie_embeddings=bool(d["tie_word_embeddings"]), dropout_rate=float(d["dropout"]))


def write(config: ModelConfig, act: str) -> dict[str, Any]:
  """Its code fixes the LayerNorms' eps and has no token types, position offset or pooler but
  the classifier's (`pre_classifier`, through ReLU)."""
  require(config, "distilbert", use_bias=True, qkv_bias=True, type_vocab_size=0,
          position_offset=0, norm_eps=1e-12, pooler=config.head is Head.CLASSIFICATION)
  if config.pooler:
    require(config, "distilbert", pooler_activation=PoolerActivation.RELU)
  require_plain_heads(config, "distilbert")
  # lmjax has no attention dropout; its classifier's dropout is the model's.
  return dict(dim=config.embed_dim, n_layers=config.num_layers, n_heads=config.num_heads,
              hidden_dim=config.mlp_dim, activation=act,
              max_position_embeddings=config.max_seq_len, sinusoidal_pos_embds=False,
              dropout=config.dropout_rate, attention_dropout=0.0,
              seq_classif_dropout=config.dropout_rate, qa_dropout=config.dropout_rate,
              pad_token_id=0)


FAMILY = HfFamily(
    Family("distilbert", {**ENCODER, "type_vocab_size": 0,
                          "pooler_activation": PoolerActivation.RELU},
           classifier_defaults={"pooler": True}),
    (ModelType("distilbert", "distilbert",
               {"DistilBertForMaskedLM": Head.MASKED_LM, "DistilBertModel": Head.NONE,
                "DistilBertForSequenceClassification": Head.CLASSIFICATION},
               CLASS_DEFAULTS, KEY_MAP, read, write, encoder=True),))
