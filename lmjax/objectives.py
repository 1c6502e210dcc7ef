"""Training objectives: causal-LM, masked-LM (masking + loss) and sequence classification.

Losses return *sums* (`LossSums`) rather than means, so that gradient accumulation and
multi-device reductions combine micro-batches exactly: the reported loss is always
`loss / weight`, the token-weighted mean over everything the step saw. Cross-entropy and its
softmax statistics are computed in float32.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

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


def causal_lm_loss(logits: jax.Array, input_ids: jax.Array, segment_ids: jax.Array) -> LossSums:
  """Next-token loss. logits [batch, len, vocab]; input_ids, segment_ids [batch, len].

  Position t predicts token t+1 only when both lie in the same (non-padding) document, so
  padding and the first token of each packed document are excluded.
  """
  targets = input_ids[:, 1:]
  weights = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)
  return cross_entropy_sums(logits[:, :-1], targets, weights)


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
