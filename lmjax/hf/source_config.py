"""What an export keeps of its source's config.json: the fields a ModelConfig does not hold.

A ModelConfig is the graph only. A Hugging Face config.json also carries what makes the model
behave in `transformers`: special token ids (batched inference of a decoder classifier needs
`pad_token_id`), label names, `problem_type`, each dropout rate, `use_cache`,
`initializer_range` and other keys lmjax never reads. `merge_source_config` writes an export in
its source's words wherever they still describe the exported graph:

    config_json = merge_source_config(model_config_to_hf_config(config), source_config_json)

Each source key is taken (in place of, or beside, what lmjax generated) when reading the result
back still gives the ModelConfig lmjax generated, and each key lmjax generated that the source
does not have (another spelling of the same value: v4's `rope_theta` beside v5's
`rope_parameters`, a derived `head_dim`) is left out when reading gives that ModelConfig
without it. So an unchanged model round-trips its source's config.json field for field, and a
fine-tuned one whose graph changed (a longer context, another window, a new head) keeps its
source's behaviour fields but never a stale graph field. This is a
rule, not a table of keys: every family's key, present or future, is kept or refused by what it
means to the reader.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from lmjax.errors import UserError
from lmjax.hf.config import hf_config_to_model_config

log = logging.getLogger(__name__)

# The export's own: what it is (the class, the type) and how it is stored.
_NEVER_TAKEN = frozenset({"architectures", "model_type", "dtype", "torch_dtype"})


def _reads(hf_config: Mapping[str, Any]):
  try:
    return hf_config_to_model_config(hf_config, scan_layers=True)
  except (UserError, KeyError, TypeError, ValueError):
    return None


def merge_source_config(generated: Mapping[str, Any], source: Mapping[str, Any] | None
                        ) -> dict[str, Any]:
  """`generated` (lmjax's config.json dict for a model) with every key of `source` (the
  config.json the model came from) that reading leaves meaning the same model; `generated`
  as it is when `source` is None or of another model_type."""
  merged = dict(generated)
  if not source or source.get("model_type") != generated.get("model_type"):
    return merged
  target = _reads(generated)
  if target is None:  # lmjax's own export always reads; keep it as it is otherwise
    return merged
  refused = []
  for key, value in source.items():
    if key in _NEVER_TAKEN or (key in merged and merged[key] == value):
      continue
    trial = {**merged, key: value}
    if _reads(trial) == target:
      merged = trial
    else:
      refused.append(key)
  for key in [k for k in merged if k not in source and k not in _NEVER_TAKEN]:
    trial = {k: v for k, v in merged.items() if k != key}
    if _reads(trial) == target:
      merged = trial
  if refused:
    log.info("the source's config.json keys %s describe another graph than the exported one: "
             "written as lmjax's model config has them", ", ".join(refused))
  return merged
