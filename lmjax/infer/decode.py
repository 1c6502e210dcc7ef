"""Sampling from causal models with a KV cache, at the token-id level, streamed in chunks.

    continuations = generate(model, params, [[5, 17, 3], [8]], max_new_tokens=32, temperature=0)
    stream = stream_generate(model, params, prompts, max_new_tokens=256, chunk=8)
    new_ids = next(stream)       # per row, the ids the first chunk added
    new_ids = stream.send({1})   # the next chunk's, row 1 ended first (e.g. at a stop string)

The prompts are left-padded to a common length; one jitted prefill fills a KV cache of
`prompt_len + max_new_tokens` slots and picks each row's first token; then each jitted chunk
decodes up to `chunk` tokens inside a `lax.while_loop`, carrying the cache to the next chunk,
and stops once every row has emitted an end-of-sequence id. Left-padded rows get explicit
positions (their count of real tokens so far), so a prompt continues the same whether it is
batched or alone. A step's sampling key is `fold_in(key, step)`, so the chunk size changes no
token: `generate` is one chunk of `max_new_tokens`, and equals the joined stream. No tokenizer
and no file I/O here: lmjax.infer.complete does those.
"""

from __future__ import annotations

import functools
from typing import Any, Collection, Generator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import UserError
from lmjax.infer.checks import (check_ids, check_length, check_processors, check_sampling,
                                   left_padded_positions, require_causal_lm)
from lmjax.infer.sampling import Sampling, next_token, seen_ids
from lmjax.memory import check_fits, per_device_bytes
from lmjax.model import Transformer, init_cache, unrolled

# Prompts are left-padded to a multiple of this, so that nearby prompt lengths share one compiled
# prefill and decode loop (padding slots are masked out and cost a few wasted FLOPs).
_PROMPT_LENGTH_BUCKET = 16

# What a stream yields per chunk: for each row, the ids it gained (ending with its EOS id, if
# it emitted one); [] for rows that had already ended.
Chunk = list[list[int]]


class _DecodeState(NamedTuple):
  step: jax.Array         # int32 scalar: how many tokens each row has generated
  token: jax.Array        # [batch] int32, the token generated last
  position: jax.Array     # [batch] int32, the position that token takes
  cache: Any              # the model's KV cache
  output: jax.Array       # [batch, max_new_tokens] int32
  done: jax.Array         # [batch] bool: the row emitted an EOS id, or the caller ended it
  seen: jax.Array | None  # [batch, vocab] bool, ids in the prompt or generated; None: no penalty


# -- the jitted core --------------------------------------------------------------------------


def unrolled_model(model: Transformer, params) -> tuple[Transformer, Any]:
  """The same model with unrolled layers, each with a KV cache array of its own, updated in
  place (see lmjax.model.unrolled). Called inside the jitted programs below, where slicing the
  layers' params out of the stacked ones costs less than a copy made outside."""
  config, params = unrolled(model.config, params)
  return Transformer(config, model.dtype), params


def _prefill(model: Transformer, params, input_ids: jax.Array, attention_mask: jax.Array,
             key: jax.Array, sampling: Sampling, *, max_new_tokens: int, greedy: bool,
             penalise: bool) -> _DecodeState:
  """Left-padded prompts [batch, len], unrolled model -> the state after each row's first token."""
  batch, prompt_len = input_ids.shape
  cache = init_cache(model.config, batch, prompt_len + max_new_tokens, model.dtype)
  logits, cache = model.apply({"params": params}, input_ids, attention_mask,
                              positions=left_padded_positions(attention_mask), cache=cache)
  seen = seen_ids(input_ids, attention_mask, model.config.vocab_size) if penalise else None
  token = next_token(logits[:, -1], jax.random.fold_in(key, 0), sampling, step=jnp.int32(0),
                     seen=seen, greedy=greedy)
  return _DecodeState(
      step=jnp.int32(1), token=token,
      position=jnp.sum(attention_mask, axis=-1).astype(jnp.int32), cache=cache,
      output=jnp.full((batch, max_new_tokens), sampling.pad_id, jnp.int32).at[:, 0].set(token),
      done=sampling.is_eos[token], seen=_mark_seen(seen, token))


def _mark_seen(seen: jax.Array | None, token: jax.Array) -> jax.Array | None:
  return None if seen is None else seen.at[jnp.arange(token.shape[0]), token].set(True)


def _decode_loop(model: Transformer, params, state: _DecodeState, key: jax.Array,
                 sampling: Sampling, until: jax.Array, *, greedy: bool) -> _DecodeState:
  """Decodes one token per step (unrolled model) until `until` tokens or until every row is
  done. After a row is done its tokens are `pad_id`."""

  def unfinished(state: _DecodeState) -> jax.Array:
    return (state.step < until) & ~jnp.all(state.done)

  def decode_one(state: _DecodeState) -> _DecodeState:
    tokens = state.token[:, None]  # [batch, 1]
    logits, cache = model.apply({"params": params}, tokens, jnp.ones_like(tokens),
                                positions=state.position[:, None], cache=state.cache)
    token = next_token(logits[:, -1], jax.random.fold_in(key, state.step), sampling,
                       step=state.step, seen=state.seen, greedy=greedy)
    token = jnp.where(state.done, sampling.pad_id, token)
    return _DecodeState(step=state.step + 1, token=token, position=state.position + 1,
                        cache=cache, output=state.output.at[:, state.step].set(token),
                        done=state.done | sampling.is_eos[token],
                        seen=_mark_seen(state.seen, token))

  return jax.lax.while_loop(unfinished, decode_one, state)


# The two programs a stream runs: the prefill with the first chunk (one program, as the
# unchunked `generate` needs nothing more), then each further chunk, continuing the donated
# state in place. `until` is traced, so every chunk size shares them.


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "greedy", "penalise"))
def _first_chunk(model: Transformer, params, input_ids: jax.Array, attention_mask: jax.Array,
                 key: jax.Array, sampling: Sampling, until: jax.Array, *, max_new_tokens: int,
                 greedy: bool, penalise: bool) -> _DecodeState:
  model, params = unrolled_model(model, params)
  state = _prefill(model, params, input_ids, attention_mask, key, sampling,
                   max_new_tokens=max_new_tokens, greedy=greedy, penalise=penalise)
  return _decode_loop(model, params, state, key, sampling, until, greedy=greedy)


@functools.partial(jax.jit, static_argnames=("model", "greedy"), donate_argnames=("state",))
def _next_chunk(model: Transformer, params, state: _DecodeState, key: jax.Array,
                sampling: Sampling, until: jax.Array, *, greedy: bool) -> _DecodeState:
  model, params = unrolled_model(model, params)
  return _decode_loop(model, params, state, key, sampling, until, greedy=greedy)


# -- host side --------------------------------------------------------------------------------


def _left_pad(prompts: Sequence[Sequence[int]], *, length: int, pad_id: int
              ) -> tuple[np.ndarray, np.ndarray]:
  """Prompts -> (input_ids, attention_mask), each int32 [len(prompts), length], padded left."""
  input_ids = np.full((len(prompts), length), pad_id, np.int32)
  attention_mask = np.zeros((len(prompts), length), np.int32)
  for row, prompt in enumerate(prompts):
    input_ids[row, length - len(prompt):] = prompt
    attention_mask[row, length - len(prompt):] = 1
  return input_ids, attention_mask


def _length_fix(max_seq_len: int, prompt_len: int, max_new_tokens: int) -> str:
  """What to do when a prompt plus its continuation exceed the positions: a prompt that
  leaves no room is shortened, else max_new_tokens is lowered (or the prompt shortened)."""
  room = max_seq_len - prompt_len
  if room <= 0:
    return (f"shorten the prompt to fewer than {max_seq_len} tokens (to at most "
            f"{max(max_seq_len - max_new_tokens, 1)} for max_new_tokens={max_new_tokens})")
  return f"lower max_new_tokens to at most {room}, or shorten the prompt"


def _eos_ids(eos_id: int | Sequence[int] | None) -> list[int]:
  if eos_id is None:
    return []
  return [int(eos_id)] if isinstance(eos_id, (int, np.integer)) else [int(i) for i in eos_id]


def _check_prompts(model: Transformer, prompts: list[list[int]], max_new_tokens: int) -> None:
  vocab_size = model.config.vocab_size
  for n, prompt in enumerate(prompts):
    if not prompt:
      raise UserError(f"prompt {n} is empty: generation needs at least one token to continue "
                      f"(e.g. a beginning-of-sequence id).")
    check_ids(prompt, vocab_size=vocab_size, what=f"prompt {n}")
  if max_new_tokens > model.config.max_seq_len:  # also bounds the KV cache of RoPE models
    raise UserError(f"max_new_tokens={max_new_tokens} is more than this model's context "
                    f"(model.max_seq_len={model.config.max_seq_len} positions): lower "
                    f"--max-new-tokens to at most {model.config.max_seq_len}.")
  if prompts and max_new_tokens:
    longest = max(map(len, prompts))
    check_length(model, longest + max_new_tokens,
                 what=f"the longest prompt ({longest} tokens) plus max_new_tokens={max_new_tokens}",
                 fix=_length_fix(model.config.max_seq_len, longest, max_new_tokens))


def _new_ids(output: np.ndarray, ended: np.ndarray, is_eos: np.ndarray) -> Chunk:
  """A chunk's ids [batch, chunk] per row: cut after an EOS id (and the row marked `ended`
  in place), none for rows that had ended."""
  new_ids = []
  for r, ids in enumerate(output.tolist()):
    if ended[r]:
      ids = []
    else:
      stop = next((i for i, t in enumerate(ids) if is_eos[t]), None)
      if stop is not None:
        ids, ended[r] = ids[:stop + 1], True
    new_ids.append(ids)
  return new_ids


def _row_indices(rows: Collection[int], num_rows: int) -> np.ndarray:
  indices = sorted({int(r) for r in rows})
  if indices[0] < 0 or indices[-1] >= num_rows:
    raise UserError(f"cannot end row {indices[0] if indices[0] < 0 else indices[-1]}: the "
                    f"stream has rows 0 to {num_rows - 1} (num_return_sequences rows per "
                    f"prompt).")
  return np.asarray(indices)


# -- public API -------------------------------------------------------------------------------


def stream_generate(model: Transformer, params, prompts: Sequence[Sequence[int]], *,
                    max_new_tokens: int, chunk: int = 8, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None,
                    repetition_penalty: float = 1.0, min_new_tokens: int = 0,
                    num_return_sequences: int = 1, seed: int = 0, key: jax.Array | None = None,
                    eos_id: int | Sequence[int] | None = None, pad_id: int | None = 0
                    ) -> Generator[Chunk, Collection[int] | None, None]:
  """Continues each prompt (a list of token ids), yielding each chunk's new ids per row.

  The arguments are `generate`'s, plus `chunk`: the most tokens a row gains between yields.
  Every argument is checked here, before the first `next`. Sending a collection of row indices
  (`stream.send(rows)` in place of `next(stream)`) ends those rows before the next chunk; the
  stream ends once every row has ended or `max_new_tokens` are generated.
  """
  require_causal_lm(model, "generate")
  check_sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                 top_p=top_p)
  greedy = temperature == 0
  check_processors(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                   min_new_tokens=min_new_tokens, num_return_sequences=num_return_sequences,
                   greedy=greedy)
  if chunk < 1:
    raise UserError(f"chunk must be >= 1 token, got {chunk}.")
  vocab_size = model.config.vocab_size
  prompts = [[int(i) for i in prompt] for prompt in prompts]
  _check_prompts(model, prompts, max_new_tokens)
  pad_id = 0 if pad_id is None else pad_id
  check_ids([pad_id], vocab_size=vocab_size, what="pad_id")
  # An EOS id outside the vocabulary can never be generated (GPT-2's configs name 50256 for any
  # vocabulary size), so it ends nothing, as in Hugging Face.
  eos_ids = [i for i in _eos_ids(eos_id) if 0 <= i < vocab_size]
  rows = [prompt for prompt in prompts for _ in range(num_return_sequences)]  # consecutive
  is_eos = np.zeros(vocab_size, bool)
  is_eos[eos_ids] = True
  sampling = Sampling(
      temperature=jnp.float32(temperature or 1.0),
      top_k=jnp.int32(vocab_size if top_k is None else min(top_k, vocab_size)),
      top_p=jnp.float32(1.0 if top_p is None else top_p),
      repetition_penalty=jnp.float32(repetition_penalty),
      min_new_tokens=jnp.int32(min_new_tokens), is_eos=jnp.asarray(is_eos),
      pad_id=jnp.int32(pad_id))
  key = jax.random.key(seed) if key is None else key

  def stream() -> Generator[Chunk, Collection[int] | None, None]:
    if not rows or max_new_tokens == 0:
      return
    longest = max(map(len, rows))
    padded_len = -(-longest // _PROMPT_LENGTH_BUCKET) * _PROMPT_LENGTH_BUCKET
    input_ids, attention_mask = _left_pad(rows, length=padded_len, pad_id=pad_id)
    cache = jax.eval_shape(lambda: init_cache(model.config, len(rows),
                                              padded_len + max_new_tokens, model.dtype))
    check_fits(per_device_bytes(cache), what=f"the KV cache of {len(rows)} sequence(s) of "
               f"{padded_len} + {max_new_tokens} tokens",
               knobs="lower --max-new-tokens, or generate for fewer prompts at a time "
                     "(--batch-size, --num-return-sequences)")
    ended = np.zeros(len(rows), bool)  # host side: the row emitted an EOS id or was ended
    start = 0
    while start < max_new_tokens and not ended.all():
      until = min(start + chunk, max_new_tokens)
      if start == 0:
        state = _first_chunk(model, params, input_ids, attention_mask, key, sampling,
                             jnp.int32(until), max_new_tokens=max_new_tokens, greedy=greedy,
                             penalise=repetition_penalty != 1.0)
      else:
        state = _next_chunk(model, params, state, key, sampling, jnp.int32(until),
                            greedy=greedy)
      output = np.array(state.output[:, start:until])  # a copy: the next call donates state
      finished = yield _new_ids(output, ended, is_eos)
      if finished:
        finished = _row_indices(finished, len(rows))
        ended[finished] = True
        state = state._replace(done=state.done.at[finished].set(True))
      start = until

  return stream()


def generate(model: Transformer, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float = 1.0, min_new_tokens: int = 0,
             num_return_sequences: int = 1, seed: int = 0, key: jax.Array | None = None,
             eos_id: int | Sequence[int] | None = None, pad_id: int | None = 0
             ) -> list[list[int]]:
  """Continues each prompt (a list of token ids) with a causal model.

  Returns, per prompt, only the new ids: up to and including the first end-of-sequence id
  (`eos_id`: one id or several, any of which ends a row), else `max_new_tokens` of them. With
  `num_return_sequences=n` each prompt gets n rows, sampled independently and consecutive in the
  output (len(prompts) * n lists, as in Hugging Face). `temperature=0` decodes greedily (and
  refuses n > 1); otherwise logits are divided by `temperature`, filtered by `top_k` and then
  `top_p`, and sampled with `key` (default: a key from `seed`). Before that,
  `repetition_penalty` (HF's: ids already in the prompt or the output have negative logits
  multiplied and positive ones divided by it; 1.0 is off) and `min_new_tokens` (EOS ids banned
  until that many tokens) act on the raw logits. `pad_id` only fills the left padding (masked
  out); None means 0.
  """
  prompts = list(prompts)
  stream = stream_generate(
      model, params, prompts, max_new_tokens=max_new_tokens, chunk=max(max_new_tokens, 1),
      temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
      min_new_tokens=min_new_tokens, num_return_sequences=num_return_sequences, seed=seed,
      key=key, eos_id=eos_id, pad_id=pad_id)
  rows = [[] for _ in range(len(prompts) * num_return_sequences)]
  for new_ids in stream:
    for row, ids in zip(rows, new_ids):
      row.extend(ids)
  return rows


__all__ = ["Chunk", "generate", "stream_generate", "unrolled_model"]
