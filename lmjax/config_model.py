"""The run config's `model` section -> ModelConfig: a preset's fields, then `model.init_from`'s
architecture, then the family's defaults (an alias's on top, lmjax.model.families), then the
user's keys; a classifier's fields that follow from its head, and the keys of older configs."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

from lmjax.config_schema import build, did_you_mean, plain
from lmjax.errors import UserError
from lmjax.model.config import Head, ModelConfig
from lmjax.model.families import Family, family_names, resolve_family
from lmjax.model.presets import PRESET_NAMES, preset_fields

log = logging.getLogger(__name__)


def model_config_from_dict(raw: Mapping[str, Any], source_fields: Mapping[str, Any] = {}
                           ) -> ModelConfig:
  """ModelConfig from `model.*` values: preset fields, then `model.init_from`'s architecture
  (`source_fields`), then family defaults, then the rest (`init_from` itself is the run
  config's, not the graph's)."""
  raw = dict(raw)
  raw.pop("init_from", None)
  fields: dict[str, Any] = {}
  name = raw.pop("preset", None)
  if name is not None:
    if name not in PRESET_NAMES:
      raise UserError(f"unknown model.preset {name!r}{did_you_mean(str(name), PRESET_NAMES)}; "
                      f"presets are {', '.join(PRESET_NAMES)}.")
    fields = preset_fields(name)
  fields = _merged(fields, source_fields)  # the source's architecture overrides the preset's
  fields = _merged(fields, raw)
  _fold_legacy_hf_model_type(fields)
  if "family" not in fields:
    raise UserError(f"model.family is missing: set it to one of {', '.join(family_names())}, "
                    f"or give model.preset.")
  family, alias_fields = resolve_family(fields["family"])
  fields = _merged({**family.defaults, **alias_fields}, {**fields, "family": family.name})
  _head_fields(fields, raw, family)
  return build(ModelConfig, fields, "model")


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
  """`over` on top of `base`, where a section both set (model.moe, model.lora) merges key by
  key: a preset's or family's experts stay when the user sets only their capacity."""
  section = lambda v: plain(dataclasses.asdict(v)) if dataclasses.is_dataclass(v) else v
  merged = {key: section(value) for key, value in base.items()}
  for key, value in over.items():
    value = section(value)
    if isinstance(merged.get(key), dict) and isinstance(value, Mapping):
      value = {**merged[key], **value}
    merged[key] = value
  return merged


def _head_fields(fields: dict[str, Any], raw: Mapping[str, Any], family: Family) -> None:
  """Fields that follow from the head unless `raw` (the user's own keys) sets them: a
  classifier's label count comes from its labels (config.data.labels), and it has its family's
  classifier defaults (BERT's pooler, as HF's BertForSequenceClassification); other heads have
  no label count."""
  if fields.get("head") not in ("classification", Head.CLASSIFICATION):
    fields["num_labels"] = None
    return
  if "num_labels" not in raw:
    fields["num_labels"] = None
  for key, value in family.classifier_defaults.items():
    if key not in raw:
      fields[key] = value


def _fold_legacy_hf_model_type(fields: dict[str, Any]) -> None:
  """`model.hf_model_type`, which configs (and run directories) written before the model config
  became graph-only carry: a model type that is also a family name (or alias) becomes the
  family (a llama exported as mistral is `family: mistral`); the others follow from the graph."""
  value = fields.pop("hf_model_type", None)
  if value in family_names():
    fields["family"] = value
  elif value is not None:
    log.warning("model.hf_model_type=%r is no longer a setting and is ignored: the exported model "
                "type follows from the graph and model.family.", value)


__all__ = ["model_config_from_dict"]
