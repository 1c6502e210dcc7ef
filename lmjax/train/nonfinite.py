"""Acting on steps whose loss or gradient norm is not finite (`train.nan_policy`).

The train step already applied no update for such a step; this decides what the loop does:
stop with `NonFiniteLoss` (exit code 3) naming the step, the loss and the first non-finite
gradient, or count the step and go on. Checks trail the device by one step so that the host
never waits for the step it just dispatched.
"""

from __future__ import annotations

import logging
from typing import Any

import jax

from lmjax.config import NanPolicy
from lmjax.errors import NonFiniteLoss

log = logging.getLogger(__name__)


class NonFiniteSteps:
  """Steps whose finiteness is not checked yet, and how many were skipped."""

  def __init__(self, policy: NanPolicy, params: Any, *, skipped: int, report: bool):
    """`report`: whether this process logs skipped steps (the writing process only)."""
    self.policy, self.params, self.skipped, self.report = policy, params, skipped, report
    self._unchecked: list[tuple[int, dict]] = []  # (step, metrics)

  def add(self, step: int, metrics: dict) -> None:
    self._unchecked.append((step, metrics))

  def check(self, *, last_saved: int, keep_newest: bool = False) -> None:
    """Acts on the unchecked steps; `keep_newest` leaves the newest one for later."""
    while len(self._unchecked) > keep_newest:
      step, metrics = self._unchecked.pop(0)
      if bool(metrics["finite"]):
        continue
      loss, bad_leaf = float(metrics["loss"]), int(metrics["first_nonfinite_grad"])
      if self.policy is NanPolicy.SKIP_STEP:
        self.skipped += 1
        if self.report:
          log.warning("step %d: non-finite loss %s (grad_norm %s): update skipped "
                      "(train.nan_policy=skip_step; %d skipped so far)", step, loss,
                      float(metrics["grad_norm"]), self.skipped)
        continue
      raise NonFiniteLoss(
          f"step {step}: the loss is {loss} and the first non-finite gradient is "
          f"{leaf_path(self.params, bad_leaf)}; no update was applied and nothing after step "
          f"{last_saved} was saved (the latest checkpoint is {last_saved or 'none'}). Lower "
          f"train.learning_rate or raise train.warmup_steps and rerun to resume from it, or "
          f"set train.nan_policy=skip_step to skip such steps.")


def leaf_path(params: Any, index: int) -> str:
  """The '/'-joined path of leaf `index` of `params` (in jax.tree.leaves order)."""
  if index < 0:
    return "none (the gradients are finite; the loss itself is not)"
  path, _ = jax.tree_util.tree_flatten_with_path(params)[0][index]
  return "params/" + "/".join(str(getattr(k, "key", k)) for k in path)
