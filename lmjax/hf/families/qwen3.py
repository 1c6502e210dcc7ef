"""Qwen3 (`qwen3`): the rotary pre-norm decoder (graphs.DECODER) with QK-norm (an RMSNorm over
each head's queries and keys), no biases, a window by layer; head_dim 128 whatever the width."""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.hf.config_fields import refuse, require
from lmjax.hf.families import decoder
from lmjax.hf.families.graphs import DECODER
from lmjax.hf.family import GgufArch, HfFamily, ModelType
from lmjax.model.config import ModelConfig
from lmjax.model.families import Family
from lmjax.model.options import Head

CLASS_DEFAULTS = {
    **decoder.CLASS_DEFAULTS, **decoder.LAYERED_WINDOW_DEFAULTS, "vocab_size": 151936,
    "intermediate_size": 22016, "max_position_embeddings": 32768, "num_key_value_heads": 32,
    "head_dim": 128, "layer_types": None}
# Every Qwen3 checkpoint uses rms_norm_eps=1e-6, for its block norms and QK-norms alike.
DEFAULTS = {**DECODER, "qk_norm": True, "norm_eps": 1e-6}


def read(d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  refuse(d, "attention_bias", True, "Qwen3's attention_bias biases q/k/v and o_proj but not the "
         "MLP, and lmjax has one switch for o_proj and the MLP")
  return {**decoder.read(d, qkv_bias=False, use_bias=False), **decoder.read_layered_window(d)}


def write(config: ModelConfig, act: str) -> dict[str, Any]:
  require(config, "qwen3", qkv_bias=False, use_bias=False)
  return dict(decoder.write(config, "qwen3", act), attention_bias=False,
              **decoder.write_layered_window(config))


FAMILY = HfFamily(Family("qwen3", DEFAULTS), (ModelType(
    "qwen3", "qwen3", decoder.architectures("Qwen3"), CLASS_DEFAULTS,
    decoder.with_qk_norms(decoder.KEY_MAP), read, write, keys=frozenset({"sliding_window"}),
    gguf=GgufArch("qwen3")),))
