"""Attention over a sequence split across devices: ring attention, or all-gathered keys/values.

Both run under `jax.shard_map`, manual over the axes that split the sequence only (the batch,
heads and the rest stay with XLA's partitioner), on each device's queries, keys and values
(lmjax.model.context_parallel says which axes, and in what order the tokens are):

  ring       the keys and values, with their segment ids and slots, go around the devices with
             `ppermute`, one block per step, while each device folds every block into an online
             softmax (running max and sum in float32); each step is rematerialised in the
             backward pass, which keeps a step's inputs, not its scores. In zig-zag
             order (causal models) each step after the first computes half a block: the early
             key chunk for all queries, or the late queries for all keys, whichever causality
             leaves (the other half is masked out whole).
  allgather  each layer all-gathers the keys and values (and their segment ids and slots) and
             folds them into the softmax of its own queries in one step: one collective, the
             whole sequence's keys and values on every device.

Masks come from segment ids (0: padding, never seen; packed documents see their own) and slots
(causality and sliding windows count slot distances), exactly as lmjax.model.attention's; the
logits are scaled and soft-capped as its XLA attention does, in float32. Queries that see no key
at all (padding) give zeros, where the dense softmax gives the mean of the values: no loss reads
them. Within a block, queries go QUERY_TILE at a time, so a device's scores in memory are one
tile's against one block of keys: QUERY_TILE x length / context per head with ring attention,
QUERY_TILE x length with all-gathered K/V.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from lmjax.model.context_parallel import ContextSplit
from lmjax.model.layers import soft_cap

# Queries whose scores are computed at once in a block (lmjax.model.attention's QUERY_BLOCK).
QUERY_TILE = 512
_NO_WINDOW = jnp.iinfo(jnp.int32).max
_MASKED = jnp.finfo(jnp.float32).min


class _Softmax(NamedTuple):
  """An online softmax over the key blocks seen so far, for queries grouped by kv head."""

  out: jax.Array    # float32 [batch, kv_heads, group, q_len, head_dim], unnormalised
  max: jax.Array    # float32 [batch, kv_heads, group, q_len], the largest logit so far
  total: jax.Array  # float32 [batch, kv_heads, group, q_len], the sum of exp(logit - max)

  @classmethod
  def empty(cls, q: jax.Array) -> _Softmax:
    lead = q.shape[:-1]
    return cls(jnp.zeros(q.shape, jnp.float32), jnp.full(lead, _MASKED, jnp.float32),
               jnp.zeros(lead, jnp.float32))

  def result(self) -> jax.Array:
    total = self.total[..., None]
    return jnp.where(total > 0, self.out / jnp.where(total > 0, total, 1.0), 0.0)

  def take(self, queries: slice) -> _Softmax:
    return _Softmax(self.out[:, :, :, queries], self.max[..., queries],
                    self.total[..., queries])


class _Keys(NamedTuple):
  """One block of keys and what masks them; what goes around the ring."""

  key: jax.Array          # [batch, kv_heads, k_len, head_dim]
  value: jax.Array        # [batch, kv_heads, k_len, head_dim]
  segment_ids: jax.Array  # [batch, k_len], 0 = padding
  slots: jax.Array        # [k_len] int32

  def take(self, keys: slice) -> _Keys:
    return _Keys(self.key[:, :, keys], self.value[:, :, keys], self.segment_ids[:, keys],
                 self.slots[keys])


class _Queries(NamedTuple):
  q: jax.Array            # [batch, kv_heads, group, q_len, head_dim]
  segment_ids: jax.Array  # [batch, q_len]
  slots: jax.Array        # [q_len] int32

  def take(self, queries: slice) -> _Queries:
    return _Queries(self.q[:, :, :, queries], self.segment_ids[:, queries], self.slots[queries])


def _fold(acc: _Softmax, queries: _Queries, keys: _Keys, causal: bool, window_free: bool,
          scale: float, softcap: float | None, window: jax.Array = _NO_WINDOW) -> _Softmax:
  """`acc` with one block of keys folded in, QUERY_TILE queries at a time where there are more
  (each tile's scores computed, used and dropped before the next: a block's scores never all
  exist at once). The last tile is filled up with padding queries, which see nothing."""
  n = queries.q.shape[3]
  if n <= QUERY_TILE:
    return _fold_tile(acc, queries, keys, causal, window_free, scale, softcap, window)
  count = -(-n // QUERY_TILE)

  def tiles(x, axis):  # [..., n, ...] (n at `axis`) -> [count, ..., QUERY_TILE, ...]
    x = jnp.pad(x, [(0, count * QUERY_TILE - n) if i == axis else (0, 0) for i in range(x.ndim)])
    return jnp.moveaxis(x.reshape(*x.shape[:axis], count, QUERY_TILE, *x.shape[axis + 1:]), axis, 0)

  def untiled(x, axis):  # the inverse
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(*x.shape[:axis], count * QUERY_TILE, *x.shape[axis + 2:])[
        (slice(None),) * axis + (slice(0, n),)]

  acc = _Softmax(tiles(acc.out, 3), tiles(acc.max, 3), tiles(acc.total, 3))
  queries = _Queries(tiles(queries.q, 3), tiles(queries.segment_ids, 1), tiles(queries.slots, 0))
  acc = jax.lax.map(lambda tile: _fold_tile(*tile, keys, causal, window_free, scale, softcap,
                                            window), (acc, queries))
  return _Softmax(untiled(acc.out, 3), untiled(acc.max, 3), untiled(acc.total, 3))


@functools.partial(jax.checkpoint, static_argnums=(3, 4, 5, 6))
def _fold_tile(acc: _Softmax, queries: _Queries, keys: _Keys, causal: bool, window_free: bool,
          scale: float, softcap: float | None, window: jax.Array = _NO_WINDOW) -> _Softmax:
  """`acc` with a block of keys folded in for a tile of queries. Rematerialised: the backward
  pass keeps the tile's inputs, not its scores."""
  mask = queries.segment_ids[:, :, None] == keys.segment_ids[:, None, :]    # [b, q, k]
  mask &= keys.segment_ids[:, None, :] != 0
  distance = queries.slots[:, None] - keys.slots[None, :]                   # [q, k]
  if causal:
    mask &= distance >= 0
  if not window_free:
    mask &= (distance if causal else jnp.abs(distance)) < window
  mask = mask[:, None, None]                                                # [b, 1, 1, q, k]
  logits = jnp.einsum("bkgqd,bktd->bkgqt", queries.q, keys.key,
                      preferred_element_type=jnp.float32)
  logits = jnp.where(mask, soft_cap(logits * scale, softcap), _MASKED)
  # The max only keeps exp() in range: the result does not depend on it, nor its gradient.
  new_max = jax.lax.stop_gradient(jnp.maximum(acc.max, logits.max(axis=-1)))
  weights = jnp.where(mask, jnp.exp(logits - new_max[..., None]), 0.0)
  rescale = jnp.exp(acc.max - new_max)
  total = acc.total * rescale + weights.sum(axis=-1)
  out = acc.out * rescale[..., None] + jnp.einsum(
      "bkgqt,bktd->bkgqd", weights.astype(keys.value.dtype), keys.value,
      preferred_element_type=jnp.float32)
  return _Softmax(out, new_max, total)


def _ring(queries: _Queries, keys: _Keys, fold, *, axis_name, size: int, zigzag: bool
          ) -> _Softmax:
  """The online softmax over every device's keys, passed around the ring (inside shard_map)."""
  acc = fold(_Softmax.empty(queries.q), queries, keys)
  me = jax.lax.axis_index(axis_name)
  half = queries.q.shape[3] // 2
  early, late = slice(None, half), slice(half, None)

  def early_keys(acc, keys):   # from a device before this one: all queries, its early chunk
    return fold(acc, queries, keys.take(early))

  def late_queries(acc, keys):  # from a device after: this device's late chunk, all its keys
    folded = fold(acc.take(late), queries.take(late), keys)
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=3), acc.take(early), folded)

  ring = [(d, (d + 1) % size) for d in range(size)]

  def step(carry, source):  # source: the device whose keys arrive at this step
    acc, keys = carry
    keys = jax.lax.ppermute(keys, axis_name, ring)
    if zigzag:
      acc = jax.lax.cond(source < me, early_keys, late_queries, acc, keys)
    else:
      acc = fold(acc, queries, keys)
    return (acc, keys), None

  sources = (me - jnp.arange(1, size)) % size
  (acc, _), _ = jax.lax.scan(step, (acc, keys), sources)
  return acc


def _all_gathered(queries: _Queries, keys: _Keys, fold, *, axis_name) -> _Softmax:
  """One softmax of the local queries against every device's keys (inside shard_map)."""
  gather = lambda x, axis: jax.lax.all_gather(x, axis_name, axis=axis, tiled=True)
  keys = _Keys(gather(keys.key, 2), gather(keys.value, 2), gather(keys.segment_ids, 1),
               gather(keys.slots, 0))
  return fold(_Softmax.empty(queries.q), queries, keys)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, query_segment_ids: jax.Array,
              key_segment_ids: jax.Array, slots: jax.Array, *, split: ContextSplit,
              causal: bool, window: jax.Array | int | None, scale: float,
              softcap: float | None) -> jax.Array:
  """Attention over a sequence split as `split` says, each token at its `slot`.

  q: [batch, length, heads, head_dim]; k, v: [batch, kv_heads, length, head_dim]; segment ids
  [batch, length]; slots [length] int32 (the order the tokens are in); `window`: a sliding
  window in slots (an int32 scalar under scan; None: none). Returns [batch, length, heads,
  head_dim] in q's dtype.
  """
  h, kv_heads = q.shape[2], k.shape[1]
  axis_name, axes = split.axis_name, frozenset(split.axes)
  window_free = window is None
  window = jnp.asarray(_NO_WINDOW if window is None else window, jnp.int32)

  def local(q, k, v, q_seg, k_seg, slots, window):
    b, n, _, d = q.shape                                     # n: this device's tokens
    grouped = q.reshape(b, n, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)
    queries, keys = _Queries(grouped, q_seg, slots), _Keys(k, v, k_seg, slots)
    fold = lambda acc, qs, ks: _fold(acc, qs, ks, causal, window_free, scale, softcap, window)
    if split.ring:
      acc = _ring(queries, keys, fold, axis_name=axis_name, size=split.size,
                  zigzag=split.zigzag)
    else:
      acc = _all_gathered(queries, keys, fold, axis_name=axis_name)
    out = acc.result().astype(q.dtype)                         # [b, kv, group, n, d]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, n, h, d)

  tokens, heads_major = P(None, axis_name), P(None, None, axis_name)
  return jax.shard_map(local, in_specs=(tokens, heads_major, heads_major, tokens, tokens,
                                        P(axis_name), P()),
                       out_specs=tokens, axis_names=axes)(
      q, k, v, query_segment_ids, key_segment_ids, slots, window)
