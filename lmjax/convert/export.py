"""`lmjax.to_hf`: a model as a Hugging Face model directory, with what its source said.

    lmjax.to_hf(lmjax.load(src), "out-dir")     # keeps the source's config.json fields
    lmjax.to_hf(model, params, "out-dir", source_config=..., tokenizer_dir=...)
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from lmjax.errors import UserError
from lmjax.hf.engine import write_hf
from lmjax.hf.tokenizer_files import tokenizer_file_names
from lmjax.model import Transformer
from lmjax.run.loader import Loaded

log = logging.getLogger(__name__)


def to_hf(model: Transformer | Loaded, params: Any = None, out_dir: str | os.PathLike | None = None,
          *, dtype: str | None = None, max_shard_size: int = 2 * 2**30,
          tokenizer_dir: str | os.PathLike | None = None,
          source_config: Mapping[str, Any] | None = None,
          config_overrides: Mapping[str, Any] | None = None) -> None:
  """Writes a model as a Hugging Face model directory `out_dir` (new or empty).

      lmjax.to_hf(lmjax.load(src), out_dir)       # with its source's fields and tokenizer
      lmjax.to_hf(model, params, out_dir, source_config=json.load(open("src/config.json")))

  A `Loaded` model (`lmjax.load`) is written with its source's config.json fields, generation
  config and tokenizer files. A bare (model, params) has no source: pass `source_config` (a
  config.json dict) and `tokenizer_dir`, or its config.json lacks the special-token ids, label
  names and dropout rates a ModelConfig does not hold (a warning says so). See
  lmjax.hf.engine.write_hf for dtypes, shards and LoRA.
  """
  generation, pad_token = None, None
  if isinstance(model, Loaded):
    if out_dir is not None:
      raise UserError("to_hf(loaded, out_dir): a loaded model brings its params; pass the output "
                      "directory second.")
    loaded, out_dir = model, params
    model, params = loaded.model, loaded.params
    source_config = loaded.hf_config if source_config is None else source_config
    generation = loaded.export_fields["generation"]
    pad_token = loaded.export_fields["tokenizer_pad_token"]
    if tokenizer_dir is None and tokenizer_file_names(loaded.tokenizer_dir):
      tokenizer_dir = loaded.tokenizer_dir
  if out_dir is None:
    raise UserError("to_hf needs an output directory: to_hf(loaded, out_dir) or "
                    "to_hf(model, params, out_dir).")
  if not source_config:
    log.warning("to_hf: no source config.json given, so %s/config.json names no special-token "
                "ids (pad, bos, eos), label names or dropout rates: export lmjax.load(source) "
                "instead of (model, params), or pass source_config=.", out_dir)
  write_hf(model, params, out_dir, dtype=dtype, max_shard_size=max_shard_size,
           tokenizer_dir=tokenizer_dir, source_config=source_config, generation=generation,
           config_overrides=config_overrides, tokenizer_pad_token=pad_token)


__all__ = ["to_hf"]
