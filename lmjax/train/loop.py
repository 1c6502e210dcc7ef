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
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from lmjax.config import ComputeDtype, Config, NanPolicy
from lmjax.errors import NonFiniteLoss
from lmjax.data.batches import BatchSource, batch_sources
from lmjax.data.pipeline import BatchIterator
from lmjax.model import Transformer
from lmjax.objectives import LossSums
from lmjax.run_dir import RunDir, check_resumable
from lmjax.sharding import (LOGICAL_AXIS_RULES, Rules, axis_rules, batch_sharding,
                            check_divisible, make_mesh, process_batch_positions, shard_batch)
from lmjax.train.checkpoint import Checkpointer
from lmjax.train.init_from import start_from_source
from lmjax.train.metrics import MetricsWriter, model_flops_utilization, truncate_metrics_after
from lmjax.train.multihost import any_process, initialize_distributed, is_writer, shared_corpus
from lmjax.train.optimizer import learning_rate_schedule, make_optimizer
from lmjax.train.preemption import PreemptionGuard
from lmjax.train.state import TrainState, create_train_state, state_shardings
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
                           nan_at_step=config.train.debug_nan_at_step, rules=rules)
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

  def restore(step: int):
    record = checkpointer.restore_record(step)
    if record.get("params_only"):  # an imported run directory: weights, no optimizer state yet
      return None, record
    return checkpointer.restore(step, setup.abstract_state)

  start, restored, skipped = checkpointer.restore_newest(restore)
  state, record = restored or (None, {})
  state_restored = state is not None
  if skipped:
    checkpointer.quarantine([s.step for s in skipped], run.path / "corrupt_checkpoints")
  elapsed_before = float(record.get("elapsed_seconds", 0.0)) if state is not None else 0.0
  skipped_steps = int(record.get("skipped_steps", 0)) if state is not None else 0
  if state is None:  # a new run, or an imported run directory
    state = create_train_state(setup.model, setup.tx, mesh, seed=config.train.seed,
                               seq_len=config.train.seq_len, rules=setup.rules)
    source = config.model.init_from or (str(run.path) if start is not None else None)
    if source:
      state, report = start_from_source(state, setup.tx, setup.shardings.opt_state,
                                        dataclasses.replace(config.model, init_from=source))
      if writes:
        print(f"lmjax: {report}", file=sys.stderr)
    start = 0
  if writes:  # rows of steps after the checkpoint (a run that died) are logged again
    truncate_metrics_after(run.metrics_file, start)

  step_fn = setup.step_fn
  train_batches = TrainBatches(train_source, mesh, setup.rules, num_steps=config.train.steps,
                               start=start, workers=config.data.workers,
                               state=record.get("data_iterator") if state_restored else None)
  eval_fn = jit_eval_step(setup.model, mesh, setup.shardings.params, rules=setup.rules)
  writer = MetricsWriter(run.path, total_steps=config.train.steps, start_step=start, enabled=writes)
  if start:
    writer.message(f"resuming {run.path} from step {start}")
  tokens_per_step = config.train.batch_size * config.train.seq_len
  flops_per_token = config.model.flops_per_token(config.train.seq_len)
  t_start = time.perf_counter()
  t_mark, step_mark, row, last_saved, stopped_by = None, start, None, start, None
  end = config.train.steps if stop_after is None else min(stop_after, config.train.steps)
  unchecked: list[tuple[int, dict]] = []  # (step, metrics) whose finiteness is not yet known

  def check_finite(*, keep_newest: bool) -> None:
    """Acts on non-finite steps; `keep_newest` leaves the step just dispatched unchecked, so
    the host does not wait for it (the check trails the device by one step)."""
    nonlocal skipped_steps
    while len(unchecked) > keep_newest:
      step, metrics = unchecked.pop(0)
      if bool(metrics["finite"]):
        continue
      loss, bad_leaf = float(metrics["loss"]), int(metrics["first_nonfinite_grad"])
      if config.train.nan_policy is NanPolicy.SKIP_STEP:
        skipped_steps += 1
        writer.message(f"lmjax: step {step}: non-finite loss {loss} (grad_norm "
                       f"{float(metrics['grad_norm'])}): update skipped (train.nan_policy="
                       f"skip_step; {skipped_steps} skipped so far)")
        continue
      raise NonFiniteLoss(
          f"step {step}: the loss is {loss} and the first non-finite gradient is "
          f"{_leaf_path(setup.abstract_state.params, bad_leaf)}; no update was applied and "
          f"nothing after step {last_saved} was saved (the latest checkpoint is "
          f"{last_saved or 'none'}). Lower train.learning_rate or raise train.warmup_steps and "
          f"rerun to resume from it, or set train.nan_policy=skip_step to skip such steps.")

  def save(done: int) -> None:
    nonlocal last_saved
    checkpointer.save(done, state, {
        "step": done, "data_position": done, "data_iterator": train_batches.state(),
        "lmjax_version": __version__,
        "rng": {"seed": config.train.seed, "derived_from": "step"},
        "skipped_steps": skipped_steps,
        "elapsed_seconds": elapsed_before + time.perf_counter() - t_start,
        "config": config.to_dict()})
    last_saved = done

  try:
    with PreemptionGuard() as guard:
      for step in range(start, end):
        state, metrics = step_fn(state, next(train_batches))
        done = step + 1
        unchecked.append((done, metrics))
        check_finite(keep_newest=True)
        if t_mark is None:  # the first step compiles: time throughput from its end
          jax.block_until_ready(metrics)
          t_mark, step_mark = time.perf_counter(), done
        is_eval = config.train.eval_every and (done % config.train.eval_every == 0
                                               or done == config.train.steps)
        if is_eval or done % config.train.log_every == 0 or done == config.train.steps:
          check_finite(keep_newest=False)
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
              "skipped_steps": skipped_steps,
              "skipped_records": corpus.skipped_records,
          }
          if config.model.head.value != "causal_lm":
            row["accuracy"] = float(metrics["accuracy"])
          if is_eval:
            row.update(evaluate(eval_fn, state.params, eval_source, mesh,
                                config.train.eval_batches, rules=setup.rules))
          writer.write(row)
          writer.progress(done, row)
        stop = any_process(guard.requested)
        if done % config.train.checkpoint_every == 0 or done == end or stop:
          check_finite(keep_newest=False)  # a poisoned state is never written
          save(done)
        if stop:
          checkpointer.wait()
          stopped_by = guard.signal_name or "a signal on another process"
          writer.message(f"lmjax: stopped by {stopped_by}: saved step {done} to "
                         f"{run.checkpoints / str(done)}; rerun the same command to resume")
          end = done
          break
      check_finite(keep_newest=False)
  finally:
    train_batches.close()
    checkpointer.close()
    writer.close()
  return TrainResult(start_step=start, final_step=max(start, end), last_row=row,
                     stopped_by=stopped_by)


def _leaf_path(params: Any, index: int) -> str:
  """The '/'-joined path of leaf `index` of `params` (in jax.tree.leaves order)."""
  if index < 0:
    return "none (the gradients are finite; the loss itself is not)"
  path, _ = jax.tree_util.tree_flatten_with_path(params)[0][index]
  return "params/" + "/".join(str(getattr(k, "key", k)) for k in path)
