"""Multi-head attention with grouped key/value heads, optional QK-norm, rotary positions,
soft-capped logits and a KV cache.

Masks are built once per forward pass (`make_mask`) from segment ids, which express padding
(segment 0) and packed documents (segments 1, 2, …) alike, plus causality by slot: as booleans
of shape [batch, 1, q_len, kv_len] for the dense implementations, with the segment ids beside
them for kernels that take the mask's structure instead (splash). A sliding window narrows it
per layer (`sliding_window_mask`), by slot as well: within a document, and over a left-padded
prompt's real tokens, slots and positions advance together, and transformers' masks count
slots (cache positions) too. The splash kernel here has no window: `auto` then takes XLA.
Neither kernel soft-caps the logits (Gemma 2), and splash scales them by head_dim ** -0.5 only:
`auto` takes XLA for those too. XLA's dense attention reads a long causal sequence without a KV
cache a block of queries at a time, each against the keys up to its own end (`QUERY_BLOCK`);
where the caller knows every row to be one right-padded document (`Rows.RIGHT_PADDED`: scoring),
a CPU reads them in tiles masked by slot alone (lmjax.model.causal) unless soft-capped or
windowed.
Where the sequence is split across devices (context parallelism), attention runs in
lmjax.model.ring instead, its masks built there from the segment ids and each token's slot.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.model import causal as causal_tiles
from lmjax.model import ring, splash
from lmjax.model.config import AttentionImpl, ModelConfig, Positions
from lmjax.model.context_parallel import context_split
from lmjax.model.layers import (DenseGeneral, LayerNorm, rope_inverse_frequencies,
                                rotary_embedding, soft_cap)

# Queries read at a time by dense causal attention without a KV cache (`dot_product_attention`).
QUERY_BLOCK = 512

LayerCache = dict[str, jax.Array]  # {"key", "value"}: [batch, kv_heads, cache_len, head_dim]


def attention_mask(query_segment_ids: jax.Array, key_segment_ids: jax.Array, *, causal: bool,
                   query_offset: jax.Array | int = 0) -> jax.Array:
  """Which keys each query may see: [batch, q] and [batch, k] segment ids -> [batch, 1, q, k].

  Segment 0 is padding and is never attended to; other ids must match. With `causal`, query i
  (at slot `query_offset + i`) sees keys at slots <= its own; `query_offset` is a scalar, or
  [batch] where each row's cache stands elsewhere (a server's slots).
  """
  mask = query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
  mask &= key_segment_ids[:, None, :] != 0
  if causal:
    mask &= _slot_distance(query_offset, *mask.shape[1:]) >= 0
  return mask[:, None, :, :]


def _slot_distance(query_offset: jax.Array | int, q_len: int, k_len: int) -> jax.Array:
  """Query slot minus key slot: [q_len, k_len], or [batch, q_len, k_len] for a [batch] offset."""
  q_slot = jnp.asarray(query_offset)[..., None] + jnp.arange(q_len)  # [q_len] or [batch, q_len]
  return q_slot[..., :, None] - jnp.arange(k_len)


@jax.tree_util.register_static  # a static part of the mask: it picks code, it is not data
class Rows(enum.Enum):
  """What the caller knows of a batch's rows beyond their segment ids."""

  ANY = "any"  # packed documents, padding on either side: the segment ids say it all
  # Each row one document from slot 0, padded after it only (segment ids 1…1 0…0), no KV cache:
  # no real query reaches a padding key, so causal attention may mask by slot alone.
  RIGHT_PADDED = "right_padded"


class Mask(NamedTuple):
  """Which keys each query may see, in the forms the implementations take."""

  dense: jax.Array | None       # bool [batch, 1, q_len, kv_len]; None with `slots`
  query_segment_ids: jax.Array  # [batch, q_len], 0 = padding
  key_segment_ids: jax.Array    # [batch, kv_len]
  query_offset: jax.Array | int = 0  # the first query's slot (where a KV cache stands)
  # [length] int32, each token's slot, where the sequence is split across devices (and maybe
  # reordered): lmjax.model.ring masks by these, and no dense mask is built.
  slots: jax.Array | None = None
  rows: Rows = Rows.ANY


def make_mask(query_segment_ids: jax.Array, key_segment_ids: jax.Array, *, causal: bool,
              query_offset: jax.Array | int = 0, slots: jax.Array | None = None,
              rows: Rows = Rows.ANY) -> Mask:
  """The `Mask` of these segment ids. The dense form is built even for `Rows.RIGHT_PADDED`,
  which other paths (soft-capping, windows, short rows, cuDNN) still read; where none does, XLA
  drops it unbuilt."""
  if slots is not None:
    return Mask(None, query_segment_ids, key_segment_ids, query_offset, slots)
  return Mask(attention_mask(query_segment_ids, key_segment_ids, causal=causal,
                             query_offset=query_offset), query_segment_ids, key_segment_ids,
              query_offset, rows=rows)


def sliding_window_mask(mask: Mask, window: jax.Array | int, *, causal: bool) -> Mask:
  """`mask` narrowed to a sliding window of `window` slots (an int, or an int32 scalar: each
  layer's under `nn.scan`). Causal: query slot i sees keys at slots j with i - j < window, so
  itself and the window - 1 before it (transformers' `sliding_window_overlay`); bidirectional:
  |i - j| < window.
  """
  distance = _slot_distance(mask.query_offset, *mask.dense.shape[2:])  # [(batch,) q, kv]
  if not causal:
    distance = jnp.abs(distance)
  if distance.ndim == 3:
    distance = distance[:, None]  # [batch, 1, q_len, kv_len], as the dense mask
  return mask._replace(dense=mask.dense & (distance < window))


def _choose_impl(impl: AttentionImpl, q: jax.Array, k: jax.Array, cached: bool, windowed: bool,
                 softcap: float | None = None, plain_scale: bool = True) -> AttentionImpl:
  if impl is not AttentionImpl.AUTO:
    return impl
  if softcap is not None:
    return AttentionImpl.XLA
  backend = jax.default_backend()
  if backend == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
    return AttentionImpl.CUDNN
  if (backend == "tpu" and not cached and not windowed and plain_scale
      and splash.supports(q.shape[1], k.shape[2], q.shape[3])):
    return AttentionImpl.SPLASH
  return AttentionImpl.XLA


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Mask | jax.Array, *,
                          impl: AttentionImpl = AttentionImpl.AUTO, causal: bool = False,
                          cached: bool = False, windowed: bool = False,
                          scale: float | None = None, softcap: float | None = None) -> jax.Array:
  """softmax(soft_cap(q k^T * scale) + mask) v with kv heads shared by groups of query heads.

  q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_heads, kv_len, head_dim] (heads-major,
  as the KV cache stores them: a decoding step reads them without a transpose); mask: a `Mask`
  (or its dense form, bool [batch, 1, q_len, kv_len], for the dense implementations; a Mask of
  `Rows.RIGHT_PADDED` rows lets XLA read long causal rows in tiles, lmjax.model.causal);
  `causal`: the mask is causal (the splash kernel takes it as structure); `cached`: k and v come
  from a KV cache (slots past the query: splash does not apply); `windowed`: the dense mask has
  a sliding window, which splash's structure lacks; `scale`: the logits' factor (None:
  head_dim ** -0.5); `softcap`: cap * tanh(logits / cap) before the mask (XLA only). Returns
  [batch, q_len, heads, head_dim].
  """
  d = q.shape[3]
  scale = d ** -0.5 if scale is None else scale
  impl = _choose_impl(impl, q, k, cached=cached, windowed=windowed, softcap=softcap,
                      plain_scale=scale == d ** -0.5)
  if softcap is not None and impl is not AttentionImpl.XLA:
    raise ValueError(f"{impl.value} attention cannot soft-cap the logits")
  if impl is AttentionImpl.SPLASH:
    if not isinstance(mask, Mask) or cached or windowed or scale != d ** -0.5:
      raise ValueError("splash attention takes a Mask with segment ids, no KV cache, no "
                       "sliding window and the head_dim ** -0.5 scale")
    return splash.splash_attention(q, k, v, mask.query_segment_ids, mask.key_segment_ids,
                                   causal=causal)
  rows = mask.rows if isinstance(mask, Mask) else Rows.ANY
  mask = mask.dense if isinstance(mask, Mask) else mask
  if impl is AttentionImpl.CUDNN:
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # cuDNN takes [batch, len, heads, d]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")
  if (rows is Rows.RIGHT_PADDED and causal and not cached and not windowed and softcap is None
      and q.shape[1] > 2 * causal_tiles.BLOCK and jax.default_backend() == "cpu"):
    # Over two tiles only: a shorter row padded to whole tiles would compute more scores than
    # its dense square. Measured on CPUs only: on an accelerator, hundreds of small tiles a
    # layer would each be a kernel launch, where the dense blocks are a few large ones.
    return causal_tiles.attention(q, k, v, scale=scale)
  if causal and not cached and q.shape[1] > QUERY_BLOCK:
    # Dense attention computes, then masks, every score: [heads, length, length] float32 logits
    # and probabilities. Without a KV cache, query slot i sees keys up to slot i only, so a long
    # causal sequence is read QUERY_BLOCK queries at a time, each block against the keys up to
    # its own end: the same softmax (a masked score weighs exactly 0), about half the scores
    # (an 8,192-token window computes 53%), and one block's logits in memory, not the whole.
    blocks = [slice(start, start + QUERY_BLOCK) for start in range(0, q.shape[1], QUERY_BLOCK)]
    return jnp.concatenate([_dense_attention(
        q[:, b], k[:, :, :b.stop], v[:, :, :b.stop], mask[:, :, b, :b.stop], scale=scale,
        softcap=softcap) for b in blocks], axis=1)
  return _dense_attention(q, k, v, mask, scale=scale, softcap=softcap)


def _dense_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, scale: float,
                     softcap: float | None) -> jax.Array:
  """`dot_product_attention` with XLA's einsums and softmax, every score computed (mask: dense)."""
  b, s, h, d = q.shape
  kv_heads, t = k.shape[1], k.shape[2]
  group = h // kv_heads
  # Each kv head's group of query heads as one [group * q_len] axis, so that every product is
  # a plain batched matmul over (batch, kv_heads) with one contracting dim, forward and
  # backward (XLA:CPU runs contractions over several dims, such as the keys' gradient summed
  # over query positions and group, 1.4x slower).
  q = q.reshape(b, s, kv_heads, group, d).transpose(0, 2, 3, 1, 4)   # [b, kv, group, q, d]
  q = q.reshape(b, kv_heads, group * s, d)
  logits = jnp.einsum("bkqd,bktd->bkqt", q, k, preferred_element_type=jnp.float32)
  logits = soft_cap(logits * scale, softcap)                         # [b, kv, group * q, t]
  mask = jnp.broadcast_to(mask[:, :, None], (b, 1, group, s, t)).reshape(b, 1, group * s, t)
  # A large finite negative, not -inf, keeps fully masked rows (padding queries) free of NaN.
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkqt,bktd->bkqd", probs, v)                      # [b, kv, group * q, d]
  return out.reshape(b, kv_heads, group, s, d).transpose(0, 3, 1, 2, 4).reshape(b, s, h, d)


def write_cache(cache: jax.Array, new: jax.Array, index: jax.Array | int, *, axis: int
                ) -> jax.Array:
  """`new` written into `cache` ([batch, …], the same rank) from slot `index` along `axis`:
  one index for every row, or a [batch] vector of each row's own."""
  new = new.astype(cache.dtype)
  if jnp.ndim(index) == 0:
    return jax.lax.dynamic_update_slice_in_dim(cache, new, index, axis)
  return jax.vmap(lambda c, n, i: jax.lax.dynamic_update_slice_in_dim(c, n, i, axis - 1))(
      cache, new, index)


class Attention(nn.Module):
  """Self-attention: projections, optional QK-norm, optional rotary positions, optional KV cache,
  output projection."""

  config: ModelConfig
  dtype: jnp.dtype = jnp.float32
  deterministic: bool = True  # LoRA dropout off

  @nn.compact
  def __call__(self, x: jax.Array, mask: Mask, positions: jax.Array,
               cache: LayerCache | None = None, cache_index: jax.Array | None = None,
               window: jax.Array | int | None = None, inv_freq: jax.Array | None = None
               ) -> tuple[jax.Array, LayerCache | None]:
    """x: [batch, length, embed] -> ([batch, length, embed], updated cache or None). `window`:
    this layer's sliding window in slots (None: the whole context); `inv_freq`: this layer's
    rotary inverse frequencies [head_dim / 2] where layers differ (None: the config's)."""
    cfg = self.config
    d, hd = cfg.embed_dim, cfg.dim_per_head
    project = lambda name, heads: DenseGeneral(
        (d,), (heads, hd), ("embed", "heads", "kv"), cfg.qkv_bias, cfg, self.dtype,
        self.deterministic, name=name)(x)
    q = project("query", cfg.num_heads)    # [batch, length, heads, head_dim]
    k = project("key", cfg.kv_heads)       # [batch, length, kv_heads, head_dim]
    v = project("value", cfg.kv_heads)
    if cfg.qk_norm:  # Qwen3: each head's query and key normalised over head_dim, then rotated
      q = LayerNorm(cfg, self.dtype, axis="kv", name="query_norm")(q)
      k = LayerNorm(cfg, self.dtype, axis="kv", name="key_norm")(k)
    if cfg.positions is Positions.ROTARY:
      if inv_freq is None:
        inv_freq = rope_inverse_frequencies(cfg)  # [head_dim / 2], a constant
      q = rotary_embedding(q, positions, inv_freq)
      k = rotary_embedding(k, positions, inv_freq)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [batch, kv_heads, length, head_dim]
    if cache is not None:
      k = write_cache(cache["key"], k, cache_index, axis=2)
      v = write_cache(cache["value"], v, cache_index, axis=2)
      cache = {"key": k, "value": v}
    if mask.slots is not None:  # the sequence split across devices (context parallelism)
      out = ring.attention(q, k.astype(q.dtype), v.astype(q.dtype), mask.query_segment_ids,
                           mask.key_segment_ids, mask.slots, split=context_split(cfg),
                           causal=cfg.causal, window=window, scale=cfg.attention_scale,
                           softcap=cfg.attn_logit_softcap)
    else:
      if window is not None:
        mask = sliding_window_mask(mask, window, causal=cfg.causal)
      out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask,
                                  impl=cfg.attention, causal=cfg.causal, cached=cache is not None,
                                  windowed=cfg.sliding_window is not None,
                                  scale=cfg.attention_scale, softcap=cfg.attn_logit_softcap)
    out = DenseGeneral((cfg.num_heads, hd), (d,), ("heads", "kv", "embed"), cfg.use_bias, cfg,
                       self.dtype, self.deterministic, name="out")(out)
    return out, cache
