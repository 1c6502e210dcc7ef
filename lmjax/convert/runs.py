"""Conversion between Hugging Face directories and lmjax run directories.

    lmjax convert hf-to-lmjax HF_DIR RUN_DIR      -> hf_to_run
    lmjax convert lmjax-to-hf RUN_DIR HF_DIR      -> run_to_hf

An imported run directory is an ordinary one (config.yaml, tokenizer/, checkpoints/0/) whose
checkpoint holds params only (no optimizer state yet): `lmjax.load`, `generate`,
`fill-mask`, export, and `model.init_from` for fine-tuning all read it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from lmjax.config import Config, TrainConfig
from lmjax.data.config import DataConfig
from lmjax.data.tokenize.sentencepiece_model import model_file_in
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.files import check_new_directory, staged_directory
from lmjax.hf.adapters import export_peft
from lmjax.hf.bindings import unflatten
from lmjax.hf.config import hf_labels
from lmjax.hf.engine import HfWeights, export_params
from lmjax.hf.hub import resolve_hf_dir
from lmjax.hf.peft_import import read_peft
from lmjax.hf.tokenizer_files import copy_tokenizer_files
from lmjax.model import Head, ModelConfig, param_shapes
from lmjax.model.quantize import dequantized_view, is_quantized
from lmjax.model.trainable import frozen_dtype, split
from lmjax.run.checkpointer import Checkpointer
from lmjax.run.loader import check_vocabulary, frozen_params
from lmjax.run.record import CheckpointRecord, TrainState
from lmjax.run.restore import open_checkpoints, restore_step
from lmjax.run.run_dir import RunDir
from lmjax.run.source_fields import export_fields, keep_source_config
from lmjax.run.streamed_arrays import DeferredArray
from lmjax.version import __version__

log = logging.getLogger(__name__)



def hf_to_run(hf_dir: str | os.PathLike, run_dir: str | os.PathLike, *,
              allow_pickle: bool = False, scan_layers: bool = True,
              adapter: str | os.PathLike | None = None) -> Config:
  """Imports a Hugging Face model directory as a new run directory; returns the run's config.

  Each param is made from its HF tensors only when the checkpoint writes it: memory holds one
  param (a stacked one: all its layers) and its compressed copy, not the model. `adapter`, a
  PEFT LoRA adapter directory for this model, is attached (lmjax.hf.peft_import).
  """
  hf_dir = resolve_hf_dir(hf_dir, what="HF_DIR")
  with HfWeights(hf_dir, scan_layers=scan_layers, allow_pickle=allow_pickle) as weights:
    model_config = weights.config
    adapters = {}
    if adapter is not None:
      lora, adapters = read_peft(adapter, model_config)
      model_config = dataclasses.replace(model_config, lora=lora)
    train = TrainConfig(seq_len=min(TrainConfig().seq_len, model_config.max_seq_len))
    labels = hf_labels(weights.hf_config) if model_config.head is Head.CLASSIFICATION else ()
    config = Config(model=model_config, train=train, data=DataConfig(labels=labels))
    params = unflatten({**{key: DeferredArray(spec.shape, spec.dtype,
                                              functools.partial(weights.read_param, key))
                           for key, spec in weights.specs.items()}, **adapters})
    with staged_directory(run_dir) as staging:
      run = RunDir(staging)
      run.write_config(config)
      keep_source_config(hf_dir, staging)
      if not _import_tokenizer(hf_dir, run.tokenizer_dir, model_config):
        log.warning("%s has no tokenizer files (tokenizer.json, a sentencepiece .model, "
                    "vocab.txt…): the weights are imported, but generate, predict, fill-mask, "
                    "eval and score need a tokenizer. Copy the model's tokenizer files into "
                    "%s/tokenizer/ (or train with data.tokenizer=PATH).", hf_dir, run_dir)
      checkpointer = Checkpointer(run.checkpoints, keep=config.train.keep_checkpoints)
      try:
        checkpointer.save_streamed(
            0, TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=None),
            CheckpointRecord.imported(source=str(hf_dir), lmjax_version=__version__,
                                      config=config.to_dict()))
      finally:
        checkpointer.close()
  return config


def _import_tokenizer(hf_dir, destination: pathlib.Path, config: ModelConfig) -> bool:
  """Copies the tokenizer files, once they load and fit the model's vocabulary; makes a
  tokenizer.json from vocab files when there is none (a sentencepiece model is kept as it is:
  lmjax reads it through sentencepiece itself). Whether there was any to copy."""
  if Tokenizer.readable_in(hf_dir):  # a damaged file is refused by name, not copied
    check_vocabulary(Tokenizer.from_file(hf_dir), config, hf_dir)
  copied = copy_tokenizer_files(hf_dir, destination)
  if not copied:
    return False
  if (destination / "tokenizer.json").is_file() or model_file_in(str(destination)) is not None:
    return True
  try:  # e.g. a BERT with vocab.txt only: transformers builds the fast tokenizer offline
    from transformers import AutoTokenizer  # deferred: transformers (with torch) is an extra
    AutoTokenizer.from_pretrained(str(hf_dir)).save_pretrained(str(destination))
  except Exception as e:  # no transformers, or a slow-only tokenizer: keep the copied files
    log.warning("no tokenizer.json could be made from %s (%s); copied %s as they are.", hf_dir,
                type(e).__name__, ", ".join(copied))
  return True


def run_to_hf(run_dir: str | os.PathLike, hf_dir: str | os.PathLike, *, step: int | None = None,
              dtype: str | None = None, max_shard_size: int = 2 * 2**30) -> None:
  """Exports a run's checkpoint (default: the newest that reads) as a Hugging Face directory,
  LoRA adapters merged into the weights.

  Params are read from the checkpoint a group at a time (one param, or GPT-2's q/k/v) and
  written as HF tensors before the next group is read: memory holds one group, not the model.
  """
  run = RunDir(run_dir)
  config = run.require_config()
  check_new_directory(hf_dir)  # before any step is tried: not a reason to try an older one
  tokenizer_dir = run.tokenizer_dir if any(run.tokenizer_dir.glob("*")) else None
  fields = export_fields(run, config)
  _with_checkpoint_params(run, step, lambda specs, read: export_params(
      config.model, specs, read, hf_dir, dtype=dtype, max_shard_size=max_shard_size,
      tokenizer_dir=tokenizer_dir, **fields))


def run_to_peft(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                step: int | None = None, base_model: str | None = None) -> None:
  """Exports a LoRA run's adapters (default: the newest checkpoint that reads) as a PEFT
  adapter directory for the base model's Hugging Face export (lmjax.hf.adapters);
  `base_model` (default: the run's `model.init_from`) names it in adapter_config.json."""
  run = RunDir(run_dir)
  config = run.require_config()
  check_new_directory(out_dir)
  base = base_model or config.init_from
  _with_checkpoint_params(run, step, lambda specs, read: export_peft(
      config.model, specs, read, out_dir, base_model=base))


def _with_checkpoint_params(run: RunDir, step: int | None, use) -> None:
  """use(specs, read) on checkpoint `step`'s params (default: the newest that restores, a
  damaged newer one skipped with a warning): flat keys -> ShapeDtypeStruct, and a reader of
  some of them as host arrays."""
  checkpointer, step = open_checkpoints(run, step)

  def export(at: int) -> None:
    specs = {".".join(path[1:]): spec for path, spec in checkpointer.array_specs(at).items()
             if path[0] == "params"}
    base_specs, read_base = _base_arrays(run, checkpointer.restore_record(at))

    def read(keys):
      own = {("params", *key.split(".")): specs[key] for key in keys if key not in base_specs}
      arrays = checkpointer.restore_arrays(at, own) if own else {}
      arrays = {".".join(path[1:]): array for path, array in arrays.items()}
      if any(key in base_specs for key in keys):
        base = read_base()
        arrays.update({key: base[key] for key in keys if key in base_specs})
      return arrays
    use(*dequantized_view({**specs, **base_specs}, read))  # a QLoRA base: as float32

  try:
    if step is None:  # a damaged newest step is skipped (with a warning), as lmjax.load does
      checkpointer.restore_newest(export)
    else:
      restore_step(run, step, export)
  finally:
    checkpointer.close()


def _base_arrays(run: RunDir, record: CheckpointRecord
                 ) -> tuple[dict[str, jax.ShapeDtypeStruct], Callable[[], dict[str, Any]]]:
  """(specs, read) of the frozen base params (flat keys) of a checkpoint that holds a LoRA run's
  trained params only, as training held them; ({}, …) for a whole checkpoint. The base is read
  on first use (a PEFT export never needs it), all at once: memory then holds the base."""
  if record.base is None:
    return {}, dict
  config = run.require_config()
  _, frozen = split(nn.unbox(param_shapes(config.model)), config.model)
  frozen = jax.tree.map(lambda a: a if is_quantized(a) else jax.ShapeDtypeStruct(
      a.shape, frozen_dtype(config.model)), frozen, is_leaf=is_quantized)
  specs = {".".join(path): spec for path, spec in traverse_util.flatten_dict(frozen).items()}

  @functools.cache
  def read() -> dict[str, Any]:
    arrays = frozen_params(record.base, config.init_from, config.model, frozen)
    return {".".join(path): array for path, array in traverse_util.flatten_dict(arrays).items()}
  return specs, read
