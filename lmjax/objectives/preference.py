"""Preference objectives.

DPO (sigmoid, cDPO with label smoothing, or trl's other DPO loss types: `DpoLoss`), IPO, ORPO
and SimPO, as trl 1.16 computes them (tests/test_preference.py checks losses and gradients
against its DPOTrainer, CPOTrainer and ORPOTrainer code; the smoothed sigmoid is CPOTrainer's):

    dpo    -(1-ε) log σ(β Δ) - ε log σ(-β Δ),
           Δ = (log π(c) - log π_ref(c)) - (log π(r) - log π_ref(r))
    ipo    (Δc/|c| - Δr/|r| - 1/(2β))²           the log-ratios averaged over answer tokens
    orpo   NLL(prompt + chosen) - β log σ(log odds(c̄) - log odds(r̄)),
           odds(p̄) = p̄ / (1 - p̄)
    simpo  -(1-ε) log σ(β (c̄ - r̄) - γ) - ε log σ(-(β (c̄ - r̄) - γ))

where log π(c) sums the answer tokens' log-probs and c̄ averages them. ORPO's NLL is the token
mean over the whole chosen sequence, prompt included, as trl computes it. The implicit rewards
people read are β (log π - log π_ref) (dpo, ipo) and β c̄ (orpo, simpo); the accuracy is how
often the chosen answer's reward is the higher.

A batch row holds one pair (lmjax.data.examples.preference): prompt + chosen is segment 1,
prompt + rejected segment 2, `loss_mask` marks the answers. Losses come back as sums over the
pairs (`LossSums`: loss, pairs, pairs ranked right) plus the reward sums, so gradient
accumulation and devices combine as for the other objectives; ORPO's NLL joins as its
micro-batch token mean times the micro-batch's pairs.
"""

from __future__ import annotations

import enum
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from lmjax.data.spec import Objective
from lmjax.objectives.tokens import LossSums, causal_lm_targets, position_chunks, sft_targets

REWARD_SUMS = ("chosen_reward", "rejected_reward")


class DpoLoss(enum.Enum):
  """dpo's loss of the log-ratios δc = log π(c) - log π_ref(c), δr likewise, Δ = δc - δr, as
  trl 1.16's DPOTrainer computes its `loss_type`s (ε: label_smoothing)."""

  SIGMOID = "sigmoid"            # -(1-ε) log σ(βΔ) - ε log σ(-βΔ)   (DPO; cDPO with ε > 0)
  HINGE = "hinge"                # max(0, 1 - βΔ)   (SLiC)
  ROBUST = "robust"              # (-(1-ε) log σ(βΔ) + ε log σ(-βΔ)) / (1 - 2ε)   (rDPO)
  BCO_PAIR = "bco_pair"          # -log σ(β δc) - log σ(-β δr)
  SPPO_HARD = "sppo_hard"        # (δc - 1/(2β))² + (δr + 1/(2β))²
  NCA_PAIR = "nca_pair"          # -log σ(β δc) - ½ log σ(-β δc) - ½ log σ(-β δr)
  APO_ZERO = "apo_zero"          # 1 - σ(β δc) + σ(β δr)
  APO_DOWN = "apo_down"          # σ(β δc) + 1 - σ(βΔ)
  SIGMOID_NORM = "sigmoid_norm"  # -log σ(β (δc/|c| - δr/|r|)), the log-ratios per answer token


class PairLogps(NamedTuple):
  """Per pair [batch]: the answers' summed log-probs, their token counts, and (ORPO) the summed
  negative log-likelihood of the whole chosen sequence and its token count."""

  chosen: jax.Array
  rejected: jax.Array
  chosen_tokens: jax.Array
  rejected_tokens: jax.Array
  chosen_nll: jax.Array
  chosen_all_tokens: jax.Array


class Settings(NamedTuple):
  """train.preference's numbers (lmjax.config_objectives.PreferenceConfig), as the step takes them."""

  beta: float
  label_smoothing: float = 0.0
  simpo_gamma: float = 0.5
  dpo_loss: DpoLoss = DpoLoss.SIGMOID


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """log p(target) at each position, float32: logits [batch, len, vocab], targets [batch, len]
  -> [batch, len]."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  return jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - log_z


def chunked_token_log_probs(hidden: jax.Array, logits_fn: Callable[[jax.Array], jax.Array],
                            targets: jax.Array, chunk: int) -> jax.Array:
  """`token_log_probs(logits_fn(hidden), targets)`, `chunk` positions at a time (each chunk's
  logits recomputed in the backward pass): hidden [batch, len, embed] -> [batch, len]."""
  b, n = targets.shape
  one = jax.checkpoint(lambda args: token_log_probs(logits_fn(args[0]), args[1]))
  out = jax.lax.map(one, (position_chunks(hidden, chunk), position_chunks(targets, chunk)))
  return jnp.swapaxes(out, 0, 1).reshape(b, -1)[:, :n]  # [num_chunks, batch, chunk] -> [b, n]


def pair_log_probs(token_logps: jax.Array, batch: Mapping[str, jax.Array]) -> PairLogps:
  """Each row's pair from the log-probs of what every position predicts ([batch, len], as
  `causal_lm_targets` pairs positions with targets)."""
  segments = batch["segment_ids"]
  _, answer = sft_targets(batch["input_ids"], segments, batch["loss_mask"])
  _, sequence = causal_lm_targets(batch["input_ids"], segments)
  side = lambda weights, s: (weights & (segments == s)).astype(jnp.float32)
  chosen, rejected, whole = side(answer, 1), side(answer, 2), side(sequence, 1)
  total = lambda w: jnp.sum(token_logps * w, axis=-1)
  return PairLogps(total(chosen), total(rejected), chosen.sum(-1), rejected.sum(-1),
                   -total(whole), whole.sum(-1))


def _log1mexp(x: jax.Array) -> jax.Array:
  """log(1 - exp(x)) for x < 0, branching at -ln 2 as trl does."""
  return jnp.where(x < -0.6931471805599453, jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))


def _smoothed_sigmoid_loss(logits: jax.Array, label_smoothing: float) -> jax.Array:
  return (-jax.nn.log_sigmoid(logits) * (1 - label_smoothing)
          - jax.nn.log_sigmoid(-logits) * label_smoothing)


def dpo_losses(settings: Settings, chosen_ratio: jax.Array, rejected_ratio: jax.Array,
               chosen_tokens: jax.Array, rejected_tokens: jax.Array) -> jax.Array:
  """dpo's loss of each pair [batch] by `settings.dpo_loss` (`DpoLoss`); inputs [batch]."""
  eps, ls, sig = settings.label_smoothing, jax.nn.log_sigmoid, jax.nn.sigmoid
  c, r = settings.beta * chosen_ratio, settings.beta * rejected_ratio  # the implicit rewards
  losses = {
      DpoLoss.SIGMOID: lambda: _smoothed_sigmoid_loss(c - r, eps),
      DpoLoss.HINGE: lambda: jax.nn.relu(1 - (c - r)),
      DpoLoss.ROBUST: lambda: (-(1 - eps) * ls(c - r) + eps * ls(r - c)) / (1 - 2 * eps),
      DpoLoss.BCO_PAIR: lambda: -ls(c) - ls(-r),
      DpoLoss.SPPO_HARD: lambda: ((c - 0.5) ** 2 + (r + 0.5) ** 2) / settings.beta ** 2,
      DpoLoss.NCA_PAIR: lambda: -ls(c) - 0.5 * ls(-c) - 0.5 * ls(-r),
      DpoLoss.APO_ZERO: lambda: 1 - sig(c) + sig(r),
      DpoLoss.APO_DOWN: lambda: sig(c) + 1 - sig(c - r),
      DpoLoss.SIGMOID_NORM: lambda: -ls(c / jnp.maximum(chosen_tokens, 1.0)
                                        - r / jnp.maximum(rejected_tokens, 1.0)),
  }
  return losses[settings.dpo_loss]()


def preference_sums(objective: Objective, settings: Settings, policy: PairLogps,
                    reference: PairLogps | None = None
                    ) -> tuple[LossSums, dict[str, jax.Array]]:
  """The loss summed over the batch's pairs, the pairs, the pairs whose chosen reward is the
  higher (`LossSums`), and the summed rewards {chosen_reward, rejected_reward}. The reference
  model's log-probs of the same pairs are needed by dpo and ipo only."""
  beta, smoothing = settings.beta, settings.label_smoothing
  present = (policy.chosen_tokens > 0) & (policy.rejected_tokens > 0)  # [batch]
  mean = lambda logps, n: logps / jnp.maximum(n, 1.0)
  extra = jnp.zeros((), jnp.float32)
  match objective:
    case Objective.DPO | Objective.IPO:
      chosen_ratio = policy.chosen - reference.chosen
      rejected_ratio = policy.rejected - reference.rejected
      if objective is Objective.DPO:
        losses = dpo_losses(settings, chosen_ratio, rejected_ratio, policy.chosen_tokens,
                            policy.rejected_tokens)
      else:
        gap = mean(chosen_ratio, policy.chosen_tokens) - mean(rejected_ratio,
                                                              policy.rejected_tokens)
        losses = (gap - 1 / (2 * beta)) ** 2
      chosen_reward, rejected_reward = beta * chosen_ratio, beta * rejected_ratio
    case Objective.ORPO | Objective.SIMPO:
      chosen = mean(policy.chosen, policy.chosen_tokens)
      rejected = mean(policy.rejected, policy.rejected_tokens)
      if objective is Objective.ORPO:
        log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
        losses = -beta * jax.nn.log_sigmoid(log_odds)
        nll = jnp.sum(policy.chosen_nll * present) / jnp.maximum(
            jnp.sum(policy.chosen_all_tokens * present), 1.0)
        extra = nll * jnp.sum(present)
      else:
        losses = _smoothed_sigmoid_loss(beta * (chosen - rejected - settings.simpo_gamma / beta),
                                        smoothing)
      chosen_reward, rejected_reward = beta * chosen, beta * rejected
    case _:
      raise ValueError(f"{objective.value!r} is not a preference objective")
  weights = present.astype(jnp.float32)
  chosen_reward, rejected_reward = (jax.lax.stop_gradient(r) for r in (chosen_reward,
                                                                       rejected_reward))
  sums = LossSums(jnp.sum(losses * weights) + extra, jnp.sum(weights),
                  jnp.sum((chosen_reward > rejected_reward) * weights))
  return sums, {"chosen_reward": jnp.sum(chosen_reward * weights),
                "rejected_reward": jnp.sum(rejected_reward * weights)}
