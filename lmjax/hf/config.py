"""The model config's Hugging Face twin: `config.json` dicts <-> ModelConfig, for every
registered model type (lmjax/hf/families/, one file per family).

Reading fills keys a config.json leaves out with the defaults of the matching `transformers`
config class (old checkpoints only store what differs), and refuses what the lmjax graph cannot
compute exactly: the error names the key, the value and what is supported. Writing checks the
reverse: every switch of the ModelConfig must be expressible in the target `model_type`. Plain
dicts only: reading and writing the files is lmjax.convert's; the writing half is
`config_export.py` (re-exported here).
"""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.errors import UserError
from lmjax.hf.config_export import export_model_type, model_config_to_hf_config
from lmjax.hf.config_fields import supported
from lmjax.hf.family import ModelType, model_type_of
from lmjax.model.config import Head, ModelConfig


def _head(model_type: ModelType, hf_config: Mapping[str, Any]) -> Head:
  architectures = hf_config.get("architectures") or []
  heads = model_type.architectures
  if not architectures:  # a bare config: decoders are language models, encoders bare bodies
    return Head.NONE if model_type.encoder else Head.CAUSAL_LM
  if architectures[0] not in heads:
    raise UserError(f"architecture {architectures[0]!r} is not supported for model_type "
                    f"{model_type.name!r}; lmjax converts {supported(heads)}.")
  return heads[architectures[0]]


def hf_config_to_model_config(hf_config: Mapping[str, Any], *, scan_layers: bool = True
                              ) -> ModelConfig:
  """The ModelConfig computing the same function as a Hugging Face config.json dict.

  Raises UserError for an unsupported model_type, architecture, activation, RoPE scaling or
  other option, naming it and listing what is supported.
  """
  quantization = hf_config.get("quantization_config")
  if quantization is not None:  # its packed integers would otherwise be read as weights
    method = quantization.get("quant_method") if isinstance(quantization, Mapping) else None
    raise UserError(f"config.json has a quantization_config (quant_method {method!r}): lmjax "
                    f"imports unquantized weights (float32, bfloat16 or float16) only. Use the "
                    f"unquantized model, or dequantize this one first.")
  model_type = model_type_of(hf_config)
  d = {**model_type.class_defaults, **hf_config}  # an explicit null means what it means to HF
  fields: dict[str, Any] = dict(head=_head(model_type, hf_config), scan_layers=scan_layers,
                                initializer_range=float(d["initializer_range"]))
  fields.update(model_type.read(d, fields["head"]))
  if fields["head"] is Head.CLASSIFICATION:
    fields.update(_classifier_fields(model_type, d))
  return ModelConfig.for_family(model_type.family, **fields)


def hf_labels(hf_config: Mapping[str, Any]) -> tuple[str, ...]:
  """A sequence classifier's label names in index order: its `id2label`, else LABEL_0, … for
  its `num_labels` (transformers' defaults)."""
  id2label = hf_config.get("id2label")
  if id2label:
    try:
      by_index = {int(i): str(name) for i, name in id2label.items()}
    except (AttributeError, TypeError, ValueError):
      raise UserError(f"id2label={id2label!r} must map label indices to names.") from None
    if sorted(by_index) != list(range(len(by_index))):
      raise UserError(f"id2label={id2label!r} must name every index 0…{len(by_index) - 1}.")
    return tuple(by_index[i] for i in range(len(by_index)))
  return tuple(f"LABEL_{i}" for i in range(int(hf_config.get("num_labels") or 2)))


def _classifier_fields(model_type: ModelType, d: Mapping[str, Any]) -> dict[str, Any]:
  """A sequence classifier's label count and its model type's classifier switches (encoders:
  a pooled first token, decoders: a bias-free `score` on the last token)."""
  problem = d.get("problem_type")
  if problem not in (None, "single_label_classification"):
    raise UserError(f"problem_type={problem!r} is not supported: lmjax classifiers are "
                    f"single-label (softmax over the labels).")
  num_labels = len(hf_labels(d))
  if num_labels < 2:
    raise UserError(f"num_labels={num_labels} is a regression head; lmjax classifiers have two "
                    f"labels or more.")
  extra = model_type.read_classifier(d) if model_type.read_classifier else {}
  return dict(num_labels=num_labels, **model_type.classifier_switches, **extra)


__all__ = ["export_model_type", "hf_config_to_model_config", "hf_labels",
           "model_config_to_hf_config"]
