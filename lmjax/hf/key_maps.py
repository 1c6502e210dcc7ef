"""One small table per Hugging Face family: lmjax param paths <-> HF tensor names.

A rule reads: these lmjax params (dotted paths, `{i}` for the layer) are this HF tensor after
`transform`. A table lists every param any variant of the family can have; the engine keeps the
rules whose params the model at hand has (no biases in Llama, an `lm_head` only when untied,
a pooler only when present), so one table covers all heads and options of a family. A head
rule may be limited to some heads (`heads`); head rules win over body rules for the same params
(RoBERTa's classifier holds the pooler as `classifier.dense`).

Body names are relative to the HF base model; head models nest the body under `base_prefix`
(`transformer.`, `bert.`, `roberta.`, `distilbert.`, `model.`) while bare base models
(GPT2Model, BertModel, as sentence-embedding checkpoints are saved) do not. Head names are
absolute.
"""

from __future__ import annotations

import dataclasses

from lmjax.hf.transforms import (BIAS_TO_HEADS, CONV1D_FROM_HEADS, FUSED_GATE_UP_BIAS,
                                      FUSED_QKV_BIAS, FUSED_QKV_KERNEL, IDENTITY,
                                      LINEAR_FROM_HEADS, LINEAR_FUSED_GATE_UP_KERNEL,
                                      LINEAR_FUSED_QKV_KERNEL, LINEAR_TO_HEADS, TRANSPOSE,
                                      Transform)
from lmjax.model import Head


@dataclasses.dataclass(frozen=True)
class Rule:
  lmjax: tuple[str, ...]  # dotted lmjax param paths, e.g. "layers.{i}.attention.query.kernel"
  hf: str                 # HF tensor name, e.g. "h.{i}.attn.c_attn.weight"
  transform: Transform
  heads: frozenset[Head] = frozenset()  # the heads it applies to; empty: all
  # Per-layer rules: the first layer HF has the tensor in (ModernBERT's layer 0 has no attention
  # norm); the lmjax params' slices of the layers before it are left unused, zero on import.
  first_layer: int = 0


def rule(lmjax: str | tuple[str, ...], hf: str, transform: Transform = IDENTITY,
         heads: tuple[Head, ...] = (), first_layer: int = 0) -> Rule:
  return Rule((lmjax,) if isinstance(lmjax, str) else lmjax, hf, transform, frozenset(heads),
              first_layer)


def norm(lmjax: str, hf: str, first_layer: int = 0) -> list[Rule]:
  """A norm's scale (HF `weight`) and, for LayerNorm, its bias; RMSNorm has no bias param."""
  return [rule(f"{lmjax}.scale", f"{hf}.weight", first_layer=first_layer),
          rule(f"{lmjax}.bias", f"{hf}.bias", first_layer=first_layer)]


def dense(lmjax: str, hf: str, transform: Transform = TRANSPOSE,
          bias: Transform = IDENTITY, heads: tuple[Head, ...] = ()) -> list[Rule]:
  """A projection's kernel and (when the model has one) bias."""
  return [rule(f"{lmjax}.kernel", f"{hf}.weight", transform, heads),
          rule(f"{lmjax}.bias", f"{hf}.bias", bias, heads)]


# Sequence classifiers: BERT's `classifier`, RoBERTa's two-layer head (its dense layer is the
# pooler), the decoders' bias-free `score`.
_CLASSIFIER = tuple(dense("classifier", "classifier"))
_ROBERTA_CLASSIFIER = (*dense("pooler", "classifier.dense", heads=(Head.CLASSIFICATION,)),
                       *dense("classifier", "classifier.out_proj"))
_SCORE = tuple(dense("classifier", "score"))


@dataclasses.dataclass(frozen=True)
class KeyMap:
  base_prefix: str             # HF `base_model_prefix`
  body: tuple[Rule, ...]       # names relative to the base model
  head: tuple[Rule, ...]       # absolute names
  tied_aliases: tuple[str, ...] = ()  # names a checkpoint may hold as copies of tied weights
  ignored: tuple[str, ...] = ()       # regexes: buffers and heads HF itself drops on load


_QKV = ("attention.query", "attention.key", "attention.value")

GPT2 = KeyMap(
    base_prefix="transformer",
    body=(
        rule("token_embedding", "wte.weight"),
        rule("position_embedding", "wpe.weight"),
        *norm("layers.{i}.attention_norm", "h.{i}.ln_1"),
        rule(tuple(f"layers.{{i}}.{p}.kernel" for p in _QKV), "h.{i}.attn.c_attn.weight",
             FUSED_QKV_KERNEL),
        rule(tuple(f"layers.{{i}}.{p}.bias" for p in _QKV), "h.{i}.attn.c_attn.bias",
             FUSED_QKV_BIAS),
        *dense("layers.{i}.attention.out", "h.{i}.attn.c_proj", CONV1D_FROM_HEADS),
        *norm("layers.{i}.mlp_norm", "h.{i}.ln_2"),
        *dense("layers.{i}.mlp.wi", "h.{i}.mlp.c_fc", IDENTITY),   # Conv1D: already in x out
        *dense("layers.{i}.mlp.wo", "h.{i}.mlp.c_proj", IDENTITY),
        *norm("final_norm", "ln_f"),
    ),
    head=(rule("lm_head.kernel", "lm_head.weight", TRANSPOSE), *_SCORE),
    tied_aliases=("lm_head.weight",),
    ignored=(r"h\.\d+\.attn\.(bias|masked_bias)",),  # causal-mask buffers of old checkpoints
)

_BERT_BODY = (
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
_BERT_IGNORED = (r"embeddings\.(position_ids|token_type_ids)",)

BERT = KeyMap(
    base_prefix="bert",
    body=_BERT_BODY,
    head=(*dense("mlm_transform", "cls.predictions.transform.dense"),
          *norm("mlm_norm", "cls.predictions.transform.LayerNorm"),
          rule("output_bias", "cls.predictions.bias"),
          rule("lm_head.kernel", "cls.predictions.decoder.weight", TRANSPOSE), *_CLASSIFIER),
    tied_aliases=("cls.predictions.decoder.weight",),
    # The decoder bias is the same tensor as cls.predictions.bias; the next-sentence head of
    # pre-training checkpoints is dropped by HF's BertForMaskedLM too.
    ignored=(*_BERT_IGNORED, r"cls\.predictions\.decoder\.bias", r"cls\.seq_relationship\..*"),
)

ROBERTA = KeyMap(
    base_prefix="roberta",
    body=_BERT_BODY,
    head=(*dense("mlm_transform", "lm_head.dense"),
          *norm("mlm_norm", "lm_head.layer_norm"),
          rule("output_bias", "lm_head.bias"),
          rule("lm_head.kernel", "lm_head.decoder.weight", TRANSPOSE), *_ROBERTA_CLASSIFIER),
    tied_aliases=("lm_head.decoder.weight",),
    ignored=(*_BERT_IGNORED, r"lm_head\.decoder\.bias"),
)

DISTILBERT = KeyMap(  # BERT's graph under its own names; `pre_classifier` is the pooler
    base_prefix="distilbert",
    body=(
        rule("token_embedding", "embeddings.word_embeddings.weight"),
        rule("position_embedding", "embeddings.position_embeddings.weight"),
        *norm("embedding_norm", "embeddings.LayerNorm"),
        *(r for lm, hf in zip(_QKV, ("q_lin", "k_lin", "v_lin"))
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
          *dense("pooler", "pre_classifier"), *_CLASSIFIER),
    tied_aliases=("vocab_projector.weight",),
    ignored=(r"embeddings\.position_ids",),
)

LLAMA = KeyMap(  # also Mistral and Qwen2: the same names, biases where the model has them
    base_prefix="model",
    body=(
        rule("token_embedding", "embed_tokens.weight"),
        *norm("layers.{i}.attention_norm", "layers.{i}.input_layernorm"),
        *(r for lm, hf in zip(_QKV, ("q_proj", "k_proj", "v_proj"))
          for r in dense(f"layers.{{i}}.{lm}", f"layers.{{i}}.self_attn.{hf}", LINEAR_TO_HEADS,
                         BIAS_TO_HEADS)),
        *dense("layers.{i}.attention.out", "layers.{i}.self_attn.o_proj", LINEAR_FROM_HEADS),
        *norm("layers.{i}.mlp_norm", "layers.{i}.post_attention_layernorm"),
        *dense("layers.{i}.mlp.wi_gate", "layers.{i}.mlp.gate_proj"),
        *dense("layers.{i}.mlp.wi_up", "layers.{i}.mlp.up_proj"),
        *dense("layers.{i}.mlp.wo", "layers.{i}.mlp.down_proj"),
        *norm("final_norm", "norm"),
    ),
    head=(rule("lm_head.kernel", "lm_head.weight", TRANSPOSE), *_SCORE),
    tied_aliases=("lm_head.weight",),
    ignored=(r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
)

QWEN3 = dataclasses.replace(LLAMA, body=(  # Llama's names and each layer's QK-norms
    *LLAMA.body,
    *norm("layers.{i}.attention.query_norm", "layers.{i}.self_attn.q_norm"),
    *norm("layers.{i}.attention.key_norm", "layers.{i}.self_attn.k_norm"),
))

GEMMA2 = dataclasses.replace(LLAMA, body=(  # Llama's names, with four norms in each layer
    *(r for r in LLAMA.body if not r.lmjax[0].startswith("layers.{i}.mlp_norm.")),
    *norm("layers.{i}.attention_post_norm", "layers.{i}.post_attention_layernorm"),
    *norm("layers.{i}.mlp_norm", "layers.{i}.pre_feedforward_layernorm"),
    *norm("layers.{i}.mlp_post_norm", "layers.{i}.post_feedforward_layernorm"),
))

GEMMA3 = dataclasses.replace(GEMMA2, body=(  # Gemma 2's names and each layer's QK-norms
    *GEMMA2.body,
    *norm("layers.{i}.attention.query_norm", "layers.{i}.self_attn.q_norm"),
    *norm("layers.{i}.attention.key_norm", "layers.{i}.self_attn.k_norm"),
))

# Mixture-of-Experts decoders: their attention's names, a router and each expert's gated MLP in
# tensors of its own (`{e}`), as every checkpoint on the Hub stores them and as transformers v5
# writes them (its fused in-memory layout is converted on load and back on save).
_NOT_MLP = lambda body: tuple(r for r in body if not r.lmjax[0].startswith("layers.{i}.mlp."))


def _experts(moe: str, gate: str, up: str, down: str) -> tuple[Rule, ...]:
  expert = f"layers.{{i}}.{moe}.experts.{{e}}"
  return (rule("layers.{i}.mlp.router", f"layers.{{i}}.{moe}.gate.weight", TRANSPOSE),
          rule("layers.{i}.mlp.experts_gate", f"{expert}.{gate}.weight", TRANSPOSE),
          rule("layers.{i}.mlp.experts_up", f"{expert}.{up}.weight", TRANSPOSE),
          rule("layers.{i}.mlp.experts_down", f"{expert}.{down}.weight", TRANSPOSE))


MIXTRAL = dataclasses.replace(LLAMA, body=(
    *_NOT_MLP(LLAMA.body), *_experts("block_sparse_moe", "w1", "w3", "w2")))
QWEN3_MOE = dataclasses.replace(QWEN3, body=(
    *_NOT_MLP(QWEN3.body), *_experts("mlp", "gate_proj", "up_proj", "down_proj")))

MODERNBERT = KeyMap(  # fused q/k/v and gate/up; its `head` is the prediction head of both heads
    base_prefix="model",
    body=(
        rule("token_embedding", "embeddings.tok_embeddings.weight"),
        *norm("embedding_norm", "embeddings.norm"),
        *norm("layers.{i}.attention_norm", "layers.{i}.attn_norm", first_layer=1),
        rule(tuple(f"layers.{{i}}.{p}.kernel" for p in _QKV), "layers.{i}.attn.Wqkv.weight",
             LINEAR_FUSED_QKV_KERNEL),
        rule(tuple(f"layers.{{i}}.{p}.bias" for p in _QKV), "layers.{i}.attn.Wqkv.bias",
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
          rule("lm_head.kernel", "decoder.weight", TRANSPOSE), *_CLASSIFIER),
    tied_aliases=("decoder.weight",),
)

KEY_MAPS: dict[str, KeyMap] = {"gpt2": GPT2, "bert": BERT, "roberta": ROBERTA, "llama": LLAMA,
                               "mistral": LLAMA, "qwen2": LLAMA, "qwen3": QWEN3,
                               "distilbert": DISTILBERT, "gemma2": GEMMA2,
                               "gemma3_text": GEMMA3,
                               "mixtral": MIXTRAL, "qwen3_moe": QWEN3_MOE,
                               "modernbert": MODERNBERT}

__all__ = ["KEY_MAPS", "KeyMap", "Rule"]
