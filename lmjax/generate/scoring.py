"""Scoring at the token-id level: fill-mask, sequence log-likelihoods, classification."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import UserError
from lmjax.generate.checks import (check_ids, check_length, left_padded_positions,
                                  require_causal_lm)
from lmjax.model import Head, Transformer


@functools.partial(jax.jit, static_argnames=("model", "top_k"))
def _top_k_probabilities(model: Transformer, params, input_ids: jax.Array,
                         token_type_ids: jax.Array | None, *, top_k: int
                         ) -> tuple[jax.Array, jax.Array]:
  """input_ids [1, len] -> (probabilities [len, top_k] descending, token ids [len, top_k])."""
  logits = model.apply({"params": params}, input_ids, token_type_ids=token_type_ids)
  return jax.lax.top_k(jax.nn.softmax(logits[0], axis=-1), top_k)


@functools.partial(jax.jit, static_argnames=("model",))
def _sequence_log_likelihood(model: Transformer, params, input_ids: jax.Array,
                             attention_mask: jax.Array) -> jax.Array:
  """input_ids, attention_mask [batch, len] -> sum of log p(token | earlier tokens) [batch]."""
  logits = model.apply({"params": params}, input_ids, attention_mask,
                       positions=left_padded_positions(attention_mask))
  log_probs = jax.nn.log_softmax(logits[:, :-1], axis=-1)  # [batch, len - 1, vocab]
  token_log_probs = jnp.take_along_axis(log_probs, input_ids[:, 1:, None], axis=-1)[..., 0]
  # Token t counts when it and its predecessor are real: the first real token has no context.
  counted = (attention_mask[:, 1:] != 0) & (attention_mask[:, :-1] != 0)
  return jnp.sum(jnp.where(counted, token_log_probs, 0.0), axis=-1)


def fill_mask(model: Transformer, params, input_ids: Sequence[int], *, mask_id: int,
              top_k: int = 5, token_type_ids: Sequence[int] | None = None
              ) -> list[list[tuple[int, float]]]:
  """The `top_k` most likely tokens for each `mask_id` in `input_ids` (one sequence), in order.

  Returns one list per mask position, each of (token id, probability) pairs sorted by
  decreasing probability under the masked-LM head's softmax.
  """
  cfg = model.config
  if cfg.head is not Head.MASKED_LM:
    raise UserError(f"fill_mask needs a masked-LM model (model.head=masked_lm), but this one has "
                    f"head={cfg.head.value}: use generate for causal models.")
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
  return _sequence_log_likelihood(model, params, input_ids, attention_mask)


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
                    f"this model has head={cfg.head.value}: use generate, fill_mask or score.")
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
