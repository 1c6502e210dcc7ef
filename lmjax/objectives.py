"""Training losses: causal-LM, masked-LM, sequence classification (and its confusion counts),
SFT, the preference objectives (DPO, IPO, ORPO, SimPO) and GRPO (the sections at the end).

Losses return *sums* (`LossSums`) rather than means, so that gradient accumulation and
multi-device reductions combine micro-batches exactly: the reported loss is always
`loss / weight`, the token-weighted mean over everything the step saw. Cross-entropy and its
softmax statistics are computed in float32.
"""

from __future__ import annotations

import enum
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from lmjax.data.spec import Objective
from lmjax.model.config import Head


class LossSums(NamedTuple):
  loss: jax.Array     # sum of per-token (or per-example) cross-entropy
  weight: jax.Array   # number of tokens (or examples) that count
  correct: jax.Array  # how many of those the argmax predicted


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> LossSums:
  """logits [..., vocab], integer targets [...], weights [...] (0 excludes) -> sums.

  A prediction is correct when the target's logit is the largest (a tie counts): compared with
  the max that the log-normaliser needs anyway, which saves a separate argmax pass over the
  vocabulary (4% of a GPT-2 step on CPU).
  """
  logits = logits.astype(jnp.float32)
  max_logit = jax.lax.stop_gradient(jnp.max(logits, axis=-1))   # as jax.nn.logsumexp does
  log_z = max_logit + jnp.log(jnp.sum(jnp.exp(logits - max_logit[..., None]), axis=-1))
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  weights = weights.astype(jnp.float32)
  correct = (target_logit >= max_logit).astype(jnp.float32)
  return LossSums(jnp.sum((log_z - target_logit) * weights), jnp.sum(weights),
                  jnp.sum(correct * weights))


def chunked_cross_entropy_sums(hidden: jax.Array, logits_fn: Callable[[jax.Array], jax.Array],
                               targets: jax.Array, weights: jax.Array, chunk: int) -> LossSums:
  """`cross_entropy_sums(logits_fn(hidden), targets, weights)`, `chunk` positions at a time.

  hidden [batch, len, embed]; targets, weights [batch, len]; logits_fn maps hidden states to
  float32 logits. Each chunk's logits are recomputed in the backward pass (jax.checkpoint), so
  at most [batch, chunk, vocab] logits exist at once instead of [batch, len, vocab].
  """
  @jax.checkpoint
  def one(args):
    h, t, w = args
    return cross_entropy_sums(logits_fn(h), t, w)

  sums = jax.lax.map(one, (position_chunks(hidden, chunk), position_chunks(targets, chunk),
                           position_chunks(weights.astype(jnp.float32), chunk)))
  return LossSums(*(jnp.sum(x) for x in sums))


def position_chunks(a: jax.Array, chunk: int) -> jax.Array:
  """[batch, len, ...] -> [num_chunks, batch, chunk, ...], the positions zero-padded to a
  multiple of `chunk`."""
  b, n = a.shape[:2]
  num_chunks = -(-n // chunk)
  a = jnp.pad(a, ((0, 0), (0, num_chunks * chunk - n)) + ((0, 0),) * (a.ndim - 2))
  return jnp.swapaxes(a.reshape(b, num_chunks, chunk, *a.shape[2:]), 0, 1)


def causal_lm_targets(input_ids: jax.Array, segment_ids: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
  """(targets, weights) [batch, len]: position t predicts token t+1 only when both lie in the
  same (non-padding) document, so padding and the first token of each packed document are
  excluded; the last position predicts nothing (weight 0)."""
  targets = jnp.pad(input_ids[:, 1:], ((0, 0), (0, 1)))
  weights = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)
  return targets, jnp.pad(weights, ((0, 0), (0, 1)))


def sft_targets(input_ids: jax.Array, segment_ids: jax.Array, loss_mask: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """`causal_lm_targets`, counting only the predictions of answer tokens (loss_mask 1 at the
  predicted token): the prompt is context, never a target."""
  targets, weights = causal_lm_targets(input_ids, segment_ids)
  predicted_is_answer = jnp.pad(loss_mask[:, 1:], ((0, 0), (0, 1))) != 0
  return targets, weights & predicted_is_answer


def causal_lm_loss(logits: jax.Array, input_ids: jax.Array, segment_ids: jax.Array) -> LossSums:
  """Next-token loss (see `causal_lm_targets`). logits [batch, len, vocab]; input_ids,
  segment_ids [batch, len]."""
  targets, weights = causal_lm_targets(input_ids, segment_ids)
  return cross_entropy_sums(logits[:, :-1], targets[:, :-1], weights[:, :-1])


def masked_lm_loss(logits: jax.Array, targets: jax.Array, target_weights: jax.Array) -> LossSums:
  """MLM loss and accuracy on the selected positions only. All inputs [batch, len](, vocab)."""
  return cross_entropy_sums(logits, targets, target_weights)


def classification_loss(logits: jax.Array, labels: jax.Array) -> LossSums:
  """logits [batch, num_labels], labels [batch] (-1 marks a padding example)."""
  return cross_entropy_sums(logits, jnp.maximum(labels, 0), labels >= 0)


def default_objective(head: Head) -> Objective:
  """The objective a model with `head` trains on."""
  match head:
    case Head.CAUSAL_LM:
      return Objective.CAUSAL_LM
    case Head.MASKED_LM:
      return Objective.MASKED_LM
    case Head.CLASSIFICATION:
      return Objective.CLASSIFY
  raise ValueError(f"no training objective for a model with head {head.value!r}")


def objective_loss(objective: Objective, logits: jax.Array, batch: Mapping[str, jax.Array]
                   ) -> LossSums:
  """The loss of `objective` from the model's output and a batch as the data pipeline builds it."""
  match objective:
    case Objective.CAUSAL_LM:
      return causal_lm_loss(logits, batch["input_ids"], batch["segment_ids"])
    case Objective.MASKED_LM:
      return masked_lm_loss(logits, batch["targets"], batch["target_weights"])
    case Objective.CLASSIFY:
      return classification_loss(logits, batch["labels"])
    case Objective.SFT:
      targets, weights = sft_targets(batch["input_ids"], batch["segment_ids"], batch["loss_mask"])
      return cross_entropy_sums(logits[:, :-1], targets[:, :-1], weights[:, :-1])
  raise ValueError(f"unknown objective {objective}")


def confusion_counts(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """[num_labels, num_labels] float32 counts: row = true label, column = predicted label.
  logits [batch, num_labels]; labels [batch] (-1: a padding example, not counted)."""
  num_labels = logits.shape[-1]
  true = jax.nn.one_hot(labels, num_labels, dtype=jnp.float32)  # -1 gives a row of zeros
  predicted = jax.nn.one_hot(jnp.argmax(logits, axis=-1), num_labels, dtype=jnp.float32)
  return jnp.einsum("bt,bp->tp", true, predicted)


def token_targets(objective: Objective, batch: Mapping[str, jax.Array]
                  ) -> tuple[jax.Array, jax.Array]:
  """(targets, weights) [batch, len] of a token-level objective: what position t predicts."""
  match objective:
    case Objective.CAUSAL_LM:
      return causal_lm_targets(batch["input_ids"], batch["segment_ids"])
    case Objective.MASKED_LM:
      return batch["targets"], batch["target_weights"]
    case Objective.SFT:
      return sft_targets(batch["input_ids"], batch["segment_ids"], batch["loss_mask"])
  raise ValueError(f"{objective.value!r} is not a token-level objective")


def chunked_objective_loss(objective: Objective, hidden: jax.Array,
                           logits_fn: Callable[[jax.Array], jax.Array],
                           batch: Mapping[str, jax.Array], chunk: int) -> LossSums:
  """`objective_loss` of a token-level objective from the hidden states before the vocabulary
  projection (`logits_fn`), `chunk` positions at a time (see `chunked_cross_entropy_sums`)."""
  targets, weights = token_targets(objective, batch)
  return chunked_cross_entropy_sums(hidden, logits_fn, targets, weights, chunk)


# --- Preference objectives --------------------------------------------------------------------
#
# DPO (sigmoid, cDPO with label smoothing, or trl's other DPO loss types: `DpoLoss`), IPO, ORPO
# and SimPO, as trl 1.16 computes them (tests/test_preference.py checks losses and gradients
# against its DPOTrainer, CPOTrainer and ORPOTrainer code; the smoothed sigmoid is CPOTrainer's):
#
#     dpo    -(1-ε) log σ(β Δ) - ε log σ(-β Δ),
#            Δ = (log π(c) - log π_ref(c)) - (log π(r) - log π_ref(r))
#     ipo    (Δc/|c| - Δr/|r| - 1/(2β))²           the log-ratios averaged over answer tokens
#     orpo   NLL(prompt + chosen) - β log σ(log odds(c̄) - log odds(r̄)),
#            odds(p̄) = p̄ / (1 - p̄)
#     simpo  -(1-ε) log σ(β (c̄ - r̄) - γ) - ε log σ(-(β (c̄ - r̄) - γ))
#
# where log π(c) sums the answer tokens' log-probs and c̄ averages them. ORPO's NLL is the token
# mean over the whole chosen sequence, prompt included, as trl computes it. The implicit rewards
# people read are β (log π - log π_ref) (dpo, ipo) and β c̄ (orpo, simpo); the accuracy is how
# often the chosen answer's reward is the higher.
#
# A batch row holds one pair (lmjax.data.examples.preference): prompt + chosen is segment 1,
# prompt + rejected segment 2, `loss_mask` marks the answers. Losses come back as sums over the
# pairs (`LossSums`: loss, pairs, pairs ranked right) plus the reward sums, so gradient
# accumulation and devices combine as for the other objectives; ORPO's NLL joins as its
# micro-batch token mean times the micro-batch's pairs.

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


# --- GRPO -------------------------------------------------------------------------------------
#
# The clipped surrogate of PPO on sampled completions with group-normalised advantages A, plus
# β times the k3 estimate of KL(π ‖ π_ref), as trl 1.16's GRPOTrainer._compute_loss computes it
# (tests/test_grpo.py runs its code on the same inputs):
#
#     r = exp(log π - log π_old),  per token  -min(r A, clip(r, 1 - ε_low, 1 + ε_high) A)
#                                             + β (exp(log π_ref - log π) - (log π_ref - log π) - 1)
#
# averaged over each completion's tokens then over the completions (loss_type grpo), over all
# the batch's completion tokens (bnpo, dapo), or summed and divided by the completions times
# max_new_tokens (dr_grpo). π_old is the policy that sampled the completions (the same params
# when a round has one optimisation step: then only the gradient flows).


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
