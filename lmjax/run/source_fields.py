"""What a run keeps of its Hugging Face source, and what its export writes beside the
ModelConfig: the source's config.json and generation_config.json (special-token ids, label
names, dropouts, sampling defaults; lmjax.hf.source_config), its tokenizer's special-token ids
and a classifier's label names."""

from __future__ import annotations

import logging
import os
from typing import Any

from lmjax.config import Config
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.files import read_json_object
from lmjax.model import Head
from lmjax.run.run_dir import RunDir
from lmjax.storage import as_path, copy_file

log = logging.getLogger(__name__)

# The source's config.json and generation_config.json, kept for what a ModelConfig does not
# hold (special token ids, label names, dropouts, sampling defaults; lmjax.hf.source_config).
HF_CONFIG_COPY = "hf_config.json"
HF_GENERATION_COPY = "hf_generation_config.json"


def keep_source_config(source: str | os.PathLike, run_path: str | os.PathLike) -> None:
  """Keeps in run directory `run_path` the config.json and generation_config.json of `source`
  (an HF directory, or a run that kept its own source's), unless the run has them already."""
  source, run_path = as_path(source), as_path(run_path)
  for run_name, names in ((HF_CONFIG_COPY, ("config.json", HF_CONFIG_COPY)),
                          (HF_GENERATION_COPY, ("generation_config.json", HF_GENERATION_COPY))):
    found = [source / name for name in names if (source / name).is_file()]
    if not found or (run_path / run_name).exists():
      continue
    try:
      read_json_object(found[0])
    except UserError as e:  # metadata for the export only: not a reason to stop training
      log.warning("%s; an export of this run will not carry its fields.", str(e).rstrip("."))
      continue
    run_path.mkdir(parents=True, exist_ok=True)
    copy_file(found[0], run_path / run_name)


def export_fields(run: RunDir, config: Config, tokenizer: Tokenizer | None = None
                  ) -> dict[str, Any]:
  """What a run's export writes beside its ModelConfig (`export_params`' keyword arguments):
  its source's config.json and generation_config.json where it kept them, and the special-token
  ids of its tokenizer (`tokenizer`, else the run's, where it has one) where the source sets
  none, and a classifier's label names."""
  source = read_json_object(run.path / HF_CONFIG_COPY) or {}
  ids: dict[str, Any] = {}
  pad_token = None
  if tokenizer is None and Tokenizer.readable_in(run.tokenizer_dir):
    tokenizer = Tokenizer.load(run.tokenizer_dir)
  if tokenizer is not None:
    roles = {"bos_token_id": "bos", "eos_token_id": "eos", "pad_token_id": "pad",
             "mask_token_id": "mask", "cls_token_id": "cls", "sep_token_id": "sep"}
    ids = {key: tokenizer.token_to_id(tokenizer.roles[role]) for key, role in roles.items()
           if role in tokenizer.roles and source.get(key) is None}
    if (config.model.head is Head.CLASSIFICATION and config.model.causal
        and "pad" not in tokenizer.roles and source.get("pad_token_id") is None
        and tokenizer.eos_id is not None):
      # Hugging Face's decoder classifiers find each row's last token by pad_token_id: as HF
      # recipes do, the end-of-sequence token pads, in config.json and the tokenizer alike.
      ids["pad_token_id"], pad_token = tokenizer.eos_id, tokenizer.roles["eos"]
  if config.model.position_offset:  # RoBERTa numbers positions from pad_token_id + 1
    ids.pop("pad_token_id", None)
  fields = {"source_config": source or None,
            "generation": read_json_object(run.path / HF_GENERATION_COPY),
            "tokenizer_pad_token": pad_token}
  if config.model.head is not Head.CLASSIFICATION:
    return {**fields, "config_overrides": ids}
  if config.model.causal and {**source, **ids}.get("pad_token_id") is None:
    raise UserError(f"{run.path}'s tokenizer has neither a pad nor an end-of-sequence token, "
                    f"and Hugging Face's decoder classifiers find each row's last token by "
                    f"pad_token_id: train with a tokenizer that has one (data.tokenizer=bpe).")
  names = dict(enumerate(config.data.labels))
  return {**fields, "config_overrides": {**ids, "id2label": names,
                                         "label2id": {name: i for i, name in names.items()}}}
