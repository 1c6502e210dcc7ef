"""Held-out evaluation: the loop's periodic eval, and `lmjax eval` on a run's checkpoint."""

from __future__ import annotations

import pathlib
from typing import Any, Callable, Sequence

import jax

from lmjax.config import load_config
from lmjax.data.batches import BatchSource
from lmjax.data.tokenizer import Tokenizer
from lmjax.objectives import LossSums
from lmjax.run.load import load_run_at, open_checkpoints
from lmjax.run.run_dir import RunDir, check_resumable
from lmjax.sharding import MeshRules, mesh_rules
from lmjax.train.inputs import batch_sources, load_corpus
from lmjax.train.setup import check_batch_fits_mesh, make_model, objective_of
from lmjax.train.step import jit_eval_step


def evaluate(eval_fn: Callable, params, source: BatchSource, placement: MeshRules,
             num_batches: int) -> dict[str, float]:
  """Token-weighted eval loss and accuracy over the first `num_batches` held-out batches."""
  positions = placement.process_batch_positions(source.batch_size)
  total = LossSums(0.0, 0.0, 0.0)
  for i in range(num_batches):
    rows = source.batch(i, shuffle=False, positions=positions)
    sums = eval_fn(params, placement.shard_batch(rows, source.batch_size))
    total = LossSums(*(float(a) + float(b) for a, b in zip(total, sums)))
  weight = max(total.weight, 1.0)
  return {"eval_loss": total.loss / weight, "eval_accuracy": total.correct / weight}


def evaluate_run(config_name: str | pathlib.Path, run_dir: str | pathlib.Path, *,
                 step: int | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
  """Evaluates checkpoint `step` (default: the latest complete one) over `train.eval_batches`
  held-out batches."""
  config = load_config(config_name, overrides)
  run = RunDir(run_dir)
  check_resumable(run.require_config(), config, run.path)
  open_checkpoints(run, step)[0].close()  # a missing step fails before the data is read
  corpus = load_corpus(config, Tokenizer.load(run.tokenizer_dir))
  placement = mesh_rules(config.mesh)
  check_batch_fits_mesh(config, placement)
  _, eval_source = batch_sources(config, corpus)
  model = make_model(config)
  _, params, step = load_run_at(run.path, step=step, mesh=placement.mesh, rules=placement.rules)
  eval_fn = jit_eval_step(model, objective_of(config), placement,
                          jax.tree.map(lambda a: a.sharding, params),
                          loss_chunk=config.train.loss_chunk_size)
  metrics = evaluate(eval_fn, params, eval_source, placement, config.train.eval_batches)
  return {"step": step, **metrics}
