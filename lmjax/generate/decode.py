"""Sampling from causal models with a KV cache, at the token-id level.

    continuations = generate(model, params, [[5, 17, 3], [8]], max_new_tokens=32, temperature=0)

`generate` left-pads the prompts to a common length, runs one jitted prefill that fills a KV
cache of `prompt_len + max_new_tokens` slots, then decodes one token per step inside a
`lax.while_loop` that stops once every row has emitted `eos_id`. Left-padded rows get explicit
positions (their count of real tokens so far), so a prompt continues the same whether it is
batched or alone. No tokenizer and no file I/O here: the CLI does those.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import UserError
from lmjax.generate.checks import (check_ids, check_length, check_sampling, left_padded_positions,
                                  require_causal_lm)
from lmjax.model import Transformer, init_cache, unrolled

# Prompts are left-padded to a multiple of this, so that nearby prompt lengths share one compiled
# prefill and decode loop (padding slots are masked out and cost a few wasted FLOPs).
_PROMPT_LENGTH_BUCKET = 16


class _Sampling(NamedTuple):
  """Traced sampling settings: changing them does not recompile the decode loop."""

  temperature: jax.Array  # float32 scalar, > 0 (greedy decoding is a static switch instead)
  top_k: jax.Array        # int32 scalar; the vocabulary size when top-k is off
  top_p: jax.Array        # float32 scalar; 1.0 when nucleus filtering is off
  eos_id: jax.Array       # int32 scalar; -1 when there is no end-of-sequence token
  pad_id: jax.Array       # int32 scalar, written after a row has ended


class _DecodeState(NamedTuple):
  step: jax.Array      # int32 scalar: how many tokens each row has generated
  token: jax.Array     # [batch] int32, the token generated last
  position: jax.Array  # [batch] int32, the position that token takes
  cache: Any           # the model's KV cache
  output: jax.Array    # [batch, max_new_tokens] int32
  done: jax.Array      # [batch] bool, the row has emitted eos_id


# -- sampling ---------------------------------------------------------------------------------


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


def _next_token(logits: jax.Array, key: jax.Array, sampling: _Sampling, *, greedy: bool
               ) -> jax.Array:
  """The next token of each row: logits [batch, vocab] -> int32 [batch].

  Greedy takes the argmax; otherwise logits are divided by the temperature, filtered by top-k
  and top-p, and sampled from.
  """
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits / sampling.temperature, top_k=sampling.top_k,
                         top_p=sampling.top_p)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


# -- the jitted core --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "greedy"))
def _generate_ids(model: Transformer, params, input_ids: jax.Array, attention_mask: jax.Array,
                  key: jax.Array, sampling: _Sampling, *, max_new_tokens: int, greedy: bool
                  ) -> jax.Array:
  """Left-padded prompts [batch, len] -> generated ids [batch, max_new_tokens] int32.

  After a row emits eos_id the rest of it is pad_id; the loop stops early once all rows have.
  """
  batch, prompt_len = input_ids.shape
  # Unrolled layers, each with a KV cache of its own (see lmjax.model.unrolled); the layers'
  # params are sliced out of the stacked ones once, before the loop.
  config, params = unrolled(model.config, params)
  model = Transformer(config, model.dtype)
  variables = {"params": params}
  cache = init_cache(config, batch, prompt_len + max_new_tokens, model.dtype)
  logits, cache = model.apply(variables, input_ids, attention_mask,
                              positions=left_padded_positions(attention_mask), cache=cache)
  token = _next_token(logits[:, -1], jax.random.fold_in(key, 0), sampling, greedy=greedy)
  output = jnp.full((batch, max_new_tokens), sampling.pad_id, jnp.int32).at[:, 0].set(token)
  state = _DecodeState(step=jnp.int32(1), token=token,
                       position=jnp.sum(attention_mask, axis=-1).astype(jnp.int32), cache=cache,
                       output=output, done=token == sampling.eos_id)

  def unfinished(state: _DecodeState) -> jax.Array:
    return (state.step < max_new_tokens) & ~jnp.all(state.done)

  def decode_one(state: _DecodeState) -> _DecodeState:
    tokens = state.token[:, None]  # [batch, 1]
    logits, cache = model.apply(variables, tokens, jnp.ones_like(tokens),
                                positions=state.position[:, None], cache=state.cache)
    token = _next_token(logits[:, -1], jax.random.fold_in(key, state.step), sampling,
                       greedy=greedy)
    token = jnp.where(state.done, sampling.pad_id, token)
    return _DecodeState(step=state.step + 1, token=token, position=state.position + 1,
                        cache=cache, output=state.output.at[:, state.step].set(token),
                        done=state.done | (token == sampling.eos_id))

  return jax.lax.while_loop(unfinished, decode_one, state).output


def _left_pad(prompts: Sequence[Sequence[int]], *, length: int, pad_id: int
              ) -> tuple[np.ndarray, np.ndarray]:
  """Prompts -> (input_ids, attention_mask), each int32 [len(prompts), length], padded left."""
  input_ids = np.full((len(prompts), length), pad_id, np.int32)
  attention_mask = np.zeros((len(prompts), length), np.int32)
  for row, prompt in enumerate(prompts):
    input_ids[row, length - len(prompt):] = prompt
    attention_mask[row, length - len(prompt):] = 1
  return input_ids, attention_mask


def _until_eos(ids: list[int], eos_id: int | None) -> list[int]:
  if eos_id is not None and eos_id in ids:
    return ids[:ids.index(eos_id) + 1]
  return ids


def _length_fix(max_seq_len: int, prompt_len: int, max_new_tokens: int) -> str:
  """What to do when a prompt plus its continuation exceed the positions: a prompt that
  leaves no room is shortened, else max_new_tokens is lowered (or the prompt shortened)."""
  room = max_seq_len - prompt_len
  if room <= 0:
    return (f"shorten the prompt to fewer than {max_seq_len} tokens (to at most "
            f"{max(max_seq_len - max_new_tokens, 1)} for max_new_tokens={max_new_tokens})")
  return f"lower max_new_tokens to at most {room}, or shorten the prompt"


# -- public API -------------------------------------------------------------------------------


def generate(model: Transformer, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             seed: int = 0, eos_id: int | None = None, pad_id: int | None = 0
             ) -> list[list[int]]:
  """Continues each prompt (a list of token ids) with a causal model.

  Returns, per prompt, only the new ids: up to and including the first `eos_id`, else
  `max_new_tokens` of them. `temperature=0` decodes greedily; otherwise logits are divided by
  `temperature`, filtered by `top_k` and then `top_p`, and sampled with a key from `seed`.
  `pad_id` only fills the left padding (masked out); None means 0.
  """
  require_causal_lm(model, "generate")
  check_sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                  top_p=top_p)
  vocab_size = model.config.vocab_size
  prompts = [[int(i) for i in prompt] for prompt in prompts]
  for n, prompt in enumerate(prompts):
    if not prompt:
      raise UserError(f"prompt {n} is empty: generation needs at least one token to continue "
                      f"(e.g. a beginning-of-sequence id).")
    check_ids(prompt, vocab_size=vocab_size, what=f"prompt {n}")
  if not prompts or max_new_tokens == 0:
    return [[] for _ in prompts]
  longest = max(map(len, prompts))
  check_length(model, longest + max_new_tokens,
                what=f"the longest prompt ({longest} tokens) plus max_new_tokens={max_new_tokens}",
                fix=_length_fix(model.config.max_seq_len, longest, max_new_tokens))
  pad_id = 0 if pad_id is None else pad_id
  check_ids([pad_id], vocab_size=vocab_size, what="pad_id")

  padded_len = -(-longest // _PROMPT_LENGTH_BUCKET) * _PROMPT_LENGTH_BUCKET
  input_ids, attention_mask = _left_pad(prompts, length=padded_len, pad_id=pad_id)
  sampling = _Sampling(
      temperature=jnp.float32(temperature or 1.0),
      top_k=jnp.int32(vocab_size if top_k is None else min(top_k, vocab_size)),
      top_p=jnp.float32(1.0 if top_p is None else top_p),
      eos_id=jnp.int32(-1 if eos_id is None else eos_id),
      pad_id=jnp.int32(pad_id))
  output = _generate_ids(model, params, input_ids, attention_mask, jax.random.key(seed), sampling,
                         max_new_tokens=max_new_tokens, greedy=temperature == 0)
  return [_until_eos(row, eos_id) for row in np.asarray(output).tolist()]




__all__ = ["filter_logits", "generate"]
