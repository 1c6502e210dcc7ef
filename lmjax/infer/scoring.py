"""Scoring at the token-id level: fill-mask, sequence log-likelihoods, classification.

Log-likelihoods project the final hidden states to the vocabulary a chunk of positions at a
time (`target_log_probs`), keeping each position's log p(target) and never the whole
[batch, length, vocab] logits or their log-softmax. Batches of continuations are padded to
lengths a few percent above their own (`bucket_length`: under 1/8, and under 128 positions).
Dense attention reads long rows a block of queries at a time (lmjax.model.attention); the
batches of continuations, and those of `score` whose rows are right-padded, tell the model their
rows are one right-padded document each, so that long ones are read in causal tiles masked by
slot alone (lmjax.model.causal).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import UserError
from lmjax.infer.checks import (check_ids, check_length, left_padded_positions,
                                  require_causal_lm)
from lmjax.model import Head, Transformer
from lmjax.model.attention import QUERY_BLOCK


# -- log p(target) at each position, a chunk of positions at a time -----------------------------

# The logits of one chunk ([rows, chunk, vocab] float32) take about this many bytes: few enough
# that memory stays bounded (a 49k vocabulary: ~340 positions of one row), while the vocabulary
# product keeps hundreds of rows, enough to run near the matmul's peak.
_CHUNK_BYTES = 1 << 26


def _chunk_positions(rows: int, length: int, vocab_size: int) -> int:
  """Positions per chunk for a [rows, length] batch: its logits near _CHUNK_BYTES."""
  return max(1, min(length, _CHUNK_BYTES // (4 * rows * vocab_size)))


def _pick(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """float32 logits [..., vocab], targets [...] -> (log p(target), whether it is the argmax)."""
  # jax.nn.log_softmax's arithmetic, for the target only: shift by the max, then normalise.
  top = jnp.max(logits, axis=-1, keepdims=True)
  log_z = jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1))
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1) - top
  # argmax (the first of tied maxima, as torch's) says whether greedy decoding picks it
  return picked[..., 0] - log_z, jnp.argmax(logits, axis=-1) == targets


def _chunked_pick(model: Transformer, params, hidden: jax.Array, targets: jax.Array, chunk: int
                  ) -> tuple[jax.Array, jax.Array]:
  """`_pick` of the logits of hidden states [batch, len, embed], `chunk` positions at a time."""
  one = lambda h, t: _pick(model.apply({"params": params}, h, method=Transformer.decode), t)
  b, n = targets.shape
  whole = n - n % chunk
  parts = []
  if whole:  # lax.map runs the chunks one after another: one chunk's logits live at a time
    split = lambda a: jnp.swapaxes(a[:, :whole].reshape(b, whole // chunk, chunk,
                                                        *a.shape[2:]), 0, 1)
    merge = lambda a: jnp.swapaxes(a, 0, 1).reshape(b, whole)
    log_probs, greedy = jax.lax.map(lambda args: one(*args), (split(hidden), split(targets)))
    parts.append((merge(log_probs), merge(greedy)))
  if whole < n:  # the remainder, a shorter chunk, rather than padding the hidden states
    parts.append(one(hidden[:, whole:], targets[:, whole:]))
  return tuple(jnp.concatenate(a, axis=1) if len(parts) > 1 else a[0] for a in zip(*parts))


def _position_log_probs(model: Transformer, params, input_ids: jax.Array,
                        attention_mask: jax.Array | None, targets: jax.Array,
                        positions: jax.Array | None, chunk: int, *, right_padded: bool = False
                        ) -> tuple[jax.Array, jax.Array]:
  """Traced body of `target_log_probs` (positions, right_padded: as Transformer.features takes
  them)."""
  hidden = model.apply({"params": params}, input_ids, attention_mask, positions=positions,
                       right_padded=right_padded,
                       method=Transformer.features)  # [batch, len, embed]
  return _chunked_pick(model, params, hidden, targets, chunk)


@functools.partial(jax.jit, static_argnames=("model", "chunk"))
def target_log_probs(model: Transformer, params, input_ids: jax.Array, targets: jax.Array,
                     attention_mask: jax.Array | None = None, *, chunk: int
                     ) -> tuple[jax.Array, jax.Array]:
  """log p(targets[b, t] | input_ids[b, :t + 1]) under a causal model, and whether it is the
  argmax: float32 and bool [batch, len].

  input_ids, targets, attention_mask (1 = token, 0 = padding; right padding keeps positions
  0, 1, …): int [batch, len]. The hidden states go to the vocabulary `chunk` positions at a
  time (any chunk: a shorter last one takes the remainder), so the logits of at most
  [batch, chunk, vocab] exist at once; the numbers are those of log_softmax over full logits.
  """
  return _position_log_probs(model, params, input_ids, attention_mask, targets, None, chunk)


@functools.partial(jax.jit, static_argnames=("model", "top_k"))
def _top_k_probabilities(model: Transformer, params, input_ids: jax.Array,
                         token_type_ids: jax.Array | None, *, top_k: int
                         ) -> tuple[jax.Array, jax.Array]:
  """input_ids [1, len] -> (probabilities [len, top_k] descending, token ids [len, top_k])."""
  logits = model.apply({"params": params}, input_ids, token_type_ids=token_type_ids)
  return jax.lax.top_k(jax.nn.softmax(logits[0], axis=-1), top_k)


@functools.partial(jax.jit, static_argnames=("model", "chunk", "right_padded"))
def _sequence_log_likelihood(model: Transformer, params, input_ids: jax.Array,
                             attention_mask: jax.Array, *, chunk: int, right_padded: bool
                             ) -> jax.Array:
  """input_ids, attention_mask [batch, len] -> sum of log p(token | earlier tokens) [batch].
  `right_padded`: every mask row is 1…1 0…0 (Transformer.features)."""
  targets = jnp.pad(input_ids[:, 1:], ((0, 0), (0, 1)))  # position t predicts token t + 1
  log_probs, _ = _position_log_probs(model, params, input_ids, attention_mask, targets,
                                     left_padded_positions(attention_mask), chunk,
                                     right_padded=right_padded)
  # Token t counts when it and its predecessor are real: the first real token has no context.
  counted = (attention_mask[:, 1:] != 0) & (attention_mask[:, :-1] != 0)
  return jnp.sum(jnp.where(counted, log_probs[:, :-1], 0.0), axis=-1)


def fill_mask(model: Transformer, params, input_ids: Sequence[int], *, mask_id: int,
              top_k: int = 5, token_type_ids: Sequence[int] | None = None
              ) -> list[list[tuple[int, float]]]:
  """The `top_k` most likely tokens for each `mask_id` in `input_ids` (one sequence), in order.

  Returns one list per mask position, each of (token id, probability) pairs sorted by
  decreasing probability under the masked-LM head's softmax.
  """
  cfg = model.config
  if cfg.head is not Head.MASKED_LM:
    raise UserError(f"fill-mask (lmjax.infer.fill_mask) needs a masked-LM model (model.head=masked_lm), but this one has "
                    f"head={cfg.head.value}: for a causal model use `lmjax generate` (lmjax.generate).")
  input_ids = [int(i) for i in input_ids]
  positions = [n for n, token in enumerate(input_ids) if token == mask_id]
  if not positions:
    raise UserError(f"the input has no mask token (id {mask_id}): put one where a token is "
                    f"missing.")
  if not 1 <= top_k <= cfg.vocab_size:
    raise UserError(f"top_k must be between 1 and the vocabulary size {cfg.vocab_size}, got "
                    f"{top_k}.")
  check_ids(input_ids, vocab_size=cfg.vocab_size, what="the input")
  check_length(model, len(input_ids), what="the input", fix="shorten the text")
  types = None
  if token_type_ids is not None:
    if len(token_type_ids) != len(input_ids):
      raise UserError(f"token_type_ids has {len(token_type_ids)} entries but input_ids has "
                      f"{len(input_ids)}: give one type per token.")
    types = np.asarray([token_type_ids], np.int32)
  probs, ids = _top_k_probabilities(model, params, np.asarray([input_ids], np.int32), types,
                                    top_k=top_k)
  probs, ids = np.asarray(probs), np.asarray(ids)
  return [[(int(i), float(p)) for i, p in zip(ids[n], probs[n])] for n in positions]


def score(model: Transformer, params, input_ids, attention_mask=None) -> jax.Array:
  """Total log-likelihood of each sequence under a causal model.

  input_ids, attention_mask (1 = token, 0 = padding, left or right): int [batch, len]. Returns
  float32 [batch]: the sum over real tokens after the first of log p(token | earlier tokens).
  """
  require_causal_lm(model, "score")
  input_ids = np.asarray(input_ids, np.int32)
  if input_ids.ndim != 2:
    raise UserError(f"input_ids must be [batch, len], got shape {input_ids.shape}.")
  attention_mask = (np.ones_like(input_ids) if attention_mask is None
                    else np.asarray(attention_mask, np.int32))
  if attention_mask.shape != input_ids.shape:
    raise UserError(f"attention_mask has shape {attention_mask.shape} but input_ids has "
                    f"{input_ids.shape}: give one mask entry per token.")
  check_ids(input_ids[attention_mask != 0].tolist(), vocab_size=model.config.vocab_size,
             what="input_ids")
  # Padding may hold any id (HF uses -100); an out-of-range id would embed as NaN and leak
  # through attention (0 * NaN), so padding becomes token 0.
  input_ids = np.where(attention_mask != 0, input_ids, 0)
  check_length(model, int(attention_mask.sum(axis=-1).max(initial=0)), what="the longest sequence",
                fix="score shorter pieces")
  chunk = _chunk_positions(*input_ids.shape, model.config.vocab_size)
  # Known here from the data, before tracing: rows of one document each, padded on the right
  # only (never packed or left-padded ones), take the faster causal attention.
  ones = np.arange(input_ids.shape[1]) < attention_mask.sum(axis=-1, keepdims=True)
  right_padded = bool(np.array_equal(attention_mask, ones))
  return _sequence_log_likelihood(model, params, input_ids, attention_mask, chunk=chunk,
                                  right_padded=right_padded)


@functools.partial(jax.jit, static_argnames=("model",))
def _class_probabilities(model: Transformer, params, input_ids: jax.Array,
                         attention_mask: jax.Array, token_type_ids: jax.Array) -> jax.Array:
  logits = model.apply({"params": params}, input_ids, attention_mask,
                       token_type_ids=token_type_ids,
                       positions=left_padded_positions(attention_mask))
  return jax.nn.softmax(logits, axis=-1)  # [batch, num_labels]


def classify(model: Transformer, params, input_ids, attention_mask=None, token_type_ids=None
             ) -> np.ndarray:
  """Label probabilities of each sequence under a classifier: float32 [batch, num_labels].

  input_ids, attention_mask (1 = token, 0 = padding, left or right), token_type_ids: int
  [batch, len]. Positions count the real tokens, so padding on either side changes nothing.
  """
  cfg = model.config
  if cfg.head is not Head.CLASSIFICATION:
    raise UserError(f"classify needs a sequence classifier (model.head=classification), but "
                    f"this model has head={cfg.head.value}: use `lmjax generate`, `lmjax fill-mask` "
                    f"or `lmjax score` (lmjax.generate, lmjax.infer.fill_mask, lmjax.infer.score).")
  input_ids = np.asarray(input_ids, np.int32)
  if input_ids.ndim != 2:
    raise UserError(f"input_ids must be [batch, len], got shape {input_ids.shape}.")
  attention_mask = (np.ones_like(input_ids) if attention_mask is None
                    else np.asarray(attention_mask, np.int32))
  token_type_ids = (np.zeros_like(input_ids) if token_type_ids is None
                    else np.asarray(token_type_ids, np.int32))
  check_ids(input_ids[attention_mask != 0].tolist(), vocab_size=cfg.vocab_size, what="input_ids")
  check_length(model, input_ids.shape[1], what="the input", fix="shorten it")
  return np.asarray(_class_probabilities(model, params, np.where(attention_mask != 0, input_ids, 0),
                                         attention_mask, token_type_ids))


# -- continuations: what lm-evaluation-harness and perplexity ask for ---------------------------

# A batch's padded length is the next multiple of a step: 1/16 of the power of two at or above
# its longest row, at least _MIN_BUCKET and at most _MAX_STEP. So 8 lengths per doubling up to
# 1,024 tokens, where compiling dominates, then every multiple of 128, where computing does: the
# padding stays under max(_MIN_BUCKET, min(length / 8, _MAX_STEP)) positions (a 4,232-token
# window is scored at 4,352, not 8,192), and scoring requests of varied lengths compiles a few
# dozen programs at most (88 up to 8,192 tokens), not one per length.
_MIN_BUCKET = 16
_MAX_STEP = 128
_BUCKETS_PER_DOUBLING = 8
# Rows per batch are cut to keep a batch's attention scores and their softmax (float32, a block
# of queries at a time: attention.QUERY_BLOCK) near this many bytes, so that a long window is
# scored alone. The logits are bounded apart from this (_CHUNK_BYTES).
_ATTENTION_BYTES = 1 << 30


def bucket_length(length: int, cap: int) -> int:
  """The padded length of a batch whose longest row has `length` tokens, at most `cap`: a
  multiple of 2**ceil(log2(length)) / 16 clipped to [_MIN_BUCKET, _MAX_STEP], so the padding
  is under max(_MIN_BUCKET, min(length / 8, _MAX_STEP)) positions."""
  octave = 1 << max(length - 1, 0).bit_length()  # the power of two at or above length
  step = min(_MAX_STEP, max(_MIN_BUCKET, octave // (2 * _BUCKETS_PER_DOUBLING)))
  return min(-(-length // step) * step, cap)


def _rows_per_batch(model: Transformer, length: int, batch_size: int) -> int:
  per_row = 2 * 4 * model.config.num_heads * min(length, QUERY_BLOCK) * length
  return max(1, min(batch_size, _ATTENTION_BYTES // per_row))


@functools.partial(jax.jit, static_argnames=("model", "chunk"))
def _continuation_sums(model: Transformer, params, input_ids: jax.Array,
                       attention_mask: jax.Array, targets: jax.Array, weights: jax.Array, *,
                       chunk: int) -> tuple[jax.Array, jax.Array]:
  """Right-padded rows [batch, len], one document each -> (sum of log p(target) where weights,
  [batch] float32; whether every weighted target is the argmax, [batch] bool)."""
  log_probs, greedy = _position_log_probs(model, params, input_ids, attention_mask, targets,
                                         None, chunk, right_padded=True)
  return (jnp.sum(jnp.where(weights != 0, log_probs, 0.0), axis=-1),
          jnp.all(greedy | (weights == 0), axis=-1))


def continuation_log_likelihoods(model: Transformer, params,
                                 requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                                 max_length: int | None = None, batch_size: int = 16,
                                 progress=None) -> list[tuple[float, bool]]:
  """log p(continuation | context) of each (context ids, continuation ids) request, and whether
  greedy decoding would produce the continuation, under a causal model.

  As lm-evaluation-harness scores a request: the model reads the last `max_length` (default:
  model.max_seq_len) tokens of context + continuation, less the final one, and the continuation
  is its last predictions; a longer context loses its oldest tokens. Contexts need at least one
  token (a BOS/EOS prefix for an empty one) and continuations at most `max_length`. Requests are
  sorted by length and padded to bucketed lengths (`bucket_length`: under 1/8 and 128 more) in
  batches of at most `batch_size` (fewer for long rows, whose attention would pass ~1 GiB); the
  logits are taken a chunk of positions at a time. `progress(n)` is called as n more are done.
  """
  require_causal_lm(model, "continuation_log_likelihoods")
  cfg = model.config
  max_length = max_length or cfg.max_seq_len
  if max_length < 1:
    raise UserError(f"max_length must be >= 1, got {max_length}.")
  if batch_size < 1:
    raise UserError(f"batch_size must be >= 1, got {batch_size}.")
  check_length(model, max_length, what=f"max_length={max_length}", fix="lower max_length")
  rows = []
  for n, (context, continuation) in enumerate(requests):
    context, continuation = [int(i) for i in context], [int(i) for i in continuation]
    if not context:
      raise UserError(f"request {n} has an empty context: begin it with a BOS (or EOS) token.")
    if len(continuation) > max_length:
      raise UserError(f"request {n}'s continuation is {len(continuation)} tokens, more than "
                      f"max_length={max_length}: score it in windows (loglikelihood_rolling, "
                      f"lmjax score).")
    check_ids(context + continuation, vocab_size=cfg.vocab_size, what=f"request {n}")
    whole = (context + continuation)[-(max_length + 1):]
    rows.append((whole[:-1], whole[1:], len(continuation)))
  results: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
  order = sorted((n for n, r in enumerate(rows) if r[2]), key=lambda n: -len(rows[n][0]))
  if progress is not None and len(order) < len(rows):
    progress(len(rows) - len(order))  # empty continuations: log p = 0, trivially greedy
  start = 0
  while start < len(order):
    length = bucket_length(len(rows[order[start]][0]), max_length)
    members = order[start:start + _rows_per_batch(model, length, batch_size)]
    # A short batch (the last) is filled with empty rows up to a power of two: a few shapes per
    # bucket, and under twice the work, where a full batch_size would score a lone document
    # batch_size times over.
    per_batch = 1 << (len(members) - 1).bit_length()
    shape = (per_batch, length)
    input_ids, targets = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    mask, weights = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    mask[:, 0] = 1  # an all-padding row would attend to nothing
    for row, n in enumerate(members):
      inputs, target, scored = rows[n]
      input_ids[row, :len(inputs)], targets[row, :len(target)] = inputs, target
      mask[row, :len(inputs)] = 1
      weights[row, len(inputs) - scored:len(inputs)] = 1
    chunk = _chunk_positions(*shape, cfg.vocab_size)
    sums, greedy = jax.device_get(_continuation_sums(model, params, input_ids, mask, targets,
                                                     weights, chunk=chunk))
    for row, n in enumerate(members):
      results[n] = (float(sums[row]), bool(greedy[row]))
    if progress is not None:
      progress(len(members))
    start += len(members)
  return results
