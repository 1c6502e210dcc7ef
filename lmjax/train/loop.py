"""The training loop: config -> mesh -> sharded state -> (batch -> step -> metrics/checkpoint)*.

Everything that can fail on a user's input (config, data, tokenizer, mesh, the run directory,
a resume that would change the run: lmjax.run.resume_policy, initial weights, the first step)
is checked before anything is written (but the lock, RUN_DIR/.lmjax.lock: one writer per run
directory, see lmjax.lock): config.yaml, the tokenizer and the config history are
written once the first step has run, so a failed start leaves nothing behind.
Rerunning the same command resumes from the latest checkpoint that restores (a damaged newer
one is reported and moved to RUN_DIR/corrupt_checkpoints/). SIGTERM or SIGINT stops the run at
the next step boundary with a checkpoint (see lmjax.train.preemption). A step with a non-finite
loss or gradient norm applies no update; `train.nan_policy` then stops the run (NonFiniteLoss,
exit code 3) or skips the step and counts it.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from typing import Any

import jax

from lmjax.config import Config, TrainObjective
from lmjax.run.source_fields import keep_source_config
from lmjax.data.pipeline.batches import BatchSource
from lmjax.data.examples.prompts import Prompts
from lmjax.data.pipeline.corpus import Corpus
from lmjax.data.spec import Objective
from lmjax.errors import UserError, WriteFailed
from lmjax.lock import DirectoryLock
from lmjax.memory import check_fits, per_device_bytes
from lmjax.model import PipelineSchedule
from lmjax.model.trainable import trained_part
from lmjax.run.checkpointer import Checkpointer
from lmjax.run.record import CheckpointRecord
from lmjax.run.resume_policy import Change, check_resume, history_entry
from lmjax.run.run_dir import RunDir
from lmjax.sharding import MeshRules, mesh_rules
from lmjax.train.evaluate import evaluate
from lmjax.train.inputs import TrainBatches, batch_sources, inherit_labels, shared_corpus
from lmjax.train.metrics import MetricsWriter, model_flops_utilization, truncate_metrics_after
from lmjax.train.multihost import (any_process_each, broadcast_json, initialize_distributed,
                                   is_writer)
from lmjax.train.nonfinite import NonFiniteSteps
from lmjax.train.preemption import PreemptionGuard
from lmjax.train.reference import with_frozen_reference
from lmjax.train.resume import Start, start_or_resume
from lmjax.train.rewards import Reward, resolve_rewards
from lmjax.train.rollout import Rollout, Sampler, held_out_prompts
from lmjax.train.setup import (StepSetup, check_batch_fits_mesh, pipeline_schedule,
                               residual_bytes, setup_step)
from lmjax.train.source_tokenizer import save_run_tokenizer
from lmjax.train.step import jit_eval_step
from lmjax.version import __version__

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
  start_step: int            # where this invocation began (0, or the resumed checkpoint's step)
  final_step: int
  last_row: dict[str, Any] | None
  stopped_by: str | None = None  # "SIGTERM"/"SIGINT" when a signal ended the run early


@dataclasses.dataclass(frozen=True)
class _Prepared:
  """A run that passed every check: what it trains with, nothing written yet."""

  config: Config
  run: RunDir
  setup: StepSetup
  corpus: Corpus
  train_source: BatchSource | None  # None: GRPO, whose batches are sampled (lmjax.train.rollout)
  eval_source: BatchSource | None
  writes: bool               # this process writes the run directory, logs and metrics
  changes: list[Change]      # what this resume changes in the saved config (new run: none)
  allow_change: bool
  rewards: list[Reward] = dataclasses.field(default_factory=list)  # GRPO's
  held_out: Prompts | None = None  # GRPO's held-out prompts (data.eval_paths)


def train(config: Config, run_dir: str | pathlib.Path, *, stop_after: int | None = None,
          async_checkpoints: bool = True, allow_config_change: bool = False,
          sampler: Sampler | None = None) -> TrainResult:
  """Trains (or resumes) the run in `run_dir` up to `train.steps`.

  `stop_after` ends this invocation early, with a checkpoint, after that step (e.g. to fit a
  job's time slot; a GRPO run goes on to the end of its generation round); rerunning continues
  exactly where it stopped. `async_checkpoints=False` blocks on every checkpoint write (for
  benchmarks). `allow_config_change` lets a resume change settings that alter the run's
  trajectory (see lmjax.run.resume_policy). `sampler` generates a GRPO run's completions:
  pass `lmjax.infer.generate` (the command line does).
  """
  if config.train.objective is TrainObjective.GRPO and sampler is None:
    raise ValueError("train.objective=grpo samples completions: pass sampler=lmjax.infer.generate")
  initialize_distributed(config.distributed)
  lock = _lock(RunDir(run_dir))
  try:
    prepared = _prepare(config, RunDir(run_dir), allow_config_change)
    checkpointer = Checkpointer(prepared.run.checkpoints, keep=config.train.keep_checkpoints,
                                keep_every=config.train.keep_every, async_save=async_checkpoints)
    try:
      begin = start_or_resume(config, prepared.run, prepared.setup, checkpointer,
                              report=prepared.writes)
      prepared = dataclasses.replace(prepared, setup=with_frozen_reference(  # its frozen copy
          prepared.config, prepared.setup, prepared.run.path, begin.state.params, begin.step))
      end = config.train.steps if stop_after is None else min(stop_after, config.train.steps)
      mu = config.train.grpo.num_iterations if prepared.train_source is None else 1
      return _Loop(prepared, checkpointer, begin, sampler, lock).run(-(-end // mu) * mu)
    finally:
      checkpointer.close()
  finally:
    if lock is not None:
      lock.release()


def _lock(run: RunDir) -> DirectoryLock | None:
  """The run directory's lock, taken by the writing process (the others of a multi-host job
  learn its refusal and raise it too); None on the others."""
  lock, refused = None, None
  if is_writer():
    try:
      run.check_usable()  # a file or a foreign directory is named as such, not locked
      lock = run.lock()
    except UserError as e:
      refused = e
  refusal = broadcast_json(None if refused is None else str(refused))
  if refused is not None:
    raise refused
  if refusal is not None:
    raise UserError(refusal)
  return lock


def _residual(config: Config, placement: MeshRules, pipeline: PipelineSchedule | None) -> int:
  """The residual stream the backward pass keeps on one device (a lower bound): every layer's
  input and the last output; a pipeline stage's L/S layers' inputs (and output) for each of
  the M + S - 1 iterations, on a micro-batch's rows whole over `stage` (which residual_bytes
  counts among the batch axes)."""
  accum, layers = config.train.grad_accum_steps, config.model.num_layers
  if pipeline is None:
    return residual_bytes(config, placement, kept=layers + 1, micro_batches=accum)
  kept = pipeline.iterations * (layers // pipeline.stages + 1) * pipeline.stages
  return residual_bytes(config, placement, kept=kept,
                        micro_batches=accum * pipeline.microbatches)


def _prepare(config: Config, run: RunDir, allow_change: bool) -> _Prepared:
  """Every check a start needs (run directory, resume policy, mesh, data, tokenizer, state
  layout), in that order; nothing is written. A classifier's labels are the run's, else the
  training data's."""
  run.check_usable()
  saved, changes = run.read_config(), []
  if saved is not None:
    config = inherit_labels(config, saved)
    changes = check_resume(saved, config, run.path, allow_change=allow_change)
  placement = mesh_rules(config.mesh)  # a mesh the devices cannot hold fails before the data
  check_batch_fits_mesh(config, placement)  # and so do a batch and stages it cannot take
  pipeline_schedule(config, placement)
  corpus = shared_corpus(config, run)
  config = config.with_labels(corpus.labels)
  setup = setup_step(config, placement)
  if setup.model.pipeline is not None and is_writer():
    log.info(setup.model.pipeline.describe())
  state_bytes = (per_device_bytes(setup.abstract_state)  # + the gradients of what trains
                 + per_device_bytes(trained_part(setup.abstract_state.params, config.model))
                 + setup.frozen_reference * per_device_bytes(setup.abstract_state.params))
  check_fits(state_bytes, what="the train state (params, optimizer state and gradients)",
             knobs="shrink the model (model.embed_dim, model.num_layers, model.mlp_dim, "
                   "model.vocab_size), shard it over more devices (mesh.fsdp), or train LoRA "
                   "adapters (model.lora.rank)")
  residual = _residual(config, placement, setup.model.pipeline)
  check_fits(state_bytes + residual,
             what="the train state and one micro-batch's activations (the residual stream "
                  "kept at every layer for the backward pass, a lower bound)",
             knobs="lower train.batch_size or train.seq_len, split the batch into "
                   "train.grad_accum_steps micro-batches, or spread it over more devices "
                   "(mesh.data, mesh.fsdp)")
  if setup.objective is Objective.GRPO:  # the reward functions import before anything is written
    return _Prepared(config, run, setup, corpus, None, None, is_writer(), changes, allow_change,
                     resolve_rewards(config.train.grpo),
                     held_out_prompts(config, corpus.tokenizer))
  train_source, eval_source = batch_sources(config, corpus)
  return _Prepared(config, run, setup, corpus, train_source, eval_source, is_writer(), changes,
                   allow_change)


def _write_run_start(prepared: _Prepared, begin: Start) -> None:
  """Once the first step has run: config.yaml, the config history of a changed resume, (for a
  new run) the tokenizer, and metrics.jsonl without rows after the resumed step (a run that
  died logs them again), on the writing process only; all processes write the checkpoints."""
  if not prepared.writes:
    return
  run = prepared.run
  run.path.mkdir(parents=True, exist_ok=True)
  if prepared.changes:
    run.append_history(history_entry(prepared.changes, step=begin.step,
                                     allowed=prepared.allow_change))
    log.info("resuming with a changed config (recorded in %s): %s", run.config_history,
             "; ".join(map(str, prepared.changes)))
  run.write_config(prepared.config)
  if not run.tokenizer_dir.is_dir():
    save_run_tokenizer(prepared.corpus.tokenizer, prepared.config, run.tokenizer_dir)
  if prepared.config.init_from is not None:  # its config.json fields, for the export
    keep_source_config(prepared.config.init_from, run.path)
  truncate_metrics_after(run.metrics_file, begin.step)


class _Loop:
  """One invocation's steps from a start: stepping, logging, evaluating, checkpointing."""

  def __init__(self, prepared: _Prepared, checkpointer: Checkpointer, begin: Start,
               sampler: Sampler | None, lock: DirectoryLock | None = None):
    config, setup = prepared.config, prepared.setup
    self.lock = lock  # the run directory's, on the writing process
    self.prepared, self.config, self.setup, self.checkpointer = prepared, config, setup, checkpointer
    self.begin, self.state, self.last_saved = begin, begin.state, begin.step
    self.batches = self.rollout = None
    if prepared.train_source is None:
      self.rollout = Rollout(config, setup, prepared.corpus.prompts, prepared.corpus.tokenizer,
                             sampler, prepared.rewards, prepared.held_out)
    else:
      self.batches = TrainBatches(prepared.train_source, setup.placement,
                                  num_steps=config.train.steps, start=begin.step,
                                  workers=config.data.workers, state=begin.data_state)
    self.eval_fn = jit_eval_step(setup.model, setup.objective, setup.placement,
                                 setup.shardings.params, loss_chunk=config.train.loss_chunk_size,
                                 preference=setup.preference, reference=setup.reference)
    self.writer = MetricsWriter(prepared.run.path, total_steps=config.train.steps,
                                start_step=begin.step, enabled=prepared.writes,
                                wandb=config.logging.wandb, config=config.to_dict())
    self.nonfinite = NonFiniteSteps(config.train.nan_policy,
                                    trained_part(setup.abstract_state.params, config.model),
                                    skipped=begin.skipped_steps, report=prepared.writes)
    self.speed = _Throughput(config, begin.step)
    self.t_start = time.perf_counter()

  def run(self, end: int) -> TrainResult:
    """Steps from the start up to step `end`, or to the first signal; then closes."""
    start, row, stopped_by = self.begin.step, None, None
    if start and self.prepared.writes:
      log.info("resuming %s from step %d", self.prepared.run.path, start)
    try:
      with PreemptionGuard() as guard:
        for step in range(start, end):
          batch = self.rollout.batch(self.state, step) if self.rollout else next(self.batches)
          self.state, metrics = self.setup.step(self.state, batch)
          done = step + 1
          self.nonfinite.add(done, metrics)
          self.nonfinite.check(last_saved=self.last_saved, keep_newest=True)
          if self.speed.started(done, metrics):
            _write_run_start(self.prepared, self.begin)
          saves = done % self.config.train.checkpoint_every == 0 or done == end
          failed = (self.checkpointer.room_error(done, self._saved_state())
                    if saves or guard.requested else self.checkpointer.write_error())
          lost = self.lock is not None and self.lock.lost
          stop, write_failed, lost = any_process_each(guard.requested, failed is not None, lost)
          stop = stop and self._round_ends(done)  # GRPO: a round's steps share its samples
          if lost:  # another process took the run directory: write nothing more, anywhere
            raise self._lost_lock()
          row = self._log(done, metrics) or row
          if write_failed:
            raise self._write_failed()
          if saves or stop:
            self.nonfinite.check(last_saved=self.last_saved)  # a poisoned state is never written
            self._save(done)
          if stop:
            stopped_by = self._stop(done, guard.signal_name)
            end = done
            break
        self.nonfinite.check(last_saved=self.last_saved)
    finally:
      if self.batches is not None:
        self.batches.close()
      self.writer.close()
    return TrainResult(start_step=start, final_step=max(start, end), last_row=row,
                       stopped_by=stopped_by)

  def _log(self, done: int, metrics: dict) -> dict[str, Any] | None:
    """Writes step `done`'s metrics row (with eval metrics when due) if it is a logging step."""
    train = self.config.train
    held_out = self.prepared.eval_source is not None or self.prepared.held_out is not None
    is_eval = train.eval_every and held_out and (done % train.eval_every == 0
                                                 or done == train.steps)
    if not (is_eval or done % train.log_every == 0 or done == train.steps):
      return None
    self.nonfinite.check(last_saved=self.last_saved)
    row = _metrics_row(self.config, done, jax.device_get(metrics), self.speed.rate(done),
                       elapsed=self._elapsed(), skipped_steps=self.nonfinite.skipped,
                       skipped_records=self.prepared.corpus.skipped_records)
    if self.rollout is not None:  # the rewards of the round this step trained on
      row.update(self.rollout.metrics)
    if is_eval and self.rollout is not None:  # GRPO: the held-out prompts' rewards
      row.update(self.rollout.evaluate(self.state))
    elif is_eval:
      row.update(evaluate(self.eval_fn, self.state.params, self.prepared.eval_source,
                          self.setup.placement, train.eval_batches))
    self.writer.write(row)
    self.writer.progress(done, row)
    return row

  def _round_ends(self, done: int) -> bool:
    return self.rollout is None or done % self.rollout.mu == 0

  def _saved_state(self):
    """What a checkpoint holds: the state, or (a LoRA run with a base) its trained part."""
    if self.begin.base is None:
      return self.state
    return self.state.replace(params=trained_part(self.state.params, self.config.model))

  def _save(self, done: int) -> None:
    self.checkpointer.save(done, self._saved_state(), CheckpointRecord.trained(
        step=done, lmjax_version=__version__, config=self.config.to_dict(),
        seed=self.config.train.seed,
        data_iterator=None if self.batches is None else self.batches.state(),
        skipped_steps=self.nonfinite.skipped, elapsed_seconds=self._elapsed(),
        base=self.begin.base))
    self.last_saved = done

  def _lost_lock(self) -> UserError:
    """The writer lost the run directory's lock (another process judged it stale and took it)."""
    if self.lock is not None:
      return self.lock.lost_error()
    return UserError(f"the writing process lost its lock on {self.prepared.run.path} to another "
                     f"process: stopped (its log names the new holder).")

  def _write_failed(self) -> WriteFailed:
    """This process's failed checkpoint write, or another's, after which every process stops."""
    error = self.checkpointer.write_error()
    return error or WriteFailed(f"another process could not write a checkpoint to "
                                f"{self.checkpointer.directory} (its log says why); training "
                                f"stopped. Rerun the same command once that is fixed.")

  def _stop(self, done: int, signal_name: str | None) -> str:
    """Waits for step `done`'s checkpoint after a signal; returns what stopped the run."""
    self.checkpointer.wait()
    stopped_by = signal_name or "a signal on another process"
    if self.prepared.writes:
      log.warning("stopped by %s: saved step %d to %s; rerun the same command to resume",
                  stopped_by, done, self.prepared.run.checkpoints / str(done))
    return stopped_by

  def _elapsed(self) -> float:
    return self.begin.elapsed_seconds + time.perf_counter() - self.t_start


class _Throughput:
  """Tokens per second between logged steps, timed from the end of the first (compiling) step."""

  def __init__(self, config: Config, start: int):
    self.tokens_per_step = config.train.batch_size * config.train.seq_len
    self.mark_time, self.mark_step = None, start

  def started(self, done: int, metrics) -> bool:
    """Whether this was the first step (then it has finished)."""
    if self.mark_time is not None:
      return False
    jax.block_until_ready(metrics)  # the first step compiles: time throughput from its end
    self.mark_time, self.mark_step = time.perf_counter(), done
    return True

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
  if config.model.head.value != "causal_lm" or "rewards_chosen" in metrics:
    row["accuracy"] = float(metrics["accuracy"])  # a preference objective's: pairs ranked right
  for name in ("rewards_chosen", "rewards_rejected", "rewards_margin", "kl", "clip_fraction"):
    if name in metrics:
      row[name] = float(metrics[name])
  if "moe_aux_loss" in metrics:  # `loss` is the objective's; the step also minimised this
    row["moe_aux_loss"] = float(metrics["moe_aux_loss"])
  return row
