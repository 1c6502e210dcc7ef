"""The device side of continuous batching: a fixed number of slots, each with its own KV cache row.

    state = empty_slots(model, slots=8, max_seq_len=256)
    state, first = prefill(model, params, None, state, slot, padded_ids, length, key, settings,
                           adapter)
    state, steps = decode(model, params, None, state, active, steps=4)   # 4 tokens a slot

These are the pure programs; lmjax.infer.slot_mesh jits them with the shardings of a mesh.

Every shape is fixed: the cache holds `slots` rows of `max_seq_len` slots each, with a
per-row write index (lmjax.model.init_cache's "index" as a [slots] vector), so requests of any
lengths decode together. A prompt is right-padded to a bucket length (`prefill_buckets`) and
run alone through a fresh cache row, which then replaces the slot's row. A decoding step runs
over the lowest power-of-two number of slots that holds every request (`decode_groups`), so a
few requests cost few rows (on a mesh that splits the slots, every step runs over all of them:
a smaller group would move rows between devices). One program is compiled per prefill bucket
used and per decode group, and none as requests come and go. Each slot has its own sampling
settings and random key (a request's seed), so what a request generates does not depend on what
it is batched with. A step's key is `fold_in(key, step)`, as in
lmjax.infer.decode, so that a seeded request continues as `lmjax generate` does.

With LoRA adapters (`adapters`: lmjax.infer.adapters' stacked lora_a/lora_b, None without),
each slot also holds the index of its request's adapter: a prefill runs with that adapter's
params, and a decoding step runs the model once per slot under `jax.vmap`, each row with its own
adapter gathered from the stack while the base weights are shared (so a matmul with them stays
one matmul over the rows).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lmjax.infer.adapters import select, with_adapter
from lmjax.infer.decode import unrolled_model
from lmjax.infer.sampling import filter_logits
from lmjax.model import Transformer, init_cache

# How many of each step's most likely tokens are reported with their log-probabilities
# (OpenAI's top_logprobs allows up to 20).
TOP_LOGPROBS = 20


class SlotSettings(NamedTuple):
  """Each slot's sampling settings, [slots] arrays (scalars for one slot's prefill)."""

  temperature: jax.Array  # float32; 0 is greedy
  top_k: jax.Array        # int32; the vocabulary size when off
  top_p: jax.Array        # float32; 1.0 when off


class Slots(NamedTuple):
  """The decoding state of every slot."""

  cache: Any              # unrolled layers' {"key", "value"} [slots, kv_heads, len, head_dim],
                          # "segment_ids" [slots, len], "index" [slots] (the next position)
  token: jax.Array        # [slots] int32, the token generated last (the next step's input)
  step: jax.Array         # [slots] int32, tokens generated so far
  key: jax.Array          # [slots] random keys
  settings: SlotSettings
  adapter: jax.Array      # [slots] int32, the LoRA adapter of each slot's request (0: none)


class Sampled(NamedTuple):
  """What a step chose, per slot: [slots] (or [slots, steps] from `decode`)."""

  token: jax.Array        # int32
  logprob: jax.Array      # float32, the token's log-probability under the model
  top_ids: jax.Array      # int32 [..., TOP_LOGPROBS], the most likely tokens (fewer if the
  top_logprobs: jax.Array  # float32 [..., TOP_LOGPROBS]   vocabulary is smaller)


def empty_slots(model: Transformer, *, slots: int, max_seq_len: int) -> Slots:
  """Every slot free: an empty cache of `slots` rows of `max_seq_len` positions."""
  config = dataclasses.replace(model.config, scan_layers=False)  # decoding runs unrolled
  cache = init_cache(config, slots, max_seq_len, model.dtype)
  cache["index"] = jnp.zeros((slots,), jnp.int32)
  zeros = lambda dtype=jnp.int32: jnp.zeros((slots,), dtype)  # distinct buffers: all donated
  return Slots(cache=cache, token=zeros(), step=zeros(),
               key=jax.random.split(jax.random.key(0), slots),
               settings=SlotSettings(temperature=zeros(jnp.float32),
                                     top_k=zeros() + model.config.vocab_size,
                                     top_p=zeros(jnp.float32) + 1),
               adapter=zeros())


def prefill_buckets(max_seq_len: int, *, smallest: int = 16) -> list[int]:
  """The padded prompt lengths: powers of two from `smallest`, and `max_seq_len` itself."""
  buckets, length = [], smallest
  while length < max_seq_len:
    buckets.append(length)
    length *= 2
  return buckets + [max_seq_len]


def _sample(logits: jax.Array, keys: jax.Array, step: jax.Array, settings: SlotSettings
            ) -> Sampled:
  """One token per row: logits [rows, vocab] -> Sampled [rows]. Greedy rows (temperature 0)
  take the argmax; the others are sampled after temperature, top-k and top-p. A step where
  every row is greedy samples nothing, and one where no row filters sorts nothing (the sort of
  top-k/top-p costs several times the forward pass of a small model on CPU)."""
  logits = logits.astype(jnp.float32)
  logprobs = jax.nn.log_softmax(logits, axis=-1)
  greedy = settings.temperature == 0
  argmax = jnp.argmax(logits, axis=-1)

  def sample() -> jax.Array:
    scaled = logits / jnp.where(greedy, 1.0, settings.temperature)[:, None]
    filters = ~greedy & ((settings.top_p < 1) | (settings.top_k < logits.shape[-1]))
    scaled = jax.lax.cond(jnp.any(filters), lambda x: filter_logits(
        x, top_k=settings.top_k[:, None], top_p=settings.top_p[:, None]), lambda x: x, scaled)
    step_keys = jax.vmap(jax.random.fold_in)(keys, step)
    return jax.vmap(jax.random.categorical)(step_keys, scaled)

  sampled = jax.lax.cond(jnp.all(greedy), lambda: argmax, sample)
  token = jnp.where(greedy, argmax, sampled).astype(jnp.int32)
  top_logprobs, top_ids = jax.lax.top_k(logprobs, min(TOP_LOGPROBS, logits.shape[-1]))
  return Sampled(token=token, logprob=jnp.take_along_axis(logprobs, token[:, None], -1)[:, 0],
                 top_ids=top_ids.astype(jnp.int32), top_logprobs=top_logprobs)


def _set_row(tree, row, slot: jax.Array):
  """`tree` ([slots, …] leaves) with row `slot` replaced by `row` ([1, …] or [] leaves)."""
  return jax.tree.map(lambda whole, part: jax.lax.dynamic_update_index_in_dim(
      whole, jnp.reshape(part, whole.shape[1:]), slot, 0), tree, row)


def _unrolled(model: Transformer, params, adapters):
  """The model, params and stacked adapters with unrolled layers (`layers_{i}`: see
  lmjax.infer.decode.unrolled_model): [adapters, layers, …] become [adapters, …] per layer."""
  unrolled, params = unrolled_model(model, params)
  if adapters is None or not model.config.scan_layers:
    return unrolled, params, adapters
  split = {}
  for key, value in adapters.items():
    if key.startswith("layers."):
      for i in range(model.config.num_layers):
        split[f"layers_{i}.{key.removeprefix('layers.')}"] = value[:, i]
    else:
      split[key] = value
  return unrolled, params, split


def prefill(model: Transformer, params, adapters, state: Slots, slot: jax.Array,
            input_ids: jax.Array, length: jax.Array, key: jax.Array, settings: SlotSettings,
            adapter: jax.Array) -> tuple[Slots, Sampled]:
  """Starts a request in `slot`: its prompt `input_ids` [1, bucket] (right-padded, `length`
  real tokens) fills a fresh cache row, and its first token is chosen. `key`, `settings` and
  `adapter` (scalars) become the slot's. Returns the new state and the first token's Sampled [1]."""
  model, params, adapters = _unrolled(model, params, adapters)
  params = with_adapter(params, select(adapters, adapter))
  bucket = input_ids.shape[1]
  max_seq_len = state.cache["segment_ids"].shape[1]
  cache = init_cache(model.config, 1, max_seq_len, model.dtype)
  attention_mask = (jnp.arange(bucket) < length).astype(jnp.int32)[None]  # [1, bucket]
  logits, cache = model.apply({"params": params}, input_ids, attention_mask, cache=cache)
  last = jax.lax.dynamic_index_in_dim(logits, length - 1, axis=1, keepdims=False)  # [1, vocab]
  row_settings = jax.tree.map(lambda x: jnp.reshape(x, (1,)), settings)
  first = _sample(last, key[None], jnp.zeros((1,), jnp.int32), row_settings)
  cache["index"] = length
  row = Slots(cache=cache, token=first.token, step=jnp.int32(1), key=key, settings=settings,
              adapter=adapter)
  return _set_row(state, row, slot), first


def decode_groups(slots: int) -> list[int]:
  """The numbers of leading slots `decode` runs over: powers of two below `slots`, and `slots`."""
  return prefill_buckets(slots, smallest=1)


def _step_logits(model: Transformer, params, adapters, state: Slots, row_axes: Any
                 ) -> tuple[jax.Array, Any]:
  """One decoding step of every row (unrolled model; `adapters`: each row's lora_a/lora_b,
  [rows, …], or None): (logits [rows, vocab], the new cache). `row_axes` are the mesh axes the
  rows are split over, for the model run once per row (None: not split)."""

  def forward(params, token, cache):  # token [rows], cache of `rows` rows
    logits, cache = model.apply({"params": params}, token[:, None], jnp.ones_like(token)[:, None],
                                positions=cache["index"][:, None], cache=cache)
    return logits[:, -1], cache

  if adapters is None:
    return forward(params, state.token, state.cache)

  def row(adapter, token, cache):  # one slot, with its own adapter: a batch of one
    one = lambda x: x[None]
    logits, cache = forward(with_adapter(params, adapter), one(token), jax.tree.map(one, cache))
    return logits[0], jax.tree.map(lambda x: x[0], cache)
  return jax.vmap(row, spmd_axis_name=row_axes)(adapters, state.token, state.cache)


def decode(model: Transformer, params, adapters, state: Slots, active: jax.Array, *, steps: int,
           row_axes: Any = None) -> tuple[Slots, Sampled]:
  """`steps` tokens for each of the first `rows = len(active)` slots (one of `decode_groups`:
  a server with few requests in its lowest slots computes few rows); `active` [rows] bool marks
  the slots in use (the others compute alongside and keep their place). With adapters, the
  model runs once per row, the rows split over the mesh axes `row_axes` (None: unsplit).
  Returns the new state (the slots from `rows` on untouched) and Sampled [rows, steps]."""
  model, params, adapters = _unrolled(model, params, adapters)
  whole, rows = state, active.shape[0]
  if rows < state.token.shape[0]:
    state = jax.tree.map(lambda x: x[:rows], state)
  adapters = select(adapters, state.adapter)  # each row's, gathered once for all the steps

  def one_step(state: Slots, _) -> tuple[Slots, Sampled]:
    index = state.cache["index"]
    logits, cache = _step_logits(model, params, adapters, state, row_axes)
    chosen = _sample(logits, state.key, state.step, state.settings)
    cache["index"] = jnp.where(active, index + 1, index)
    # An idle slot keeps writing at its index, inside its row: cap it for a row that is full.
    cache["index"] = jnp.minimum(cache["index"], state.cache["segment_ids"].shape[1] - 1)
    return state._replace(cache=cache, token=chosen.token, step=state.step + 1), chosen

  state, sampled = jax.lax.scan(one_step, state, None, length=steps)
  if rows < whole.token.shape[0]:
    state = jax.tree.map(lambda w, part: jax.lax.dynamic_update_slice_in_dim(w, part, 0, 0),
                         whole, state)
  return state, jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1), sampled)


__all__ = ["Sampled", "SlotSettings", "Slots", "TOP_LOGPROBS", "decode", "decode_groups",
           "empty_slots", "prefill", "prefill_buckets"]
