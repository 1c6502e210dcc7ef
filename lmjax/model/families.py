"""Each model family's architectural switches: what `ModelConfig.for_family` fills in (every
switch can still be set on its own)."""

from __future__ import annotations

from lmjax.model.moe_config import MoeConfig
from lmjax.model.options import Activation, Family, Head, Norm, NormPosition, PoolerActivation, Positions

FAMILY_DEFAULTS: dict[Family, dict[str, object]] = {
    Family.GPT2: dict(
        norm=Norm.LAYER_NORM, norm_eps=1e-5, norm_position=NormPosition.PRE,
        activation=Activation.GELU_TANH, gated_mlp=False, positions=Positions.LEARNED,
        use_bias=True, qkv_bias=True, causal=True, tie_embeddings=True, type_vocab_size=0,
        head=Head.CAUSAL_LM, classifier_bias=False, qk_norm=False, post_norms=False,
        embed_scale=False),
    Family.BERT: dict(
        norm=Norm.LAYER_NORM, norm_eps=1e-12, norm_position=NormPosition.POST,
        activation=Activation.GELU, gated_mlp=False, positions=Positions.LEARNED,
        use_bias=True, qkv_bias=True, causal=False, tie_embeddings=True, type_vocab_size=2,
        head=Head.MASKED_LM, classifier_bias=True, qk_norm=False, post_norms=False,
        embed_scale=False),
    Family.LLAMA: dict(
        norm=Norm.RMS_NORM, norm_eps=1e-5, norm_position=NormPosition.PRE,
        activation=Activation.SILU, gated_mlp=True, positions=Positions.ROTARY,
        use_bias=False, qkv_bias=False, causal=True, tie_embeddings=False, type_vocab_size=0,
        head=Head.CAUSAL_LM, classifier_bias=False, qk_norm=False, post_norms=False,
        embed_scale=False),
}
FAMILY_DEFAULTS[Family.MISTRAL] = FAMILY_DEFAULTS[Family.LLAMA]
FAMILY_DEFAULTS[Family.DISTILBERT] = {**FAMILY_DEFAULTS[Family.BERT], "type_vocab_size": 0,
                                      "pooler_activation": PoolerActivation.RELU}
# Every Qwen3 checkpoint uses rms_norm_eps=1e-6, for its block norms and QK-norms alike.
FAMILY_DEFAULTS[Family.QWEN3] = {**FAMILY_DEFAULTS[Family.LLAMA], "qk_norm": True, "norm_eps": 1e-6}
# Gemma 2's soft-caps are transformers' Gemma2Config defaults, which every released size uses.
FAMILY_DEFAULTS[Family.GEMMA2] = {
    **FAMILY_DEFAULTS[Family.LLAMA], "norm": Norm.RMS_NORM_PLUS_ONE, "norm_eps": 1e-6,
    "activation": Activation.GELU_TANH, "tie_embeddings": True, "post_norms": True,
    "embed_scale": True, "attn_logit_softcap": 50.0, "final_logit_softcap": 30.0}
# Gemma3TextConfig's defaults: no soft-caps, and its global layers' RoPE base (the local layers'
# 10,000 is model.rope_local_theta, which needs the sliding window the presets give).
FAMILY_DEFAULTS[Family.GEMMA3] = {
    **FAMILY_DEFAULTS[Family.GEMMA2], "qk_norm": True, "attn_logit_softcap": None,
    "final_logit_softcap": None, "rope_theta": 1_000_000.0}

# The released MoE models' routing (Mixtral 8x7B; Qwen3-30B-A3B, whose norm_topk_prob is true).
FAMILY_DEFAULTS[Family.MIXTRAL] = {**FAMILY_DEFAULTS[Family.LLAMA],
                                   "moe": MoeConfig(num_experts=8, experts_per_token=2)}
FAMILY_DEFAULTS[Family.QWEN3_MOE] = {**FAMILY_DEFAULTS[Family.QWEN3],
                                     "moe": MoeConfig(num_experts=128, experts_per_token=8)}
# ModernBERT's: pre-norm LayerNorms without biases, also after the embeddings but not before
# layer 0's attention, and one prediction head (dense, activation, norm) for the MLM decoder and
# the classifier alike. Its global layers' RoPE base is ModernBertConfig's; the local layers'
# 10,000 is model.rope_local_theta, which needs the sliding window the presets give.
FAMILY_DEFAULTS[Family.MODERNBERT] = {
    **FAMILY_DEFAULTS[Family.LLAMA], "norm": Norm.LAYER_NORM, "norm_bias": False,
    "activation": Activation.GELU, "causal": False, "tie_embeddings": True,
    "head": Head.MASKED_LM, "classifier_bias": True, "embedding_norm": True,
    "first_attention_norm": False, "head_bias": False, "classifier_transform": True,
    "rope_theta": 160_000.0}
MOE_FAMILIES = (Family.MIXTRAL, Family.QWEN3_MOE)
