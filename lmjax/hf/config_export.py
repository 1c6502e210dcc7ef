"""The lmjax -> Hugging Face half of the model config's twin: ModelConfig -> `config.json`
dicts, refusing every switch the target `model_type` cannot express (naming it and the value it
needs). Its reading half is `config.py`; each model type's own keys are its family file's."""

from __future__ import annotations

import dataclasses
from typing import Any

from lmjax.errors import UserError
from lmjax.hf.config_fields import require
from lmjax.hf.family import ModelType, export_type, model_types
from lmjax.hf.tables import ACTIVATION_NAMES
from lmjax.model.config import Head, ModelConfig
from lmjax.model.families import resolve_family

# Switches a model type has fixed at its family's values (else at ModelConfig's defaults)
# unless its config.json has keys for them (ModelType.keys).
CHECKED = ("norm", "norm_position", "gated_mlp", "positions", "causal", "qk_norm", "post_norms",
           "embed_scale", "norm_bias", "embedding_norm", "first_attention_norm", "head_bias",
           "decoder_bias", "classifier_pooling", "classifier_transform", "query_pre_attn_scalar",
           "attn_logit_softcap", "final_logit_softcap", "sliding_window", "rope_local_theta")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


def export_model_type(config: ModelConfig) -> str:
  """The HF model_type `config` exports as."""
  return export_type(config).name


def _check_switches(config: ModelConfig, model_type: ModelType) -> None:
  family = resolve_family(config.family)[0]
  require(config, model_type.name, **{name: family.defaults.get(name, _DEFAULTS[name])
                                      for name in CHECKED if name not in model_type.keys})
  if config.prediction_head and "head_activation" not in model_type.keys:
    require(config, model_type.name, head_activation=None)  # the model's own activation
  if config.moe.enabled and not model_type.experts:
    with_experts = sorted(name for name, t in model_types().items() if t.experts)
    raise UserError(f"model.moe.num_experts={config.moe.num_experts}: a Hugging Face "
                    f"{model_type.name} model has no experts; lmjax exports Mixture-of-Experts "
                    f"models as {' or '.join(with_experts)} (model.family set to one of them).")


def model_config_to_hf_config(config: ModelConfig) -> dict[str, Any]:
  """The config.json dict (with "architectures" and "model_type") of the HF twin of `config`."""
  model_type = export_type(config)
  _check_switches(config, model_type)
  heads = {head: name for name, head in model_type.architectures.items()}
  if config.head not in heads:
    raise UserError(f"model.head={config.head.value!r} has no Hugging Face {model_type.name} "
                    f"counterpart; lmjax exports heads "
                    f"{', '.join(h.value for h in heads)}.")
  if config.activation not in ACTIVATION_NAMES:
    raise UserError(f"model.activation={config.activation.value!r} cannot be exported.")
  out: dict[str, Any] = {"architectures": [heads[config.head]], "model_type": model_type.name,
                         "vocab_size": config.vocab_size,
                         "initializer_range": config.initializer_range,
                         "tie_word_embeddings": config.tie_embeddings}
  out.update(model_type.write(config, ACTIVATION_NAMES[config.activation]))
  if config.head is Head.CLASSIFICATION:
    out.update(_classifier_hf_fields(config, model_type))
  return out


def _classifier_hf_fields(config: ModelConfig, model_type: ModelType) -> dict[str, Any]:
  """A classifier's head as HF has it (the model type's classifier switches), with placeholder
  label names (LABEL_i) that an export replaces by the run's."""
  require(config, model_type.name, **model_type.classifier_switches)
  names = {i: f"LABEL_{i}" for i in range(config.num_labels)}
  return dict(id2label=names, label2id={name: i for i, name in names.items()},
              problem_type="single_label_classification")


__all__ = ["CHECKED", "export_model_type", "model_config_to_hf_config"]
