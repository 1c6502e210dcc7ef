"""Held-out evaluation: the loop's periodic eval, and `lmjax eval` on a run's checkpoint.

Language models report the token-weighted `eval_loss` and `eval_accuracy` over
`train.eval_batches` batches; classifiers go over every held-out example once and add
`eval_macro_f1` and `eval_confusion` (rows: true label, columns: predicted, in label order).
Preference objectives report the loss per pair, `eval_accuracy` (pairs whose chosen answer has
the higher implicit reward) and the mean rewards and margin.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any, Callable, Sequence

import jax
import numpy as np

from lmjax.config import load_config
from lmjax.config_objectives import Reference
from lmjax.data.pipeline.batches import BatchSource
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.run.loader import load_run_at, with_quantization
from lmjax.run.restore import open_checkpoints
from lmjax.run.resume_policy import check_model_unchanged
from lmjax.run.run_dir import RunDir
from lmjax.memory import check_fits, per_device_bytes
from lmjax.model.quantize import quantize_params
from lmjax.model.transformer import param_shapes
from lmjax.sharding import MeshRules, mesh_rules
from lmjax.train.inputs import batch_sources, inherit_labels, load_corpus
from lmjax.train.setup import (check_batch_fits_mesh, make_model, objective_of, pipeline_schedule,
                               preference_settings, residual_bytes)
from lmjax.train.reference import reference_kind, reference_params
from lmjax.train.step import jit_eval_step


def evaluate(eval_fn: Callable, params, source: BatchSource, placement: MeshRules,
             num_batches: int) -> dict[str, Any]:
  """Eval metrics over the held-out batches (`num_batches` of them for language models, see
  `BatchSource.eval_batches`)."""
  positions = placement.process_batch_positions(source.batch_size)
  total = None
  for i in range(source.eval_batches(num_batches)):
    rows = source.batch(i, shuffle=False, positions=positions)
    sums = jax.device_get(eval_fn(params, placement.shard_batch(rows, source.batch_size)))
    total = sums if total is None else jax.tree.map(np.add, total, sums)
  weight = max(float(total["weight"]), 1.0)
  metrics = {"eval_loss": float(total["loss"]) / weight,
             "eval_accuracy": float(total["correct"]) / weight}
  if "chosen_reward" in total:  # a preference objective: eval_accuracy is the pairs ranked right
    chosen, rejected = (float(total[k]) / weight for k in ("chosen_reward", "rejected_reward"))
    metrics.update(eval_rewards_chosen=chosen, eval_rewards_rejected=rejected,
                   eval_rewards_margin=chosen - rejected)
  if "confusion" in total:
    confusion = np.rint(np.asarray(total["confusion"])).astype(np.int64)
    metrics.update(eval_macro_f1=macro_f1(confusion), eval_confusion=confusion.tolist())
  return metrics


def macro_f1(confusion: np.ndarray) -> float:
  """The mean over labels of F1 = 2 TP / (2 TP + FP + FN), from counts [true, predicted]; a
  label never true nor predicted scores 0 (as scikit-learn's default)."""
  tp = np.diag(confusion).astype(np.float64)
  denominator = confusion.sum(axis=0) + confusion.sum(axis=1)  # 2 TP + FP + FN
  f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
  return float(f1.mean())


def evaluate_run(config_name: str | pathlib.Path, run_dir: str | pathlib.Path, *,
                 step: int | None = None, overrides: Sequence[str] = (),
                 quantize: str | None = None) -> dict[str, Any]:
  """Evaluates checkpoint `step` (default: the latest complete one) over `train.eval_batches`
  held-out batches; `quantize` (int8, int4) holds the projections quantized, as --quantize."""
  run = RunDir(run_dir)
  saved = run.require_config()
  config = inherit_labels(load_config(config_name, overrides), saved)
  check_model_unchanged(saved, config, run.path)
  if quantize:
    config = dataclasses.replace(config, model=with_quantization(config.model,
                                                                 {"scheme": quantize}))
  open_checkpoints(run, step)[0].close()  # a missing step fails before the data is read
  corpus = load_corpus(config, Tokenizer.load(run.tokenizer_dir))
  placement = mesh_rules(config.mesh)
  check_batch_fits_mesh(config, placement)
  model = make_model(config, pipeline_schedule(config, placement))
  params_bytes = per_device_bytes(placement.place_abstract(param_shapes(model.config))[0])
  check_fits(params_bytes + residual_bytes(config, placement, kept=2),
             what="the params and one held-out batch's activations (a block's input and output, "
                  "a lower bound)",
             knobs="lower train.batch_size or train.seq_len (--set), or spread the batch over "
                   "more devices (mesh.data)")
  _, eval_source = batch_sources(config, corpus)
  _, params, step = load_run_at(run.path, step=step, mesh=placement.mesh, rules=placement.rules)
  if quantize:
    params = quantize_params(params, param_shapes(model.config))
  objective = objective_of(config)
  reference = None
  if reference_kind(config, objective) is Reference.FROZEN_COPY:  # rebuilt as a resume does
    if quantize:
      raise UserError(f"--quantize {quantize} with train.objective={objective.value} against a "
                      f"frozen copy (no LoRA) is not supported: evaluate without --quantize.")
    reference = reference_params(config, model, placement, run.path)
  eval_fn = jit_eval_step(model, objective, placement, jax.tree.map(lambda a: a.sharding, params),
                          loss_chunk=config.train.loss_chunk_size,
                          preference=preference_settings(config), reference=reference)
  metrics = evaluate(eval_fn, params, eval_source, placement, config.train.eval_batches)
  if "eval_confusion" not in metrics and "eval_rewards_margin" not in metrics:
    # a language model: its per-token perplexity too
    metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 700.0))
  return {"step": step, **metrics}
