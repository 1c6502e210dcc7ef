"""Choosing the next token from a step's logits: logit processors, then greedy or sampling.

The order is Hugging Face's: the repetition penalty and the end-of-sequence ban of
`min_new_tokens` act on the raw logits, then temperature, top-k and top-p shape the
distribution that is sampled from. Every setting is a traced array (`Sampling`), so changing a
value never recompiles the decode loop; only greedy-or-sampling and whether a repetition penalty
is tracked at all are static switches.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Sampling(NamedTuple):
  """Traced sampling settings."""

  temperature: jax.Array         # float32 scalar, > 0 (greedy decoding is a static switch)
  top_k: jax.Array               # int32 scalar; the vocabulary size when top-k is off
  top_p: jax.Array               # float32 scalar; 1.0 when nucleus filtering is off
  repetition_penalty: jax.Array  # float32 scalar, > 0; 1.0 is off
  min_new_tokens: jax.Array      # int32 scalar: end-of-sequence ids are banned before this many
  is_eos: jax.Array              # [vocab] bool: the ids that end a row (none: all False)
  pad_id: jax.Array              # int32 scalar, written after a row has ended


def filter_logits(logits: jax.Array, *, top_k: jax.Array | int, top_p: jax.Array | float
                  ) -> jax.Array:
  """Top-k then top-p (nucleus) filtering: logits [batch, vocab] -> the same, dropped set to -inf.

  Top-k keeps the `top_k` largest logits; top-p then keeps the smallest prefix of those (by
  decreasing probability, renormalised over the top k) whose probability mass reaches `top_p`,
  always including the most likely token. Ties with the last kept logit are kept too. Both
  thresholds may be traced, so one compiled function serves every setting.
  """
  vocab = logits.shape[-1]
  sorted_logits = -jnp.sort(-logits, axis=-1)  # [batch, vocab], descending
  in_top_k = jnp.arange(vocab) < jnp.clip(top_k, 1, vocab)  # [vocab]
  sorted_logits = jnp.where(in_top_k, sorted_logits, -jnp.inf)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  # Mass strictly before each token; an exclusive cumsum stays monotone, so `keep` is a prefix.
  mass_before = jnp.concatenate(
      [jnp.zeros_like(probs[:, :1]), jnp.cumsum(probs[:, :-1], axis=-1)], axis=-1)
  keep = in_top_k & ((mass_before < top_p) | (top_p >= 1.0))  # top_p=1 keeps rounding's tail too
  num_kept = jnp.sum(keep, axis=-1, keepdims=True)  # [batch, 1], >= 1
  cutoff = jnp.take_along_axis(sorted_logits, num_kept - 1, axis=-1)  # [batch, 1]
  return jnp.where(logits >= cutoff, logits, -jnp.inf)


def penalise_repetitions(logits: jax.Array, seen: jax.Array, penalty: jax.Array) -> jax.Array:
  """HF's RepetitionPenaltyLogitsProcessor: logits [batch, vocab] of the ids `seen` (bool, the
  same shape: in the prompt or generated so far) are multiplied by `penalty` where negative and
  divided by it otherwise, so a penalty > 1 makes every seen id less likely."""
  penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
  return jnp.where(seen, penalised, logits)


def seen_ids(input_ids: jax.Array, attention_mask: jax.Array, vocab_size: int) -> jax.Array:
  """Which ids each prompt holds: [batch, len] ids and 0/1 mask -> [batch, vocab] bool.

  Padding does not count (Hugging Face counts left padding's pad id as seen; the parity tests
  keep the pad id inside every prompt so that the two agree)."""
  rows = jnp.arange(input_ids.shape[0])[:, None]  # [batch, 1]
  return jnp.zeros((input_ids.shape[0], vocab_size), bool).at[rows, input_ids].max(
      attention_mask.astype(bool))


def next_token(logits: jax.Array, key: jax.Array, sampling: Sampling, *, step: jax.Array,
               seen: jax.Array | None, greedy: bool) -> jax.Array:
  """The next token of each row: logits [batch, vocab] -> int32 [batch].

  `step` is how many tokens each row has generated so far; `seen` (or None when no repetition
  penalty is tracked) the [batch, vocab] ids to penalise. Greedy takes the argmax of the
  processed logits; otherwise they are divided by the temperature, filtered by top-k and top-p,
  and sampled from.
  """
  logits = logits.astype(jnp.float32)  # bfloat16 models too: sample from float32 logits
  if seen is not None:
    logits = penalise_repetitions(logits, seen, sampling.repetition_penalty)
  logits = jnp.where(sampling.is_eos & (step < sampling.min_new_tokens), -jnp.inf, logits)
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits / sampling.temperature, top_k=sampling.top_k,
                         top_p=sampling.top_p)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


__all__ = ["Sampling", "filter_logits", "next_token", "penalise_repetitions", "seen_ids"]
