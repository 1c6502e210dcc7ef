"""Llama (`llama`) and Qwen2 (`qwen2`, the alias `model.family: qwen2`): the rotary pre-norm
decoder (graphs.DECODER); Qwen2's has biases on q/k/v only and a window by layer.

In GGUF files (lmjax/hf/gguf/) both keep their names; llama.cpp calls Mistral, SmolLM and the
other Llama-shaped models `llama` too, and stores their q/k rows in another order."""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.hf.config_fields import one_bias_switch, require
from lmjax.hf.families import decoder
from lmjax.hf.families.graphs import DECODER
from lmjax.hf.family import GgufArch, HfFamily, ModelType
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


def _gguf_llama_config(keys: Mapping[str, Any], names: frozenset[str]) -> dict[str, Any]:
  """Biases are there or not: the tensors say."""
  return dict(attention_bias="blk.0.attn_q.bias" in names, mlp_bias="blk.0.ffn_up.bias" in names)


def _gguf_llama_tensor(name: str, values, hf_config: Mapping[str, Any]):
  """llama.cpp's converter interleaves the two rotary halves of each q/k head's rows (its
  `permute`, for its GPT-J-style RoPE); this puts them back in HF's rotate-half order."""
  if ".attn_q." not in name and ".attn_k." not in name:
    return values
  heads = hf_config["num_attention_heads" if ".attn_q." in name else "num_key_value_heads"]
  # [heads, head_dim / 2, 2, …] (pairs) -> [heads, 2, head_dim / 2, …] (halves)
  halves = values.reshape(heads, values.shape[0] // heads // 2, 2, *values.shape[1:])
  return halves.swapaxes(1, 2).reshape(values.shape)


LLAMA = ModelType("llama", "llama", decoder.architectures("Llama"), decoder.CLASS_DEFAULTS,
                  decoder.KEY_MAP, _read_llama, _write_llama,
                  gguf=GgufArch("llama", _gguf_llama_config, _gguf_llama_tensor))
QWEN2 = ModelType(
    "qwen2", "llama", decoder.architectures("Qwen2"),
    {**decoder.CLASS_DEFAULTS, **decoder.LAYERED_WINDOW_DEFAULTS, "vocab_size": 151936,
     "intermediate_size": 22016, "max_position_embeddings": 32768},
    decoder.KEY_MAP, _read_qwen2, _write_qwen2, keys=frozenset({"sliding_window"}),
    gguf=GgufArch("qwen2"))

FAMILY = HfFamily(
    Family("llama", DECODER, aliases={"qwen2": dict(qkv_bias=True)}), (LLAMA, QWEN2),
    export_as=lambda config: "qwen2" if config.qkv_bias and not config.use_bias else "llama")
