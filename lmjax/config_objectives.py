"""The run config's objective sections: `train.preference` (dpo, ipo, orpo, simpo) and
`train.grpo`, their settings named as trl's configs name them.

A GRPO run (`train.objective: grpo`) samples `num_generations` completions for each of
`train.batch_size / num_generations` prompts, scores them with the `rewards`, and takes
`num_iterations` optimisation steps on that round (lmjax.train.rollout); `train.batch_size`
counts completions, and `train.steps` counts optimisation steps, so a round spans
`num_iterations` of them and checkpoints fall at a round's end.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import ClassVar, Mapping

from lmjax.errors import UserError
from lmjax.objectives import DpoLoss
from lmjax.ranges import FRACTION, NON_NEGATIVE, POSITIVE, Range, check_ranges

BUILT_IN_REWARDS = ("format", "exact_answer")


class Reference(enum.Enum):
  """Where dpo, ipo and GRPO's KL term (train.grpo.beta > 0) take the reference model's
  log-probs from."""
  AUTO = "auto"                  # adapters_off with LoRA, else frozen_copy
  ADAPTERS_OFF = "adapters_off"  # the LoRA base: the same params with the adapters zeroed
  FROZEN_COPY = "frozen_copy"    # a copy of the initial params, sharded like the policy's


@dataclasses.dataclass(frozen=True)
class PreferenceConfig:  # train.preference.*, as trl names them
  RANGES: ClassVar[Mapping[str, Range]] = {"beta": POSITIVE, "simpo_gamma": NON_NEGATIVE,
      "label_smoothing": Range(0, 0.5, high_open=True, why="a flip probability below 1/2")}
  beta: float = 0.1              # DPO/ORPO/SimPO temperature; IPO's tau (target gap 1/(2 beta))
  label_smoothing: float = 0.0   # dpo (sigmoid, robust), simpo: the chance a label is flipped
  simpo_gamma: float = 0.5       # simpo: the target reward margin (divided by beta, as trl does)
  reference: Reference = Reference.AUTO  # dpo, ipo (lmjax.train.reference)
  loss_type: DpoLoss = DpoLoss.SIGMOID    # dpo: trl's DPO loss types (lmjax.objectives.DpoLoss)

  def __post_init__(self):
    check_ranges(self, "train.preference", self.RANGES)


class GrpoLoss(enum.Enum):
  GRPO = "grpo"  # each completion's token mean, then the mean over completions (trl's "grpo")
  BNPO = "bnpo"  # the token mean over the batch (trl's "bnpo" on one process)
  DAPO = "dapo"  # the token mean over the global batch (trl's "dapo"; lmjax's bnpo is that too)
  DR_GRPO = "dr_grpo"  # the tokens' sum / (completions x max_new_tokens) (trl's "dr_grpo")


class RewardScale(enum.Enum):
  GROUP = "group"  # advantages divided by their group's standard deviation (+1e-4)
  NONE = "none"    # advantages are the rewards minus their group's mean (Dr. GRPO)


class RewardErrors(enum.Enum):
  STOP = "stop"  # a reward that raises or returns no finite number ends the run (exit 2)
  SKIP = "skip"  # that function leaves the completion unscored (counted in reward_errors)


@dataclasses.dataclass(frozen=True)
class GrpoConfig:  # train.grpo.*
  RANGES: ClassVar[Mapping[str, Range]] = {
      "num_generations": Range(2, why="advantages compare completions of one prompt"),
      "max_new_tokens": Range(1), "num_iterations": Range(1), "top_k": Range(1),
      "temperature": POSITIVE, "top_p": Range(0, 1, low_open=True), "epsilon": FRACTION,
      "epsilon_high": NON_NEGATIVE, "beta": NON_NEGATIVE}
  num_generations: int = 4       # G: completions sampled per prompt
  max_new_tokens: int = 32       # per completion; the longest prompt + this fit train.seq_len
  temperature: float = 1.0       # sampling; top_k and top_p (null: off) filter as generate does
  top_k: int | None = None
  top_p: float | None = None
  num_iterations: int = 1        # mu: optimisation steps on each round's completions
  epsilon: float = 0.2           # the ratio is clipped to [1 - epsilon, 1 + epsilon_high]
  epsilon_high: float | None = None  # null: epsilon
  beta: float = 0.0              # the KL penalty (k3 estimator) to the reference model
                                 # (train.preference.reference); 0 needs no reference
  loss_type: GrpoLoss = GrpoLoss.GRPO
  scale_rewards: RewardScale = RewardScale.GROUP
  # Reward functions: "module:function" import paths, called as f(prompt, completion, row) ->
  # float (row: the data row, its other fields included), or the built-ins "format" (1.0 when
  # the completion matches format_regex in full, else 0.0) and "exact_answer" (1.0 when the
  # stripped completion equals the row's answer_field, else 0.0).
  rewards: tuple[str, ...] = ()
  reward_weights: tuple[float, ...] = ()  # one per reward (empty: 1.0 each); the weighted sum
  format_regex: str = r"<answer>.*</answer>"
  answer_field: str = "answer"
  reward_errors: RewardErrors = RewardErrors.STOP

  def __post_init__(self):
    check_ranges(self, "train.grpo", self.RANGES)
    for name in self.rewards:
      module, _, function = name.partition(":")
      if name not in BUILT_IN_REWARDS and not (module.strip() and function.strip()):
        raise UserError(f"train.grpo.rewards: {name!r} is neither a built-in reward "
                        f"({', '.join(BUILT_IN_REWARDS)}) nor an import path module:function "
                        f"(e.g. my_rewards:length_penalty).")
    if self.reward_weights and len(self.reward_weights) != len(self.rewards):
      raise UserError(f"train.grpo.reward_weights has {len(self.reward_weights)} weight(s) for "
                      f"{len(self.rewards)} reward(s) in train.grpo.rewards: give one each, or "
                      f"none (1.0 each).")
    try:
      re.compile(self.format_regex)
    except re.error as e:
      raise UserError(f"train.grpo.format_regex={self.format_regex!r} is not a regular "
                      f"expression: {e}.") from None


def check_grpo_train(train) -> None:
  """What a GRPO run asks of the `train` section (lmjax.config.TrainConfig)."""
  grpo, mu = train.grpo, train.grpo.num_iterations
  if not grpo.rewards:
    raise UserError("train.objective=grpo needs rewards: set train.grpo.rewards to import paths "
                    "module:function and/or the built-ins format, exact_answer.")
  if train.batch_size % grpo.num_generations:
    raise UserError(f"train.batch_size={train.batch_size} counts completions: it must be a "
                    f"multiple of train.grpo.num_generations={grpo.num_generations}.")
  for key in ("steps", "checkpoint_every"):
    if getattr(train, key) % mu:
      raise UserError(f"train.{key}={getattr(train, key)} must be a multiple of "
                      f"train.grpo.num_iterations={mu}: checkpoints fall at the end of a "
                      f"generation round, so that a resumed run samples what it would have.")
