"""GRPO's generation rounds: prompts -> sampled completions -> rewards -> a batch to train on.

Round r (train steps r * mu to r * mu + mu - 1, mu = `train.grpo.num_iterations`) takes
`train.batch_size / G` prompts in a shuffled order that is a function of (seed, r) alone (epoch
e is `default_rng([seed, e]).permutation`), samples G completions of each with the sampler the
caller passes (lmjax.infer.generate: the KV-cache decoder, jitted, reading the train state's
params where they lie on the mesh; training and inference know nothing of each other, so the
command line hands it in), with a key from (seed, r). A resumed run therefore samples what an
uninterrupted one would have: checkpoints fall at a round's end (lmjax.config_objectives).

The completions are scored on the host (lmjax.train.rewards), their group-normalised
advantages computed, and each becomes a row: prompt + completion as segment 1, the completion
(with its end-of-sequence id, if it emitted one) in loss_mask. With mu > 1 the sampling
policy's log-probs are computed once for the round; with beta > 0 the reference's (the LoRA
base with the adapters off, or the frozen copy of a full fine-tuning run's initial params,
lmjax.train.reference) too; both jitted on the same mesh. `metrics` holds the round's reward
statistics for metrics.jsonl.

Held-out evaluation (`train.eval_every`) decodes one greedy completion of each held-out prompt
(`data.eval_paths`: prompts a run never trains on) and logs the mean rewards as `eval_reward_*`:
greedy, so the figures follow from the params alone, and a resumed run logs what an
uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np

from lmjax.config import Config
from lmjax.config_objectives import RewardScale
from lmjax.data.examples.prompts import Prompts
from lmjax.data.pipeline.corpus import load_corpus
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.run.record import TrainState
from lmjax.train.rewards import Reward, group_advantages, score
from lmjax.train.inputs import batch_spec
from lmjax.train.setup import StepSetup
from lmjax.train.step import jit_log_probs

# lmjax.infer.generate's signature: (model, params, prompts, *, max_new_tokens, temperature,
# top_k, top_p, num_return_sequences, key, eos_id, pad_id) -> new ids per row.
Sampler = Callable[..., list[list[int]]]


def prompt_order(seed: int, round_: int, per_round: int, num_prompts: int) -> np.ndarray:
  """Which prompts round `round_` takes: [per_round] indices, every prompt once per epoch."""
  positions = round_ * per_round + np.arange(per_round)
  epochs = positions // num_prompts
  out = np.empty(per_round, np.int64)
  for epoch in np.unique(epochs):
    permutation = np.random.default_rng([seed, int(epoch)]).permutation(num_prompts)
    here = epochs == epoch
    out[here] = permutation[positions[here] % num_prompts]
  return out


def completion_rows(prompts: Sequence[list[int]], completions: Sequence[list[int]],
                    seq_len: int) -> dict[str, np.ndarray]:
  """Rows {input_ids, segment_ids, positions, loss_mask} [len(completions), seq_len]: each
  prompt followed by its completion (segment 1, right-padded), the completion in loss_mask."""
  out = {name: np.zeros((len(completions), seq_len), np.int32)
         for name in ("input_ids", "segment_ids", "positions", "loss_mask")}
  for r, (prompt, completion) in enumerate(zip(prompts, completions)):
    n = len(prompt) + len(completion)
    out["input_ids"][r, :n] = prompt + completion
    out["segment_ids"][r, :n] = 1
    out["positions"][r, :n] = np.arange(n)
    out["loss_mask"][r, len(prompt):n] = 1
  return out


def held_out_prompts(config: Config, tokenizer: Tokenizer) -> Prompts | None:
  """The prompts of `data.eval_paths`, read and checked as the training prompts are (None:
  no eval_paths, no held-out evaluation)."""
  if not config.data.eval_paths:
    return None
  data = dataclasses.replace(config.data, paths=config.data.eval_paths, eval_paths=())
  return load_corpus(data, batch_spec(config), tokenizer=tokenizer).prompts


class Rollout:
  """The batch of each train step of a GRPO run, generated at each round's first step."""

  def __init__(self, config: Config, setup: StepSetup, prompts: Prompts, tokenizer: Tokenizer,
               sampler: Sampler, rewards: list[Reward], held_out: Prompts | None = None):
    self.config, self.setup, self.prompts, self.tokenizer = config, setup, prompts, tokenizer
    self.sampler, self.rewards, self.held_out = sampler, rewards, held_out
    grpo, chunk = config.train.grpo, config.train.loss_chunk_size
    self.grpo, self.mu = grpo, grpo.num_iterations
    params = setup.shardings.params
    self.old_logps = (jit_log_probs(setup.model, setup.placement, params, reference=False,
                                    loss_chunk=chunk) if self.mu > 1 else None)
    # The reference: the frozen copy where the run keeps one (full fine-tuning), else the LoRA
    # base (the adapters off).
    self.ref_logps = (jit_log_probs(setup.model, setup.placement, params,
                                    reference=setup.reference is None, loss_chunk=chunk)
                      if grpo.beta else None)
    self.key = jax.random.split(jax.random.key(config.train.seed))[1]  # not the dropout keys'
    self.metrics: dict[str, Any] = {}
    self._batch = None

  def batch(self, state: TrainState, step: int) -> dict[str, jax.Array]:
    """The batch of train step `step` (0-based): a new round's at a multiple of mu."""
    if step % self.mu == 0 or self._batch is None:
      self._batch = self._round(state, step // self.mu)
    return self._batch

  def _round(self, state: TrainState, round_: int) -> dict[str, jax.Array]:
    train, grpo, group = self.config.train, self.grpo, self.grpo.num_generations
    chosen = prompt_order(train.seed, round_, train.batch_size // group, len(self.prompts))
    prompt_ids = [self.prompts.ids[i] for i in chosen]
    eos = self.tokenizer.eos_id
    completions = self.sampler(
        self.setup.model, state.params, prompt_ids, max_new_tokens=grpo.max_new_tokens,
        temperature=grpo.temperature, top_k=grpo.top_k, top_p=grpo.top_p,
        num_return_sequences=group, key=jax.random.fold_in(self.key, round_), eos_id=eos,
        pad_id=0)
    each = lambda values: [values[i] for i in chosen for _ in range(group)]  # G rows a prompt
    texts = [self.tokenizer.decode(c[:-1] if c and c[-1] == eos else c) for c in completions]
    scores, skipped = score(self.rewards, each([r["prompt"] for r in self.prompts.rows]), texts,
                            each(self.prompts.rows), each(self.prompts.wheres),
                            errors=grpo.reward_errors)
    totals, advantages = group_advantages(scores, [r.weight for r in self.rewards], group,
                                          scale=grpo.scale_rewards is RewardScale.GROUP)
    rows = completion_rows(each(self.prompts.ids), completions, train.seq_len)
    rows["advantages"] = advantages.astype(np.float32)
    rows["old_logps"] = rows["ref_logps"] = np.zeros(rows["input_ids"].shape, np.float32)
    placement = self.setup.placement
    local = placement.process_batch_positions(train.batch_size)
    batch = placement.shard_batch({k: v[local] for k, v in rows.items()}, train.batch_size)
    if self.old_logps is not None:
      batch["old_logps"] = self.old_logps(state.params, batch)
    if self.ref_logps is not None:
      reference = state.params if self.setup.reference is None else self.setup.reference
      batch["ref_logps"] = self.ref_logps(reference, batch)
    self.metrics = self._round_metrics(scores, totals, completions, eos, skipped)
    return batch

  def evaluate(self, state: TrainState) -> dict[str, Any]:
    """The held-out prompts' rewards, one greedy completion each, `train.batch_size` prompts a
    call (the last call padded with the first prompts, so that every call has one shape)."""
    prompts, width, eos = self.held_out, self.config.train.batch_size, self.tokenizer.eos_id
    completions = []
    for start in range(0, len(prompts), width):
      ids = prompts.ids[start:start + width]
      completions += self.sampler(
          self.setup.model, state.params, ids + prompts.ids[:width - len(ids)],
          max_new_tokens=self.grpo.max_new_tokens, temperature=0.0, eos_id=eos,
          pad_id=0)[:len(ids)]
    texts = [self.tokenizer.decode(c[:-1] if c and c[-1] == eos else c) for c in completions]
    scores, skipped = score(self.rewards, [r["prompt"] for r in prompts.rows], texts,
                            prompts.rows, prompts.wheres, errors=self.grpo.reward_errors)
    totals, _ = group_advantages(scores, [r.weight for r in self.rewards], 1, scale=False)
    metrics = self._round_metrics(scores, totals, completions, eos, skipped)
    return {f"eval_{k}": v for k, v in metrics.items() if not k.endswith("_std")}

  def _round_metrics(self, scores: np.ndarray, totals: np.ndarray,
                     completions: list[list[int]], eos: int | None, skipped: int
                     ) -> dict[str, Any]:
    lengths = np.array([len(c) for c in completions], np.float64)
    ended = np.array([bool(c) and c[-1] == eos for c in completions])
    stat = lambda x, f: None if np.isnan(x).all() else float(f(x[~np.isnan(x)]))
    metrics = {"reward_mean": stat(totals, np.mean), "reward_std": stat(totals, np.std),
               "completion_length": float(lengths.mean()),
               "completions_clipped": float(1 - ended.mean()),  # hit max_new_tokens
               "reward_errors": skipped}  # calls left unscored (reward_errors: skip)
    for j, reward in enumerate(self.rewards):
      metrics[f"reward_{reward.short}_mean"] = stat(scores[:, j], np.mean)
      metrics[f"reward_{reward.short}_std"] = stat(scores[:, j], np.std)
    return metrics
