"""Token and sequence losses: causal-LM, masked-LM, sequence classification (and its confusion
counts) and SFT.

Losses return *sums* (`LossSums`) rather than means, so that gradient accumulation and
multi-device reductions combine micro-batches exactly: the reported loss is always
`loss / weight`, the token-weighted mean over everything the step saw. Cross-entropy and its
softmax statistics are computed in float32.
"""

from __future__ import annotations

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
