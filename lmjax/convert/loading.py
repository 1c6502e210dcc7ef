"""A model and its tokenizer from wherever a command points: a run or an HF directory.

    m = lmjax.load("runs/demo")                       # a run dir, an HF dir or a cached hub id
    m.model, m.params, m.tokenizer, m.config, m.chat_template, m.source, m.hf_config
    lmjax.to_hf(m, "out-dir")                         # keeps the source's config.json fields
    loaded = load_model(run_dir="runs/demo")          # or hf_dir="llama-dir", step=, dtype=

Every inference command (generate, eval, score, eval-harness) loads through here, so they read
the same weights, tokenizer and `generation_config.json` the same way; an HF directory may be a hub id in the local
cache (lmjax.hf.hub).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from lmjax.config import is_run_directory
from lmjax.convert.base_model import load_run
from lmjax.convert.runs import export_fields
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.hf.engine import from_hf, read_hf_config, write_hf
from lmjax.hf.hub import resolve_hf_dir
from lmjax.hf.tokenizer_files import tokenizer_file_names
from lmjax.model import ModelConfig, Transformer
from lmjax.run import RunDir

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A model with what came with it: params, tokenizer, and its source's Hugging Face fields."""

  model: Transformer
  params: Any
  tokenizer: Tokenizer | None  # None only from `load` of a directory without tokenizer files
  directory: pathlib.Path  # the run or HF directory it came from
  is_run: bool
  # What a ModelConfig does not hold, for an export (lmjax.hf.source_config): the source's
  # config.json (a run's: the one it was imported or fine-tuned from, with its tokenizer's
  # special-token ids and its label names), its generation_config.json, and the pad token a
  # decoder classifier's exported tokenizer must name.
  hf_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  hf_generation_config: Mapping[str, Any] | None = None
  tokenizer_pad_token: str | None = None

  @property
  def config(self) -> ModelConfig:
    """The model's config (the graph)."""
    return self.model.config

  @property
  def source(self) -> str:
    """Where it came from: the run or Hugging Face directory."""
    return str(self.directory)

  @property
  def tokenizer_dir(self) -> pathlib.Path:
    """The directory holding the tokenizer's files."""
    return RunDir(self.directory).tokenizer_dir if self.is_run else self.directory

  @property
  def chat_template(self) -> str | None:
    """The chat template source `--chat` renders with: a run's data.chat_template, else its
    tokenizer directory's (or the HF directory's) own (lmjax.data.tokenize.chat.load_template)."""
    if not self.is_run:
      return str(self.directory)
    return RunDir(self.directory).require_config().data.chat_template or str(self.tokenizer_dir)

  def generation_config(self) -> dict[str, Any]:
    """The directory's `generation_config.json` (HF's sampling defaults), {} when absent."""
    path = self.directory / "generation_config.json"
    if not path.is_file():
      return {}
    try:
      settings = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      raise UserError(f"{path} is not readable JSON ({e}): fix or delete it.") from None
    if not isinstance(settings, dict):
      raise UserError(f"{path} holds a {type(settings).__name__}, not a JSON object: fix or "
                      f"delete it.")
    return settings


def load_model(*, run_dir: str | pathlib.Path | None = None,
               hf_dir: str | pathlib.Path | None = None, step: int | None = None,
               dtype: str = "float32", require_tokenizer: bool = True) -> Loaded:
  """The model, params and tokenizer of run `run_dir` (checkpoint `step`, default the latest) or
  of HF directory `hf_dir`. `dtype="bfloat16"` casts the floating-point params and computes in
  bfloat16 (half the memory; on CPU often slower). Without `require_tokenizer`, a directory
  without tokenizer files gives `tokenizer=None`."""
  if (run_dir is None) == (hf_dir is None):
    raise UserError("give exactly one of a run directory (--run-dir) or a Hugging Face "
                    "directory (--hf).")
  if dtype not in DTYPES:
    raise UserError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
  if hf_dir is not None:
    if step is not None:
      raise UserError(f"--step {step} selects a run's checkpoint, but {hf_dir} is a Hugging "
                      f"Face directory: drop --step.")
    hf_dir = resolve_hf_dir(hf_dir)
    model, params = from_hf(hf_dir)
    directory, is_run, tokenizer_dir = pathlib.Path(hf_dir), False, pathlib.Path(hf_dir)
  else:
    model, params = load_run(run_dir, step=step)
    run = RunDir(run_dir)
    directory, is_run, tokenizer_dir = run.path, True, run.tokenizer_dir
  tokenizer = (Tokenizer.from_file(tokenizer_dir)
               if require_tokenizer or Tokenizer.readable_in(tokenizer_dir) else None)
  if dtype == "bfloat16":
    model = Transformer(model.config, jnp.bfloat16)
    params = jax.tree.map(
        lambda a: a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
  return Loaded(model, params, tokenizer, directory, is_run)


def load(source: str | os.PathLike, *, step: int | None = None, dtype: str = "float32"
         ) -> Loaded:
  """The model at `source`: a run directory (checkpoint `step`, default the latest), a Hugging
  Face model directory or a hub id in the local cache. The result carries the params, the
  tokenizer and what the source says beyond the graph (`hf_config`), so that
  `to_hf(loaded, out_dir)` writes back the special-token ids, label names, dropout rates and
  generation defaults it came with."""
  if is_run_directory(source):
    loaded = load_model(run_dir=source, step=step, dtype=dtype, require_tokenizer=False)
    run = RunDir(source)
    fields = export_fields(run, run.require_config(), loaded.tokenizer)
    hf_config = {**(fields["source_config"] or {}), **fields["config_overrides"]}
    return dataclasses.replace(loaded, hf_config=hf_config,
                               hf_generation_config=fields["generation"],
                               tokenizer_pad_token=fields["tokenizer_pad_token"])
  loaded = load_model(hf_dir=source, step=step, dtype=dtype, require_tokenizer=False)
  generation = loaded.generation_config() or None
  return dataclasses.replace(loaded, hf_config=read_hf_config(loaded.directory),
                             hf_generation_config=generation)


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
    generation, pad_token = loaded.hf_generation_config, loaded.tokenizer_pad_token
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
