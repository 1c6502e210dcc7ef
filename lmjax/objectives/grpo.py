"""GRPO's loss.

The clipped surrogate of PPO on sampled completions with group-normalised advantages A, plus
β times the k3 estimate of KL(π ‖ π_ref), as trl 1.16's GRPOTrainer._compute_loss computes it
(tests/test_grpo.py runs its code on the same inputs):

    r = exp(log π - log π_old),  per token  -min(r A, clip(r, 1 - ε_low, 1 + ε_high) A)
                                            + β (exp(log π_ref - log π) - (log π_ref - log π) - 1)

averaged over each completion's tokens then over the completions (loss_type grpo), over all
the batch's completion tokens (bnpo, dapo), or summed and divided by the completions times
max_new_tokens (dr_grpo). π_old is the policy that sampled the completions (the same params
when a round has one optimisation step: then only the gradient flows).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lmjax.objectives.tokens import LossSums


class GrpoSettings(NamedTuple):
  """train.grpo's numbers (lmjax.config_objectives.GrpoConfig), as the step takes them."""

  epsilon_low: float = 0.2
  epsilon_high: float = 0.2
  beta: float = 0.0
  per_completion: bool = True  # loss_type grpo; False: bnpo, dapo (or dr_grpo:)
  on_policy: bool = True       # num_iterations 1: π_old is the current params
  constant_length: int = 0     # dr_grpo: max_new_tokens, the divisor of each completion's sum


GRPO_SUMS = ("kl", "clipped", "completion_tokens")


def grpo_sums(logps: jax.Array, old_logps: jax.Array, ref_logps: jax.Array,
              advantages: jax.Array, mask: jax.Array, settings: GrpoSettings
              ) -> tuple[LossSums, dict[str, jax.Array]]:
  """The GRPO loss summed over completions (or tokens, bnpo) and their count (`LossSums`), with
  the sums {kl, clipped, completion_tokens} over completion tokens for the metrics.

  logps, old_logps, ref_logps, mask [batch, len]: the log-probs of each position's target under
  the policy, the sampling policy and the reference, and 1 where the target is a completion
  token; advantages [batch].
  """
  mask = mask.astype(jnp.float32)
  if settings.on_policy:
    old_logps = jax.lax.stop_gradient(logps)
  ratio = jnp.exp(logps - old_logps)  # [batch, len]
  a = advantages[:, None]
  clipped_ratio = jnp.clip(ratio, 1 - settings.epsilon_low, 1 + settings.epsilon_high)
  per_token = -jnp.minimum(ratio * a, clipped_ratio * a)
  kl = jnp.zeros_like(per_token)
  if settings.beta:
    kl = jnp.exp(ref_logps - logps) - (ref_logps - logps) - 1
    per_token = per_token + settings.beta * kl
  tokens = jnp.sum(mask, axis=-1)  # [batch]
  if settings.per_completion:
    loss = jnp.sum(jnp.sum(per_token * mask, axis=-1) / jnp.maximum(tokens, 1.0))
    weight = jnp.sum(tokens > 0).astype(jnp.float32)
  elif settings.constant_length:  # the same divisor for every completion, whatever its length
    loss, weight = jnp.sum(per_token * mask) / settings.constant_length, jnp.sum(tokens > 0) * 1.0
  else:
    loss, weight = jnp.sum(per_token * mask), jnp.sum(tokens)
  clipped = (((ratio < 1 - settings.epsilon_low) & (a < 0))
             | ((ratio > 1 + settings.epsilon_high) & (a > 0)))
  return LossSums(loss, weight, jnp.zeros((), jnp.float32)), {
      "kl": jax.lax.stop_gradient(jnp.sum(kl * mask)), "clipped": jnp.sum(clipped * mask),
      "completion_tokens": jnp.sum(tokens)}
