"""Training objectives: causal-LM, masked-LM (masking + loss) and sequence classification.

Losses return *sums* (`LossSums`) rather than means, so that gradient accumulation and
multi-device reductions combine micro-batches exactly: the reported loss is always
`loss / weight`, the token-weighted mean over everything the step saw. Cross-entropy and its
softmax statistics are computed in float32.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.model.config import Head


class LossSums(NamedTuple):
  loss: jax.Array     # sum of per-token (or per-example) cross-entropy
  weight: jax.Array   # number of tokens (or examples) that count
  correct: jax.Array  # how many of those the argmax predicted


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> LossSums:
  """logits [..., vocab], integer targets [...], weights [...] (0 excludes) -> sums."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  weights = weights.astype(jnp.float32)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return LossSums(jnp.sum((log_z - target_logit) * weights), jnp.sum(weights),
                  jnp.sum(correct * weights))


def chunked_cross_entropy_sums(hidden: jax.Array, logits_fn: Callable[[jax.Array], jax.Array],
                               targets: jax.Array, weights: jax.Array, chunk: int) -> LossSums:
  """`cross_entropy_sums(logits_fn(hidden), targets, weights)`, `chunk` positions at a time.

  hidden [batch, len, embed]; targets, weights [batch, len]; logits_fn maps hidden states to
  float32 logits. Each chunk's logits are recomputed in the backward pass (jax.checkpoint), so
  at most [batch, chunk, vocab] logits exist at once instead of [batch, len, vocab].
  """
  b, n = targets.shape
  num_chunks = -(-n // chunk)
  pad = num_chunks * chunk - n

  def chunks(a):  # [batch, len, ...] -> [num_chunks, batch, chunk, ...]
    a = jnp.pad(a, ((0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 2))
    return jnp.swapaxes(a.reshape(b, num_chunks, chunk, *a.shape[2:]), 0, 1)

  @jax.checkpoint
  def one(args):
    h, t, w = args
    return cross_entropy_sums(logits_fn(h), t, w)

  sums = jax.lax.map(one, (chunks(hidden), chunks(targets), chunks(weights.astype(jnp.float32))))
  return LossSums(*(jnp.sum(x) for x in sums))


def causal_lm_targets(input_ids: jax.Array, segment_ids: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
  """(targets, weights) [batch, len]: position t predicts token t+1 only when both lie in the
  same (non-padding) document, so padding and the first token of each packed document are
  excluded; the last position predicts nothing (weight 0)."""
  targets = jnp.pad(input_ids[:, 1:], ((0, 0), (0, 1)))
  weights = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)
  return targets, jnp.pad(weights, ((0, 0), (0, 1)))


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


def objective_loss(head: Head, logits: jax.Array, batch: Mapping[str, jax.Array]) -> LossSums:
  """The loss that matches the model's head, from a batch as the data pipeline builds it."""
  match head:
    case Head.CAUSAL_LM:
      return causal_lm_loss(logits, batch["input_ids"], batch["segment_ids"])
    case Head.MASKED_LM:
      return masked_lm_loss(logits, batch["targets"], batch["target_weights"])
    case Head.CLASSIFICATION:
      return classification_loss(logits, batch["labels"])
  raise ValueError(f"no training objective for a model with head {head.value!r}")


def chunked_objective_loss(head: Head, hidden: jax.Array,
                           logits_fn: Callable[[jax.Array], jax.Array],
                           batch: Mapping[str, jax.Array], chunk: int) -> LossSums:
  """`objective_loss` for LM heads from the hidden states before the vocabulary projection
  (`logits_fn`), `chunk` positions at a time (see `chunked_cross_entropy_sums`)."""
  match head:
    case Head.CAUSAL_LM:
      targets, weights = causal_lm_targets(batch["input_ids"], batch["segment_ids"])
    case Head.MASKED_LM:
      targets, weights = batch["targets"], batch["target_weights"]
    case _:
      raise ValueError(f"chunked losses are for LM heads, not {head.value!r}")
  return chunked_cross_entropy_sums(hidden, logits_fn, targets, weights, chunk)


def mask_tokens_for_mlm(rng: np.random.Generator, input_ids: np.ndarray, *, maskable: np.ndarray,
                        mask_id: int, vocab_size: int, probability: float = 0.15
                        ) -> dict[str, np.ndarray]:
  """BERT's masking, in numpy so that it runs in the input pipeline.

  Selects each maskable token (not special, not padding) with `probability`; of those, 80%
  become `mask_id`, 10% a uniformly random token and 10% stay as they are.
  input_ids, maskable: [batch, len]. Returns `input_ids` (corrupted), `targets` (the originals)
  and `target_weights` (1.0 on selected positions), each [batch, len].
  """
  selected = (rng.random(input_ids.shape) < probability) & maskable
  action = rng.random(input_ids.shape)
  corrupted = np.where(selected & (action < 0.8), mask_id, input_ids)
  random_tokens = rng.integers(0, vocab_size, size=input_ids.shape)
  corrupted = np.where(selected & (action >= 0.8) & (action < 0.9), random_tokens, corrupted)
  return {"input_ids": corrupted.astype(np.int32), "targets": input_ids.astype(np.int32),
          "target_weights": selected.astype(np.float32)}
