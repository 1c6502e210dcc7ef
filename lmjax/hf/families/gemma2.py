"""Gemma 2 (`gemma2`): the Gemma graph (gemma.py) with its defaults: soft-caps on the
attention and output logits, and with layer_types null the even layers (0, 2, …) sliding."""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.hf.config_fields import rope_fields
from lmjax.hf.families import decoder, gemma
from lmjax.hf.family import GgufArch, HfFamily, ModelType
from lmjax.model.config import ModelConfig
from lmjax.model.families import Family
from lmjax.model.options import Head


def read(d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  kinds = d["layer_types"] or ["sliding_attention" if i % 2 == 0 else "full_attention"
                               for i in range(d["num_hidden_layers"])]
  return {**gemma.read(d, kinds, "Gemma 2"), **rope_fields(d)}


def write(config: ModelConfig, act: str) -> dict[str, Any]:
  return gemma.write(config, "gemma2", act)


def read_gguf(keys: Mapping[str, Any], names: frozenset[str]) -> dict[str, Any]:
  """Gemma's keys (gemma.read_gguf; the 27B size has 46 layers) and the soft-caps."""
  caps = {f"{kind}_logit_softcapping": keys[f"{kind}_logit_softcapping"]
          for kind in ("attn", "final") if f"{kind}_logit_softcapping" in keys}
  return {**gemma.read_gguf(keys, large_size_layers=46), **caps}


FAMILY = HfFamily(Family("gemma2", gemma.DEFAULTS), (ModelType(
    "gemma2", "gemma2", decoder.architectures("Gemma2"), gemma.CLASS_DEFAULTS, gemma.KEY_MAP,
    read, write, keys=gemma.KEYS, gguf=GgufArch("gemma2", read_gguf, gemma.gguf_tensor)),))
