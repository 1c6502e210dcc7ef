"""The training loop: config -> mesh -> sharded state -> (batch -> step -> metrics/checkpoint)*.

Everything that can fail on a user's input (config, data, tokenizer, mesh, an incompatible run
directory) is checked before anything is written, so a failed start never damages a run.
Rerunning the same command resumes from the latest checkpoint that restores (a damaged newer
one is reported and moved to RUN_DIR/corrupt_checkpoints/). SIGTERM or SIGINT stops the run at
the next step boundary with a checkpoint (see lmjax.train.preemption). A step with a non-finite
loss or gradient norm applies no update; `train.nan_policy` then stops the run (NonFiniteLoss,
exit code 3) or skips the step and counts it.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from lmjax.config import ComputeDtype, Config
from lmjax.data.batches import BatchSource, batch_sources
from lmjax.data.pipeline import BatchIterator
from lmjax.model import Transformer
from lmjax.objectives import LossSums
from lmjax.run_dir import RunDir, check_resumable
from lmjax.sharding import (LOGICAL_AXIS_RULES, Rules, axis_rules, batch_sharding,
                            check_divisible, make_mesh, process_batch_positions, shard_batch)
from lmjax.train.checkpoint import Checkpointer
from lmjax.train.metrics import MetricsWriter, model_flops_utilization, truncate_metrics_after
from lmjax.train.multihost import any_process, initialize_distributed, is_writer, shared_corpus
from lmjax.train.optimizer import learning_rate_schedule, make_optimizer
from lmjax.train.nonfinite import NonFiniteSteps
from lmjax.train.preemption import PreemptionGuard
from lmjax.train.resume import start_or_resume
from lmjax.train.state import TrainState, state_shardings
from lmjax.train.step import jit_eval_step, jit_train_step
from lmjax import __version__


@dataclasses.dataclass
class TrainResult:
  start_step: int            # where this invocation began (0, or the resumed checkpoint's step)
  final_step: int
  last_row: dict[str, Any] | None
  stopped_by: str | None = None  # "SIGTERM"/"SIGINT" when a signal ended the run early


@dataclasses.dataclass(frozen=True)
class StepSetup:
  """What one config needs to take steps on a mesh; nothing allocated yet."""

  model: Transformer
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  mesh: Mesh
  rules: Rules
  abstract_state: TrainState    # ShapeDtypeStructs carrying their shardings
  shardings: TrainState         # NamedShardings
  step_fn: Callable             # jitted, donating (state, global batch) -> (state, metrics)


def make_model(config: Config) -> Transformer:
  dtype = jnp.bfloat16 if config.train.compute_dtype is ComputeDtype.BFLOAT16 else jnp.float32
  return Transformer(config.model, dtype=dtype)


def setup_step(config: Config, mesh: Mesh) -> StepSetup:
  """Checks that the config fits `mesh`, then builds the sharded, jitted train step for it."""
  check_batch_fits_mesh(config, mesh)
  model, rules = make_model(config), axis_rules(config.mesh)
  tx, schedule = make_optimizer(config.train), learning_rate_schedule(config.train)
  abstract_state, shardings = state_shardings(model, tx, mesh, seq_len=config.train.seq_len,
                                              rules=rules)
  step_fn = jit_train_step(model, tx, schedule, mesh, shardings, seed=config.train.seed,
                           grad_accum_steps=config.train.grad_accum_steps,
                           nan_at_step=config.train.debug_nan_at_step, rules=rules,
                           loss_chunk=config.train.loss_chunk_size)
  return StepSetup(model, tx, schedule, mesh, rules, abstract_state, shardings, step_fn)


def check_batch_fits_mesh(config: Config, mesh: Mesh) -> None:
  """Refuses a (micro-)batch or sequence length that the mesh axes sharding it do not divide."""
  train = config.train
  per_micro = train.batch_size // train.grad_accum_steps
  names = (f"train.batch_size={train.batch_size}" + (
      f" / train.grad_accum_steps={train.grad_accum_steps} (rows per micro-batch)"
      if train.grad_accum_steps > 1 else ""), f"train.seq_len={train.seq_len}")
  check_divisible((per_micro, train.seq_len), batch_sharding(mesh, axis_rules(config.mesh)),
                  describe_dim=lambda i: names[i])


class TrainBatches:
  """The training batches, step after step, from the Grain pipeline (lmjax.data.pipeline),
  placed on the mesh; `state()` is the pipeline position a checkpoint records."""

  def __init__(self, source: BatchSource, mesh: Mesh, rules: Rules, *, num_steps: int,
               start: int, workers: int, state: dict | None):
    self.source, self.mesh, self.rules = source, mesh, rules
    positions = process_batch_positions(mesh, source.batch_size, rules)
    self._iterator = BatchIterator(source, positions, num_steps=num_steps, start=start,
                                   workers=workers, state=state)

  def __next__(self) -> dict[str, jax.Array]:
    return shard_batch(next(self._iterator), self.mesh, self.source.batch_size, self.rules)

  def state(self) -> dict:
    return self._iterator.state()

  def close(self) -> None:
    self._iterator.close()


def evaluate(eval_fn, params, source: BatchSource, mesh, num_batches: int, *,
             rules: Rules = LOGICAL_AXIS_RULES) -> dict[str, float]:
  """Token-weighted eval loss and accuracy over the first `num_batches` held-out batches."""
  positions = process_batch_positions(mesh, source.batch_size, rules)
  total = LossSums(0.0, 0.0, 0.0)
  for i in range(num_batches):
    rows = source.batch(i, shuffle=False, positions=positions)
    sums = eval_fn(params, shard_batch(rows, mesh, source.batch_size, rules))
    total = LossSums(*(float(a) + float(b) for a, b in zip(total, sums)))
  weight = max(total.weight, 1.0)
  return {"eval_loss": total.loss / weight, "eval_accuracy": total.correct / weight}


def train(config: Config, run_dir: str | pathlib.Path, *, stop_after: int | None = None,
          async_checkpoints: bool = True) -> TrainResult:
  """Trains (or resumes) the run in `run_dir` up to `train.steps`.

  `stop_after` ends this invocation early, with a checkpoint, after that step (e.g. to fit a
  job's time slot); rerunning continues exactly where it stopped. `async_checkpoints=False`
  blocks on every checkpoint write (for benchmarks).
  """
  initialize_distributed(config.distributed)
  run = RunDir(run_dir)
  saved = run.read_config()
  if saved is not None:
    check_resumable(saved, config, run.path)
  mesh = make_mesh(config.mesh)
  setup = setup_step(config, mesh)
  corpus = shared_corpus(config, run)
  train_source, eval_source = batch_sources(config, corpus)
  writes = is_writer()

  # Validation is over: from here on the run directory is written (by process 0 only; the
  # checkpoints by all processes together).
  if writes:
    run.write_config(config)
    if not run.tokenizer_dir.is_dir():
      corpus.tokenizer.save(run.tokenizer_dir)
  checkpointer = Checkpointer(run.checkpoints, keep=config.train.keep_checkpoints,
                              keep_every=config.train.keep_every, async_save=async_checkpoints)
  begin = start_or_resume(config, run, setup, checkpointer, report=writes)
  start, state = begin.step, begin.state
  if writes:  # rows of steps after the checkpoint (a run that died) are logged again
    truncate_metrics_after(run.metrics_file, start)

  train_batches = TrainBatches(train_source, mesh, setup.rules, num_steps=config.train.steps,
                               start=start, workers=config.data.workers, state=begin.data_state)
  eval_fn = jit_eval_step(setup.model, mesh, setup.shardings.params, rules=setup.rules,
                          loss_chunk=config.train.loss_chunk_size)
  writer = MetricsWriter(run.path, total_steps=config.train.steps, start_step=start, enabled=writes)
  if start:
    writer.message(f"resuming {run.path} from step {start}")
  nonfinite = NonFiniteSteps(config.train.nan_policy, setup.abstract_state.params,
                             skipped=begin.skipped_steps, say=writer.message)
  speed = _Throughput(config, start)
  t_start = time.perf_counter()
  row, last_saved, stopped_by = None, start, None
  end = config.train.steps if stop_after is None else min(stop_after, config.train.steps)

  def save(done: int) -> None:
    nonlocal last_saved
    checkpointer.save(done, state, {
        "step": done, "data_position": done, "data_iterator": train_batches.state(),
        "lmjax_version": __version__,
        "rng": {"seed": config.train.seed, "derived_from": "step"},
        "skipped_steps": nonfinite.skipped,
        "elapsed_seconds": begin.elapsed_seconds + time.perf_counter() - t_start,
        "config": config.to_dict()})
    last_saved = done

  try:
    with PreemptionGuard() as guard:
      for step in range(start, end):
        state, metrics = setup.step_fn(state, next(train_batches))
        done = step + 1
        nonfinite.add(done, metrics)
        nonfinite.check(last_saved=last_saved, keep_newest=True)
        speed.started(done, metrics)
        is_eval = config.train.eval_every and (done % config.train.eval_every == 0
                                               or done == config.train.steps)
        if is_eval or done % config.train.log_every == 0 or done == config.train.steps:
          nonfinite.check(last_saved=last_saved)
          row = _metrics_row(config, done, jax.device_get(metrics), speed.rate(done),
                             elapsed=begin.elapsed_seconds + time.perf_counter() - t_start,
                             skipped_steps=nonfinite.skipped,
                             skipped_records=corpus.skipped_records)
          if is_eval:
            row.update(evaluate(eval_fn, state.params, eval_source, mesh,
                                config.train.eval_batches, rules=setup.rules))
          writer.write(row)
          writer.progress(done, row)
        stop = any_process(guard.requested)
        if done % config.train.checkpoint_every == 0 or done == end or stop:
          nonfinite.check(last_saved=last_saved)  # a poisoned state is never written
          save(done)
        if stop:
          checkpointer.wait()
          stopped_by = guard.signal_name or "a signal on another process"
          writer.message(f"lmjax: stopped by {stopped_by}: saved step {done} to "
                         f"{run.checkpoints / str(done)}; rerun the same command to resume")
          end = done
          break
      nonfinite.check(last_saved=last_saved)
  finally:
    train_batches.close()
    checkpointer.close()
    writer.close()
  return TrainResult(start_step=start, final_step=max(start, end), last_row=row,
                     stopped_by=stopped_by)


class _Throughput:
  """Tokens per second between logged steps, timed from the end of the first (compiling) step."""

  def __init__(self, config: Config, start: int):
    self.tokens_per_step = config.train.batch_size * config.train.seq_len
    self.mark_time, self.mark_step = None, start

  def started(self, done: int, metrics) -> None:
    if self.mark_time is None:  # the first step compiles: time throughput from its end
      jax.block_until_ready(metrics)
      self.mark_time, self.mark_step = time.perf_counter(), done

  def rate(self, done: int) -> float | None:
    now = time.perf_counter()
    rate = (self.tokens_per_step * (done - self.mark_step) / (now - self.mark_time)
            if done > self.mark_step else None)
    self.mark_time, self.mark_step = now, done
    return rate


def _metrics_row(config: Config, done: int, metrics: dict, tokens_per_second: float | None, *,
                 elapsed: float, skipped_steps: int, skipped_records: int) -> dict[str, Any]:
  """One row of metrics.jsonl (see DESIGN.md) from the step's metrics, fetched to the host."""
  row = {
      "step": done, "loss": float(metrics["loss"]),
      "learning_rate": float(metrics["learning_rate"]),
      "grad_norm": float(metrics["grad_norm"]),
      "tokens_per_second": tokens_per_second,
      "mfu": tokens_per_second and model_flops_utilization(
          config.model.flops_per_token(config.train.seq_len), tokens_per_second,
          dtype=config.train.compute_dtype.value),
      "elapsed_seconds": elapsed,
      "skipped_steps": skipped_steps,
      "skipped_records": skipped_records,
  }
  if config.model.head.value != "causal_lm":
    row["accuracy"] = float(metrics["accuracy"])
  return row
