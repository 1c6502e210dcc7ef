"""The Hugging Face side of the model config's twin: which `model_type`s and classes lmjax
converts, their activation names, and the defaults of `transformers`' config classes (a
config.json leaves out what equals them)."""

from __future__ import annotations

from typing import Any

from lmjax.model.config import Activation, Family, Head

# The `model_type`s we convert, each to the lmjax family whose graph it is.
MODEL_TYPES: dict[str, Family] = {
    "gpt2": Family.GPT2, "bert": Family.BERT, "roberta": Family.BERT,
    "llama": Family.LLAMA, "mistral": Family.MISTRAL, "qwen2": Family.LLAMA,
    "qwen3": Family.QWEN3, "distilbert": Family.DISTILBERT, "gemma2": Family.GEMMA2,
    "gemma3_text": Family.GEMMA3,
    "mixtral": Family.MIXTRAL, "qwen3_moe": Family.QWEN3_MOE, "modernbert": Family.MODERNBERT,
}

# Bidirectional families: their classifiers read a pooled first token.
ENCODERS = (Family.BERT, Family.DISTILBERT, Family.MODERNBERT)

# Per model_type, the head each HF class computes. The class name is `architectures[0]`.
ARCHITECTURES: dict[str, dict[str, Head]] = {
    "gpt2": {"GPT2LMHeadModel": Head.CAUSAL_LM, "GPT2Model": Head.NONE},
    "bert": {"BertForMaskedLM": Head.MASKED_LM, "BertModel": Head.NONE},
    "roberta": {"RobertaForMaskedLM": Head.MASKED_LM, "RobertaModel": Head.NONE},
    "llama": {"LlamaForCausalLM": Head.CAUSAL_LM, "LlamaModel": Head.NONE},
    "mistral": {"MistralForCausalLM": Head.CAUSAL_LM, "MistralModel": Head.NONE},
    "qwen2": {"Qwen2ForCausalLM": Head.CAUSAL_LM, "Qwen2Model": Head.NONE},
    "qwen3": {"Qwen3ForCausalLM": Head.CAUSAL_LM, "Qwen3Model": Head.NONE},
    "distilbert": {"DistilBertForMaskedLM": Head.MASKED_LM, "DistilBertModel": Head.NONE},
    "gemma2": {"Gemma2ForCausalLM": Head.CAUSAL_LM, "Gemma2Model": Head.NONE},
    "mixtral": {"MixtralForCausalLM": Head.CAUSAL_LM, "MixtralModel": Head.NONE},
    "qwen3_moe": {"Qwen3MoeForCausalLM": Head.CAUSAL_LM, "Qwen3MoeModel": Head.NONE},
    "gemma3_text": {"Gemma3ForCausalLM": Head.CAUSAL_LM, "Gemma3TextModel": Head.NONE,
                    "Gemma3TextForSequenceClassification": Head.CLASSIFICATION},
    "modernbert": {"ModernBertForMaskedLM": Head.MASKED_LM, "ModernBertModel": Head.NONE},
}
for _model_type, _prefix in (("gpt2", "GPT2"), ("bert", "Bert"), ("roberta", "Roberta"),
                             ("llama", "Llama"), ("mistral", "Mistral"), ("qwen2", "Qwen2"),
                             ("qwen3", "Qwen3"), ("distilbert", "DistilBert"),
                             ("gemma2", "Gemma2"), ("mixtral", "Mixtral"),
                             ("qwen3_moe", "Qwen3Moe"), ("modernbert", "ModernBert")):
  ARCHITECTURES[_model_type][f"{_prefix}ForSequenceClassification"] = Head.CLASSIFICATION

# HF `hidden_act` / `activation_function` names with the exact lmjax equivalent.
ACTIVATIONS: dict[str, Activation] = {
    "gelu_new": Activation.GELU_TANH, "gelu_pytorch_tanh": Activation.GELU_TANH,
    "gelu": Activation.GELU, "silu": Activation.SILU, "swish": Activation.SILU,
    "relu": Activation.RELU,
}
ACTIVATION_NAMES = {Activation.GELU_TANH: "gelu_new", Activation.GELU: "gelu",
                     Activation.SILU: "silu", Activation.RELU: "relu"}

# The `transformers` v5 class defaults of every key read below (config.json may omit them).
CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                 n_inner=None, activation_function="gelu_new", resid_pdrop=0.1,
                 layer_norm_epsilon=1e-5, initializer_range=0.02, scale_attn_weights=True,
                 scale_attn_by_inverse_layer_idx=False, add_cross_attention=False,
                 tie_word_embeddings=True),
    "bert": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
                 max_position_embeddings=512, type_vocab_size=2, initializer_range=0.02,
                 layer_norm_eps=1e-12, pad_token_id=0, is_decoder=False,
                 add_cross_attention=False, position_embedding_type="absolute",
                 tie_word_embeddings=True),
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=None,
                  head_dim=None, hidden_act="silu", max_position_embeddings=2048,
                  initializer_range=0.02, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  rope_theta=10000.0, attention_bias=False, mlp_bias=False),
    # Its LayerNorms' eps is 1e-12 in the code, not a key.
    "distilbert": dict(vocab_size=30522, max_position_embeddings=512, sinusoidal_pos_embds=False,
                       n_layers=6, n_heads=12, dim=768, hidden_dim=3072, dropout=0.1,
                       activation="gelu", initializer_range=0.02, tie_word_embeddings=True),
}
CLASS_DEFAULTS["roberta"] = {**CLASS_DEFAULTS["bert"], "vocab_size": 50265, "pad_token_id": 1}
CLASS_DEFAULTS["mistral"] = {**CLASS_DEFAULTS["llama"], "intermediate_size": 14336,
                        "num_key_value_heads": 8, "max_position_embeddings": 4096 * 32,
                        "sliding_window": 4096}
CLASS_DEFAULTS["qwen2"] = {**CLASS_DEFAULTS["llama"], "vocab_size": 151936, "intermediate_size": 22016,
                      "max_position_embeddings": 32768, "use_sliding_window": False,
                      "sliding_window": 4096, "max_window_layers": 28}
# Gemma2Config's: every layer type alternates from sliding_attention when layer_types is null.
CLASS_DEFAULTS["gemma2"] = dict(
    vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
    num_attention_heads=8, num_key_value_heads=4, head_dim=256,
    hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192, initializer_range=0.02,
    rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=10000.0, attention_bias=False,
    query_pre_attn_scalar=256, sliding_window=4096, layer_types=None,
    final_logit_softcapping=30.0, attn_logit_softcapping=50.0, use_bidirectional_attention=None)
# Gemma3TextConfig's: every sliding_window_pattern-th layer global (6: five local, then one
# global), the global layers' RoPE base `rope_theta` (with `rope_scaling`) and the local layers'
# `rope_local_base_freq`, the keys of transformers v4; v5 nests both in `rope_parameters`.
CLASS_DEFAULTS["gemma3_text"] = {
    **CLASS_DEFAULTS["gemma2"], "vocab_size": 262208, "max_position_embeddings": 131072,
    "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "rope_scaling": None,
    "rope_parameters": None, "sliding_window_pattern": 6, "final_logit_softcapping": None,
    "attn_logit_softcapping": None, "use_bidirectional_attention": False}
# Qwen3's head_dim defaults to 128 whatever the width, and its attention_bias covers q/k/v and o.
CLASS_DEFAULTS["qwen3"] = {**CLASS_DEFAULTS["qwen2"], "num_key_value_heads": 32, "head_dim": 128,
                           "layer_types": None}
# Mixtral's experts are intermediate_size wide; Qwen3-MoE's moe_intermediate_size (its
# intermediate_size is for dense layers, which lmjax does not build), and its head_dim defaults
# to hidden_size / num_attention_heads (its code's getattr), its window to every layer.
CLASS_DEFAULTS["mixtral"] = {**CLASS_DEFAULTS["mistral"], "sliding_window": None,
                             "rope_theta": 1e6, "num_local_experts": 8, "num_experts_per_tok": 2,
                             "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0}
CLASS_DEFAULTS["qwen3_moe"] = {
    **CLASS_DEFAULTS["qwen3"], "hidden_size": 2048, "intermediate_size": 6144,
    "num_hidden_layers": 24, "num_key_value_heads": 4, "head_dim": None, "max_window_layers": 0,
    "decoder_sparse_step": 1, "moe_intermediate_size": 768, "num_experts_per_tok": 8,
    "num_experts": 128, "norm_topk_prob": False, "router_aux_loss_coef": 0.001,
    "mlp_only_layers": None}
# ModernBertConfig's (v5), with the v4 keys its __post_init__ still reads: every
# global_attn_every_n_layers-th layer global from layer 0, the others local, and each kind's RoPE
# base; v5 writes layer_types and rope_parameters by layer type instead.
CLASS_DEFAULTS["modernbert"] = dict(
    vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22,
    num_attention_heads=12, hidden_activation="gelu", max_position_embeddings=8192,
    initializer_range=0.02, norm_eps=1e-5, norm_bias=False, attention_bias=False,
    attention_dropout=0.0, layer_types=None, rope_parameters=None, rope_scaling=None,
    local_attention=128, global_attn_every_n_layers=3, global_rope_theta=160_000.0,
    local_rope_theta=10_000.0, embedding_dropout=0.0, mlp_bias=False, mlp_dropout=0.0,
    decoder_bias=True, classifier_pooling="cls", classifier_dropout=0.0, classifier_bias=False,
    classifier_activation="gelu", tie_word_embeddings=True)
