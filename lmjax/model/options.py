"""The model config's named options: one enum per switch with more than two values (a norm, an
activation, …), spelled in YAML by their values. Families are registered names
(lmjax.model.families)."""

from __future__ import annotations

import enum


class Norm(enum.Enum):
  LAYER_NORM = "layer_norm"
  RMS_NORM = "rms_norm"
  # Gemma's RMSNorm: the scale is 1 + w (w stored, initialised to 0) and applied in float32
  # before the cast back, where Llama's casts first and multiplies by w.
  RMS_NORM_PLUS_ONE = "rms_norm_plus_one"


class NormPosition(enum.Enum):
  PRE = "pre"    # x + f(norm(x)); a final norm after the last block (GPT-2, Llama)
  POST = "post"  # norm(x + f(x)); a norm after the embeddings (BERT)


class Activation(enum.Enum):
  GELU_TANH = "gelu_tanh"  # GPT-2's "gelu_new"
  GELU = "gelu"            # exact erf GELU, BERT's "gelu"
  SILU = "silu"
  RELU = "relu"


class Positions(enum.Enum):
  LEARNED = "learned"
  ROTARY = "rotary"


class RopeScaling(enum.Enum):
  NONE = "none"
  LLAMA3 = "llama3"  # Llama 3.1: low frequencies slowed by a factor, smooth between (HF "llama3")
  LINEAR = "linear"  # every frequency divided by the factor (HF "linear"; Gemma 3's global layers)


class Head(enum.Enum):
  CAUSAL_LM = "causal_lm"            # next-token logits
  MASKED_LM = "masked_lm"            # BERT's transform + tied decoder with its own bias
  NONE = "none"                      # final hidden states (HF `last_hidden_state`)
  CLASSIFICATION = "classification"  # sequence labels: encoders from the (pooled) first token,
                                     # decoders from the last real token


class PoolerActivation(enum.Enum):
  TANH = "tanh"  # BERT's pooler, RoBERTa's classifier.dense
  RELU = "relu"  # DistilBERT's pre_classifier


class ClassifierPooling(enum.Enum):
  TOKEN = "token"  # one token's final state: encoders' first, decoders' last real one
  MEAN = "mean"    # the mean over each row's real tokens (ModernBERT's classifier_pooling=mean)


class AttentionImpl(enum.Enum):
  AUTO = "auto"      # cuDNN flash on NVIDIA GPUs, splash on TPUs (where it fits), else XLA
  XLA = "xla"        # einsum + float32 softmax, the reference
  CUDNN = "cudnn"    # jax.nn.dot_product_attention(implementation="cudnn")
  SPLASH = "splash"  # the Pallas TPU splash kernel (interpret mode off TPU: tests only)


class ContextParallel(enum.Enum):
  """How attention runs where the activations' `length` axis is split over devices (mesh.context;
  lmjax.model.ring). Elsewhere it changes nothing."""
  AUTO = "auto"            # ring: scores linear in memory, the causal work balanced (zig-zag)
  ALLGATHER = "allgather"  # each layer all-gathers K/V; local queries against every key at once
  RING = "ring"            # K/V blocks passed around the devices, an online softmax over them


class Remat(enum.Enum):
  NONE = "none"              # keep all activations
  FULL = "full"              # recompute the whole block in the backward pass
  SAVE_DOTS = "save_dots"    # keep matmul outputs without batch dims, recompute the rest


class ParamDtype(enum.Enum):
  FLOAT32 = "float32"
  BFLOAT16 = "bfloat16"
