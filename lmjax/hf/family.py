"""The seam between the generic Hugging Face machinery and the model families.

A family file (lmjax/hf/families/<family>.py) describes one lmjax family and the HF
`model_type`s whose graph it is, and registers them here with `register`:

    register(HfFamily(Family("gpt2", defaults), (ModelType("gpt2", ...),)))

The config readers and writers (`config.py`, `config_export.py`), the key-map engine, the
PEFT adapters and the GGUF import (lmjax/hf/gguf/) look a model type up here and call what it
gives; none of them names a family. Registering also makes the family a `model.family` value
(lmjax.model.families).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from lmjax.errors import UserError
from lmjax.hf.key_maps import KeyMap
from lmjax.model.config import Head, ModelConfig
from lmjax.model.families import Family, register_family, resolve_family

# config.json (with the class defaults filled in) and the head it computes -> ModelConfig fields.
Reader = Callable[[Mapping[str, Any], Head], dict[str, Any]]
# A ModelConfig and its activation's HF name -> the model type's own config.json keys.
Writer = Callable[[ModelConfig, str], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class GgufArch:
  """How llama.cpp writes a model type into a GGUF file (lmjax/hf/gguf/): its
  `general.architecture`, the config.json keys its metadata implies beyond the ones every
  decoder shares, and what its converter did to tensor values, undone on import."""

  name: str                            # the `general.architecture` of its files
  # (the architecture's own metadata keys without their "<name>." prefix, e.g.
  # "attention.sliding_window", and the file's tensor names) -> config.json keys.
  config: Callable[[Mapping[str, Any], frozenset[str]], dict[str, Any]] = lambda keys, names: {}
  # (GGUF tensor name, its values [out, in] float32, the config.json dict) -> the values HF has.
  tensor: Callable[[str, Any, Mapping[str, Any]], Any] | None = None


@dataclasses.dataclass(frozen=True)
class ModelType:
  """One Hugging Face `model_type`: its classes, config.json keys both ways, tensor names."""

  name: str                            # config.json "model_type"
  family: str                          # the lmjax family whose graph it is
  architectures: Mapping[str, Head]    # HF class name (`architectures[0]`) -> the head it has
  class_defaults: Mapping[str, Any]    # its transformers config class's defaults of the keys read
  key_map: KeyMap
  read: Reader
  write: Writer
  encoder: bool = False                # bidirectional: a bare config.json is a headless body
  # The switches (of config_export.CHECKED) its config.json can set; the others must keep the
  # family's values to export.
  keys: frozenset[str] = frozenset()
  experts: bool = False                # a Mixture-of-Experts model type
  # A sequence classifier's switches (default: encoders read a pooled first token through a
  # biased classifier, decoders the last token through a bias-free `score`) and the extra fields
  # its config.json gives it (ModernBERT's classifier_pooling).
  classifier: Mapping[str, Any] | None = None
  read_classifier: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
  # A bare model's pooler tensor, there or not (BertModel saved with or without its pooler).
  optional_pooler: str | None = None
  gguf: GgufArch | None = None         # how llama.cpp's GGUF files hold it; None: not imported

  @property
  def classifier_switches(self) -> Mapping[str, Any]:
    if self.classifier is not None:
      return self.classifier
    return dict(pooler=self.encoder, classifier_bias=self.encoder)


@dataclasses.dataclass(frozen=True)
class HfFamily:
  """What a family file registers: the family and its HF model types, the one it exports as
  first (`export_as` picks another by the config, e.g. RoBERTa's offset positions)."""

  family: Family
  model_types: tuple[ModelType, ...]
  export_as: Callable[[ModelConfig], str] | None = None


_FAMILIES: dict[str, HfFamily] = {}
_MODEL_TYPES: dict[str, ModelType] = {}


def register(hf_family: HfFamily) -> None:
  """Makes `hf_family` a `model.family` value and its model types convertible."""
  for model_type in hf_family.model_types:
    taken = _MODEL_TYPES.get(model_type.name)
    if taken is not None and taken != model_type:
      raise ValueError(f"model_type {model_type.name!r} is already registered by family "
                       f"{taken.family!r}.")
  register_family(hf_family.family)
  _FAMILIES[hf_family.family.name] = hf_family
  for model_type in hf_family.model_types:
    _MODEL_TYPES[model_type.name] = model_type


def model_types() -> Mapping[str, ModelType]:
  """Every registered model type by name."""
  return dict(_MODEL_TYPES)


def model_type_named(name: Any) -> ModelType:
  if name not in _MODEL_TYPES:
    raise UserError(f"Hugging Face model_type {name!r} is not supported; lmjax converts "
                    f"{', '.join(sorted(_MODEL_TYPES))}.")
  return _MODEL_TYPES[name]


def model_type_of(hf_config: Mapping[str, Any]) -> ModelType:
  """The checked model type of a config.json dict."""
  return model_type_named(hf_config.get("model_type"))


def export_type(config: ModelConfig) -> ModelType:
  """The model type `config` exports as."""
  family = resolve_family(config.family)[0]
  hf_family = _FAMILIES.get(family.name)
  if hf_family is None:
    raise UserError(f"model.family={config.family!r} has no Hugging Face format registered; "
                    f"lmjax exports {', '.join(sorted(_FAMILIES))}.")
  if hf_family.export_as is None:
    return hf_family.model_types[0]
  return model_type_named(hf_family.export_as(config))


__all__ = ["GgufArch", "HfFamily", "ModelType", "export_type", "model_type_named", "model_type_of",
           "model_types", "register"]
