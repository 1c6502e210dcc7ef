"""The two base graphs the families build on, as ModelConfig switches: the post-norm encoder
with learned positions (BERT's) and the pre-norm rotary decoder with a gated MLP (Llama's). A
family file takes one and changes what makes it the family."""

from __future__ import annotations

from lmjax.model.options import Activation, Head, Norm, NormPosition, Positions

ENCODER = dict(
    norm=Norm.LAYER_NORM, norm_eps=1e-12, norm_position=NormPosition.POST,
    activation=Activation.GELU, gated_mlp=False, positions=Positions.LEARNED,
    use_bias=True, qkv_bias=True, causal=False, tie_embeddings=True, type_vocab_size=2,
    head=Head.MASKED_LM, classifier_bias=True, qk_norm=False, post_norms=False,
    embed_scale=False)

DECODER = dict(
    norm=Norm.RMS_NORM, norm_eps=1e-5, norm_position=NormPosition.PRE,
    activation=Activation.SILU, gated_mlp=True, positions=Positions.ROTARY,
    use_bias=False, qkv_bias=False, causal=True, tie_embeddings=False, type_vocab_size=0,
    head=Head.CAUSAL_LM, classifier_bias=False, qk_norm=False, post_norms=False,
    embed_scale=False)

__all__ = ["DECODER", "ENCODER"]
