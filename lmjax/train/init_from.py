"""Initial weights for fine-tuning: `model.init_from` = a run directory or a Hugging Face dir.

Parameters are matched by path: those the source has with the same shape are loaded, those it
lacks (e.g. a new classification head) keep their fresh initialisation, and those only the
source has (e.g. an MLM head when fine-tuning a classifier) are left out. Scanned and unrolled
layer layouts are converted as needed (lmjax.run.loader).

A LoRA run whose every frozen param comes from the source saves the trained part only and
refers to the source by a BaseRef (lmjax.run.base_ref); otherwise its checkpoints are whole.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from lmjax.errors import UserError
from lmjax.run.loader import load_source
from lmjax.model import ModelConfig
from lmjax.model.lora import is_adapter
from lmjax.model.quantize import is_quantized, quantize_like
from lmjax.model.trainable import is_trained, trained_part
from lmjax.run.base_ref import BaseRef, reference
from lmjax.storage import absolute

log = logging.getLogger(__name__)


def merge_params(fresh: Any, loaded: Any) -> tuple[Any, list[str], list[str]]:
  """(`fresh` with every same-path, same-shape leaf of `loaded` copied in onto its sharding,
  paths kept fresh, paths of `loaded` left out). A quantized fresh kernel (QLoRA) takes the
  loaded float kernel quantized as it is."""
  fresh_flat = traverse_util.flatten_dict(fresh, sep="/")
  loaded_flat = traverse_util.flatten_dict(loaded, sep="/")
  merged, kept_fresh = {}, []
  for path, value in fresh_flat.items():
    source = loaded_flat.get(path)
    if source is not None and tuple(source.shape) == tuple(value.shape) and is_quantized(value):
      merged[path] = quantize_like(source, value)
    elif source is not None and tuple(source.shape) == tuple(value.shape):
      merged[path] = jax.device_put(np.asarray(source, dtype=value.dtype), value.sharding)
    else:
      merged[path] = value
      kept_fresh.append(path)
  unused = sorted(set(loaded_flat) - set(fresh_flat))
  return traverse_util.unflatten_dict(merged, sep="/"), kept_fresh, unused


def start_from_source(state, tx, opt_state_shardings, source: str, config: ModelConfig, *,
                      run_path: pathlib.Path):
  """(`state` (freshly initialised, sharded) with the weights of `source` (a run or an HF
  directory) and a new optimizer state, a one-line report of what was loaded, and the BaseRef
  a LoRA run's checkpoints refer to instead of holding the base; None: they hold it all)."""
  loaded, step = load_source(source, config)
  _check_shapes(state.params, loaded, source)
  params, kept_fresh, unused = merge_params(state.params, loaded)
  del loaded
  opt_state = jax.jit(tx.init, out_shardings=opt_state_shardings)(trained_part(params, config))
  report = f"initialised from {source}"
  adapters = [p for p in kept_fresh if is_adapter(p.split("/"))]
  kept_fresh = [p for p in kept_fresh if p not in adapters]
  if adapters:
    report += (f"; {len(adapters) // 2} new LoRA adapter(s) of rank {config.lora.rank} on "
               f"{', '.join(sorted({p.rsplit('/', 1)[0] for p in adapters}))}")
  if kept_fresh:
    report += f"; new (randomly initialised): {', '.join(kept_fresh)}"
  if unused:
    report += f"; not used: {', '.join(unused)}"
  base = _base_reference(source, step, config, kept_fresh, run_path)
  if base is not None:
    shown = dataclasses.replace(base, source=_shown(base.source))
    report += f"; checkpoints hold the trained params only, the base is {shown}"
  return state.replace(params=params, opt_state=opt_state), report, base


def _check_shapes(fresh: Any, loaded: Any, source: str) -> None:
  """UserError naming every param that `source` has under the same name with another shape
  than this config's model (a `model.*` key that overrides the source's architecture): it
  would silently be trained from scratch. A classifier head of another label count is the
  exception (it is new, and reported so), as in `transformers`' `ignore_mismatched_sizes`."""
  fresh_flat = traverse_util.flatten_dict(fresh, sep="/")
  loaded_flat = traverse_util.flatten_dict(loaded, sep="/")
  differ = [f"{path} {tuple(loaded_flat[path].shape)} there, {tuple(value.shape)} here"
            for path, value in fresh_flat.items()
            if path in loaded_flat and tuple(loaded_flat[path].shape) != tuple(value.shape)
            and not path.startswith("classifier/")]
  if differ:
    raise UserError(f"model.init_from={source!r} does not fit this config's model: "
                    f"{'; '.join(differ[:4])}{' …' if len(differ) > 4 else ''}. A model.* key "
                    f"overrides the source's architecture: remove it, or train from scratch "
                    f"without model.init_from.")


def _shown(path: str) -> str:
  """`path` relative to the working directory when it lies under it (as the user wrote it,
  and as a notebook's output should show it), else absolute."""
  absolute, here = pathlib.Path(path), pathlib.Path.cwd()
  return str(absolute.relative_to(here)) if absolute.is_relative_to(here) else path


def _base_reference(source: str, step: int | None, config: ModelConfig, kept_fresh: list[str],
                    run_path: pathlib.Path) -> BaseRef | None:
  """The BaseRef of `source` when a LoRA run can save its trained params only: every frozen
  param came from `source`, and `source` is not the run itself."""
  if not config.lora.enabled or absolute(source) == absolute(run_path):
    return None
  frozen_fresh = [p for p in kept_fresh if not is_trained(tuple(p.split("/")), config)]
  if frozen_fresh:
    log.info("%s lacks frozen param(s) %s: the checkpoints hold the whole model", source,
             ", ".join(frozen_fresh[:3]))
    return None
  return reference(source, step)
