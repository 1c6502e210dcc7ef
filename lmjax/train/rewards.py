"""GRPO's reward functions: import paths and built-ins resolved up front, called with checks.

`train.grpo.rewards` names each function as `module:function` (imported when the run starts,
before anything is written: a path that does not resolve is a UserError naming it) or as a
built-in: `format` (1.0 when the completion matches `train.grpo.format_regex` in full, else 0.0)
and `exact_answer` (1.0 when the stripped completion equals the row's `train.grpo.answer_field`,
else 0.0). Each is called as `f(prompt, completion, row)`: the prompt as the row gives it (text
or chat messages), the completion's text, the whole row. A call that raises or returns anything
but a finite number ends the run with a UserError naming the function, the row and the fix, or,
under `train.grpo.reward_errors: skip`, leaves that completion unscored by that function (NaN,
left out of its group's statistics, as trl treats a reward of None) and is counted.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import numbers
import os
import re
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from lmjax.config_objectives import BUILT_IN_REWARDS, GrpoConfig, RewardErrors
from lmjax.errors import UserError

log = logging.getLogger(__name__)

RewardFn = Callable[[Any, str, dict], float]


@dataclasses.dataclass(frozen=True)
class Reward:
  name: str        # as the config names it; metrics use its last part (`rewards/<short>`)
  fn: RewardFn
  weight: float

  @property
  def short(self) -> str:
    return self.name.rpartition(":")[2]


def _built_in(name: str, grpo: GrpoConfig) -> RewardFn:
  if name == "format":
    pattern = re.compile(grpo.format_regex, re.DOTALL)
    return lambda prompt, completion, row: float(pattern.fullmatch(completion) is not None)
  field = grpo.answer_field

  def exact_answer(prompt, completion, row):
    if field not in row:
      raise ValueError(f"the row has no field {field!r} (it has {sorted(row)}): set "
                       f"train.grpo.answer_field to the field holding the answer")
    return float(completion.strip() == str(row[field]).strip())
  return exact_answer


def _imported(name: str) -> RewardFn:
  module_name, _, function = (part.strip() for part in name.partition(":"))
  fix = (f"check the spelling, and that the module's directory is on PYTHONPATH (or is the "
         f"working directory, {os.getcwd()})")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    raise UserError(f"train.grpo.rewards: cannot import {module_name!r} for the reward {name!r} "
                    f"({e}): {fix}.") from None
  except Exception as e:  # noqa: BLE001  the user's module failed while importing
    raise UserError(f"train.grpo.rewards: importing {module_name!r} for the reward {name!r} "
                    f"raised {type(e).__name__}: {e}. Fix the module.") from None
  fn = getattr(module, function, None)
  if fn is None:
    names = sorted(n for n in vars(module) if callable(getattr(module, n)) and
                   not n.startswith("_"))
    raise UserError(f"train.grpo.rewards: module {module_name!r} has no {function!r} for the "
                    f"reward {name!r} (its functions: {', '.join(names) or 'none'}).")
  if not callable(fn):
    raise UserError(f"train.grpo.rewards: {name!r} is a {type(fn).__name__}, not a function "
                    f"f(prompt, completion, row) -> float.")
  return fn


def resolve_rewards(grpo: GrpoConfig) -> list[Reward]:
  """The configured reward functions, imported and weighted; UserError for a path that does
  not resolve."""
  weights = grpo.reward_weights or (1.0,) * len(grpo.rewards)
  return [Reward(name, _built_in(name, grpo) if name in BUILT_IN_REWARDS else _imported(name),
                 float(weight)) for name, weight in zip(grpo.rewards, weights)]


def score(rewards: Sequence[Reward], prompts: Sequence[Any], completions: Sequence[str],
          rows: Sequence[dict], wheres: Sequence[str], *, errors: RewardErrors
          ) -> tuple[np.ndarray, int]:
  """[completions, rewards] float64 scores (NaN: unscored under skip) and how many calls were
  skipped. A call that raises or returns no finite number is a UserError naming the function
  and the row (under errors=stop)."""
  out = np.full((len(completions), len(rewards)), np.nan)
  skipped = 0
  for j, reward in enumerate(rewards):
    for i, (prompt, completion, row, where) in enumerate(zip(prompts, completions, rows, wheres)):
      try:
        out[i, j] = _checked(reward, prompt, completion, row, where)
      except UserError as e:
        if errors is RewardErrors.STOP:
          raise
        if not skipped:
          log.warning("%s (train.grpo.reward_errors: skip leaves it unscored; further ones are "
                      "counted in reward_errors)", e)
        skipped += 1
  return out, skipped


def _checked(reward: Reward, prompt, completion: str, row: dict, where: str) -> float:
  fix = ("Fix the function, or set train.grpo.reward_errors: skip to leave such completions "
         "unscored by it (counted in metrics.jsonl's reward_errors).")
  try:
    value = reward.fn(prompt, completion, row)
  except Exception as e:  # noqa: BLE001  the user's function: any failure is reported, no traceback
    raise UserError(f"the reward {reward.name!r} raised {type(e).__name__}: {e} (scoring a "
                    f"completion of the prompt at {where}). {fix}") from None
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise UserError(f"the reward {reward.name!r} returned {_shown(value)} for a completion of "
                    f"the prompt at {where}; a reward must return a float. {fix}")
  if not math.isfinite(float(value)):
    raise UserError(f"the reward {reward.name!r} returned {float(value)} for a completion of "
                    f"the prompt at {where}; a reward must be a finite number. {fix}")
  return float(value)


def _shown(value: Any) -> str:
  text = repr(value)
  return f"{type(value).__name__} {text[:60] + '…' if len(text) > 60 else text}"


def group_advantages(rewards: np.ndarray, weights: Sequence[float], group: int, *,
                     scale: bool) -> tuple[np.ndarray, np.ndarray]:
  """(each completion's total reward, its advantage) [completions], as trl's GRPOTrainer
  computes them (sum_then_normalize): the weighted sum of its scores (NaN ones left out; all
  NaN: unscored), minus its group's mean, divided (`scale`) by the group's sample standard
  deviation + 1e-4; an unscored completion's advantage is 0. `rewards` [completions, funcs],
  the `group` completions of a prompt consecutive."""
  weighted = rewards * np.asarray(weights, np.float64)[None, :]
  total = np.where(np.isnan(rewards).all(axis=1), np.nan, np.nansum(weighted, axis=1))
  grouped = total.reshape(-1, group)  # [prompts, group]
  with warnings.catch_warnings():  # an unscored group, or one of a single scored completion
    warnings.simplefilter("ignore", RuntimeWarning)
    mean = np.nanmean(grouped, axis=1, keepdims=True)
    std = np.nanstd(grouped, axis=1, keepdims=True, ddof=1)
    advantages = grouped - mean
    if scale:
      advantages = advantages / (std + 1e-4)
  return total, np.nan_to_num(advantages.reshape(-1), nan=0.0)

