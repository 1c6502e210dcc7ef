"""Argument checks shared by generation and scoring: each names the value and the fix."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from lmjax.errors import UserError
from lmjax.model import Head, Positions, Transformer


def is_causal_lm(model: Transformer) -> bool:
  """Whether `model` generates text: causal attention and a next-token head."""
  return model.config.causal and model.config.head is Head.CAUSAL_LM


def require_causal_lm(model: Transformer, what: str) -> None:
  cfg = model.config
  if not is_causal_lm(model):
    raise UserError(
        f"{what} needs a causal language model (model.causal=true, model.head=causal_lm), but this "
        f"one has causal={cfg.causal} and head={cfg.head.value}: for a masked-LM model use "
        f"`lmjax fill-mask` (lmjax.infer.fill_mask), for a classifier `lmjax predict`.")


def check_ids(ids: Sequence[int], *, vocab_size: int, what: str) -> None:
  bad = [i for i in ids if not 0 <= i < vocab_size]
  if bad:
    raise UserError(f"{what} holds token id {bad[0]}, outside the model's vocabulary "
                    f"[0, {vocab_size}): was it encoded with this model's tokenizer?")


def check_length(model: Transformer, length: int, *, what: str, fix: str) -> None:
  cfg = model.config
  if cfg.positions is Positions.LEARNED and length > cfg.max_seq_len:
    raise UserError(f"{what} is {length} tokens, more than model.max_seq_len={cfg.max_seq_len} "
                    f"(the model learned no position embeddings beyond it): {fix}.")


def check_sampling(*, max_new_tokens: int, temperature: float, top_k: int | None,
                    top_p: float | None) -> None:
  if max_new_tokens < 0:
    raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}.")
  if not temperature >= 0:  # NaN too
    raise UserError(f"temperature must be >= 0 (0 means greedy), got {temperature}.")
  if top_k is not None and top_k < 1:
    raise UserError(f"top_k must be >= 1 (or None to keep every token), got {top_k}.")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise UserError(f"top_p must be in (0, 1] (or None to keep every token), got {top_p}.")


def check_processors(*, max_new_tokens: int, repetition_penalty: float, min_new_tokens: int,
                     num_return_sequences: int, greedy: bool) -> None:
  """The repetition penalty, `min_new_tokens` and `num_return_sequences`, as HF accepts them."""
  if not 0 < repetition_penalty < float("inf"):  # NaN too
    raise UserError(f"repetition_penalty must be > 0 (1.0 is off, > 1 discourages repeats), got "
                    f"{repetition_penalty}.")
  if not 0 <= min_new_tokens <= max_new_tokens:
    raise UserError(f"min_new_tokens must be between 0 and max_new_tokens={max_new_tokens}, got "
                    f"{min_new_tokens}: lower it, or raise max_new_tokens.")
  if num_return_sequences < 1:
    raise UserError(f"num_return_sequences must be >= 1, got {num_return_sequences}.")
  if greedy and num_return_sequences > 1:
    raise UserError(f"num_return_sequences={num_return_sequences} with greedy decoding "
                    f"(temperature=0) would return {num_return_sequences} copies of one sequence: "
                    f"sample (temperature > 0) or ask for 1.")


def left_padded_positions(attention_mask: jax.Array) -> jax.Array:
  """[batch, len] 0/1 -> position ids: 0, 1, … over the real tokens, 0 on padding."""
  return jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0).astype(jnp.int32)
