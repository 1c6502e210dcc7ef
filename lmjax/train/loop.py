"""The training loop: config -> mesh -> sharded state -> (batch -> step -> metrics/checkpoint)*.

Everything that can fail on a user's input (config, data, tokenizer, mesh, an incompatible run
directory) is checked before anything is written, so a failed start never damages a run.
Rerunning the same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp

from lmjax.config import ComputeDtype, Config
from lmjax.data.batches import BatchSource, batch_sources, load_corpus
from lmjax.data.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.model import Transformer
from lmjax.objectives import LossSums
from lmjax.run_dir import RunDir, check_resumable
from lmjax.sharding import make_mesh, shard_batch
from lmjax.train.checkpoint import Checkpointer
from lmjax.train.metrics import MetricsWriter, model_flops_utilization, truncate_metrics_after
from lmjax.train.optimizer import learning_rate_schedule, make_optimizer
from lmjax.train.state import create_train_state, state_shardings
from lmjax.train.step import jit_eval_step, jit_train_step
from lmjax import __version__



@dataclasses.dataclass
class TrainResult:
  start_step: int            # where this invocation began (0, or the resumed checkpoint's step)
  final_step: int
  last_row: dict[str, Any] | None


def make_model(config: Config) -> Transformer:
  dtype = jnp.bfloat16 if config.train.compute_dtype is ComputeDtype.BFLOAT16 else jnp.float32
  return Transformer(config.model, dtype=dtype)


def initialize_distributed(config: Config) -> None:
  """Joins the multi-process job described by `distributed.*` (no-op for one process)."""
  dist = config.distributed
  if dist.coordinator_address is None or jax.distributed.is_initialized():
    return
  jax.distributed.initialize(coordinator_address=dist.coordinator_address,
                             num_processes=dist.num_processes, process_id=dist.process_id)


def check_batch_fits_mesh(config: Config, mesh) -> None:
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  per_micro = config.train.batch_size // config.train.grad_accum_steps
  if per_micro % shards or config.train.batch_size % jax.process_count():
    raise UserError(
        f"train.batch_size={config.train.batch_size} (per micro-batch {per_micro}) must be "
        f"divisible by mesh data x fsdp = {shards} and by the {jax.process_count()} processes.")


def evaluate(eval_fn, params, source: BatchSource, mesh, num_batches: int) -> dict[str, float]:
  """Token-weighted eval loss and accuracy over the first `num_batches` held-out batches."""
  total = LossSums(0.0, 0.0, 0.0)
  for i in range(num_batches):
    sums = eval_fn(params, shard_batch(source.batch(i, shuffle=False), mesh))
    total = LossSums(*(float(a) + float(b) for a, b in zip(total, sums)))
  weight = max(total.weight, 1.0)
  return {"eval_loss": total.loss / weight, "eval_accuracy": total.correct / weight}


def train(config: Config, run_dir: str | pathlib.Path, *, stop_after: int | None = None
          ) -> TrainResult:
  """Trains (or resumes) the run in `run_dir` up to `train.steps`.

  `stop_after` ends this invocation early, with a checkpoint, after that step (e.g. to fit a
  job's time slot); rerunning continues exactly where it stopped.
  """
  initialize_distributed(config)
  run = RunDir(run_dir)
  saved = run.read_config()
  if saved is not None:
    check_resumable(saved, config, run.path)
  tokenizer = Tokenizer.load(run.tokenizer_dir) if run.tokenizer_dir.is_dir() else None
  tokenizer, train_rows, eval_rows = load_corpus(config, tokenizer)
  mesh = make_mesh(config.mesh)
  check_batch_fits_mesh(config, mesh)
  train_source, eval_source = batch_sources(config, tokenizer, train_rows, eval_rows)

  model = make_model(config)
  tx, schedule = make_optimizer(config.train), learning_rate_schedule(config.train)
  abstract_state, shardings = state_shardings(model, tx, mesh, seq_len=config.train.seq_len)
  is_writer = jax.process_index() == 0

  # Validation is over: from here on the run directory is written.
  if is_writer:
    run.write_config(config)
    if not run.tokenizer_dir.is_dir():
      tokenizer.save(run.tokenizer_dir)
  checkpointer = Checkpointer(run.checkpoints, keep=config.train.keep_checkpoints)
  start = checkpointer.latest_step()
  elapsed_before = 0.0
  if start is None:
    start = 0
    state = create_train_state(model, tx, mesh, seed=config.train.seed, seq_len=config.train.seq_len)
  else:
    state, record = checkpointer.restore(start, abstract_state)
    elapsed_before = float(record.get("elapsed_seconds", 0.0))
    if is_writer:
      truncate_metrics_after(run.metrics_file, start)

  step_fn = jit_train_step(model, tx, schedule, mesh, shardings, seed=config.train.seed,
                           grad_accum_steps=config.train.grad_accum_steps)
  eval_fn = jit_eval_step(model, mesh, shardings.params)
  writer = MetricsWriter(run.path, total_steps=config.train.steps, start_step=start, enabled=is_writer)
  if start:
    writer.message(f"resuming {run.path} from step {start}")
  tokens_per_step = config.train.batch_size * config.train.seq_len
  flops_per_token = config.model.flops_per_token(config.train.seq_len)
  t_start = time.perf_counter()
  t_mark, step_mark, row = None, start, None
  end = config.train.steps if stop_after is None else min(stop_after, config.train.steps)
  try:
    for step in range(start, end):
      state, metrics = step_fn(state, shard_batch(train_source.batch(step), mesh))
      done = step + 1
      if t_mark is None:  # the first step compiles: time throughput from its end
        jax.block_until_ready(metrics)
        t_mark, step_mark = time.perf_counter(), done
      is_eval = config.train.eval_every and (done % config.train.eval_every == 0
                                             or done == config.train.steps)
      if is_eval or done % config.train.log_every == 0 or done == config.train.steps:
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        tokens_per_second = (tokens_per_step * (done - step_mark) / (now - t_mark)
                             if done > step_mark else None)
        t_mark, step_mark = now, done
        row = {
            "step": done, "loss": float(metrics["loss"]),
            "learning_rate": float(metrics["learning_rate"]),
            "grad_norm": float(metrics["grad_norm"]),
            "tokens_per_second": tokens_per_second,
            "mfu": tokens_per_second and model_flops_utilization(
                flops_per_token, tokens_per_second, dtype=config.train.compute_dtype.value),
            "elapsed_seconds": elapsed_before + now - t_start,
        }
        if config.model.head.value != "causal_lm":
          row["accuracy"] = float(metrics["accuracy"])
        if is_eval:
          row.update(evaluate(eval_fn, state.params, eval_source, mesh, config.train.eval_batches))
        writer.write(row)
        writer.progress(done, row)
      if done % config.train.checkpoint_every == 0 or done == end:
        checkpointer.save(done, state, {
            "step": done, "data_position": done, "lmjax_version": __version__,
            "elapsed_seconds": elapsed_before + time.perf_counter() - t_start,
            "config": config.to_dict()})
  finally:
    checkpointer.close()
    writer.close()
  return TrainResult(start_step=start, final_step=max(start, end), last_row=row)
