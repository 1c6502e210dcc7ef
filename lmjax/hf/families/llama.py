"""Llama (`llama`) and Qwen2 (`qwen2`, the alias `model.family: qwen2`): the rotary pre-norm
decoder (graphs.DECODER); Qwen2's has biases on q/k/v only and a window by layer."""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.hf.config_fields import one_bias_switch, require
from lmjax.hf.families import decoder
from lmjax.hf.families.graphs import DECODER
from lmjax.hf.family import HfFamily, ModelType
from lmjax.model.config import ModelConfig
from lmjax.model.families import Family
from lmjax.model.options import Head


def _read_llama(d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  bias = one_bias_switch(d)
  return decoder.read(d, qkv_bias=bias, use_bias=bias)


def _write_llama(config: ModelConfig, act: str) -> dict[str, Any]:
  require(config, "llama", qkv_bias=config.use_bias)
  return dict(decoder.write(config, "llama", act), attention_bias=config.use_bias,
              mlp_bias=config.use_bias)


def _read_qwen2(d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  return {**decoder.read(d, qkv_bias=True, use_bias=False), **decoder.read_layered_window(d)}


def _write_qwen2(config: ModelConfig, act: str) -> dict[str, Any]:
  require(config, "qwen2", qkv_bias=True, use_bias=False)
  return dict(decoder.write(config, "qwen2", act), **decoder.write_layered_window(config))


LLAMA = ModelType("llama", "llama", decoder.architectures("Llama"), decoder.CLASS_DEFAULTS,
                  decoder.KEY_MAP, _read_llama, _write_llama)
QWEN2 = ModelType(
    "qwen2", "llama", decoder.architectures("Qwen2"),
    {**decoder.CLASS_DEFAULTS, **decoder.LAYERED_WINDOW_DEFAULTS, "vocab_size": 151936,
     "intermediate_size": 22016, "max_position_embeddings": 32768},
    decoder.KEY_MAP, _read_qwen2, _write_qwen2, keys=frozenset({"sliding_window"}))

FAMILY = HfFamily(
    Family("llama", DECODER, aliases={"qwen2": dict(qkv_bias=True)}), (LLAMA, QWEN2),
    export_as=lambda config: "qwen2" if config.qkv_bias and not config.use_bias else "llama")
