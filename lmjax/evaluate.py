"""`lmjax eval`: a checkpoint's loss (and accuracy) on the run's held-out data."""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

from lmjax.config import load_config
from lmjax.data.batches import batch_sources, load_corpus
from lmjax.data.tokenizer import Tokenizer
from lmjax.load import checkpoint_step, load_run_at
from lmjax.run_dir import RunDir, check_resumable
from lmjax.sharding import axis_rules, make_mesh
from lmjax.train.loop import check_batch_fits_mesh, evaluate, make_model
from lmjax.train.step import jit_eval_step
from lmjax.train.state import state_shardings
from lmjax.train.optimizer import make_optimizer


def evaluate_run(config_name: str | pathlib.Path, run_dir: str | pathlib.Path, *,
                 step: int | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
  """Evaluates checkpoint `step` (default: the latest complete one) over `train.eval_batches`
  held-out batches."""
  config = load_config(config_name, overrides)
  run = RunDir(run_dir)
  check_resumable(run.require_config(), config, run.path)
  checkpoint_step(run, step)[0].close()  # a missing step fails before the data is read
  corpus = load_corpus(config, Tokenizer.load(run.tokenizer_dir))
  mesh, rules = make_mesh(config.mesh), axis_rules(config.mesh)
  check_batch_fits_mesh(config, mesh)
  _, eval_source = batch_sources(config, corpus)
  model = make_model(config)
  _, params, step = load_run_at(run.path, step=step, mesh=mesh)
  _, shardings = state_shardings(model, make_optimizer(config.train), mesh,
                                 seq_len=config.train.seq_len, rules=rules)
  eval_fn = jit_eval_step(model, mesh, shardings.params, rules=rules,
                          loss_chunk=config.train.loss_chunk_size)
  metrics = evaluate(eval_fn, params, eval_source, mesh, config.train.eval_batches, rules=rules)
  return {"step": step, **metrics}
