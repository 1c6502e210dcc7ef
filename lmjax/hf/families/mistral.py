"""Mistral (`mistral`): the rotary pre-norm decoder (graphs.DECODER) without biases, one
sliding window for every layer (transformers' Mistral ignores layer_types)."""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.hf.config_fields import require
from lmjax.hf.families import decoder
from lmjax.hf.families.graphs import DECODER
from lmjax.hf.family import HfFamily, ModelType
from lmjax.model.config import ModelConfig
from lmjax.model.families import Family
from lmjax.model.options import Head

CLASS_DEFAULTS = {**decoder.CLASS_DEFAULTS, "intermediate_size": 14336, "num_key_value_heads": 8,
                  "max_position_embeddings": 4096 * 32, "sliding_window": 4096}


def read(d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  return {**decoder.read(d, qkv_bias=False, use_bias=False), **decoder.read_every_layer_window(d)}


def write(config: ModelConfig, act: str) -> dict[str, Any]:
  require(config, "mistral", qkv_bias=False, use_bias=False)
  return dict(decoder.write(config, "mistral", act),
              **decoder.write_every_layer_window(config, "mistral"))


FAMILY = HfFamily(Family("mistral", DECODER), (ModelType(
    "mistral", "mistral", decoder.architectures("Mistral"), CLASS_DEFAULTS, decoder.KEY_MAP,
    read, write, keys=frozenset({"sliding_window"})),))
