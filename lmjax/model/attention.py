"""Multi-head attention with grouped key/value heads, rotary positions and a KV cache.

Masks are built once per forward pass (`attention_mask`) as booleans of shape
[batch, 1, q_len, kv_len] from segment ids, which express padding (segment 0) and packed
documents (segments 1, 2, …) alike, plus causality by slot. Every implementation takes that form.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.model.config import AttentionImpl, ModelConfig, Positions
from lmjax.model.layers import DenseGeneral, rope_inverse_frequencies, rotary_embedding

LayerCache = dict[str, jax.Array]  # {"key", "value"}: [batch, cache_len, kv_heads, head_dim]


def attention_mask(query_segment_ids: jax.Array, key_segment_ids: jax.Array, *, causal: bool,
                   query_offset: jax.Array | int = 0) -> jax.Array:
  """Which keys each query may see: [batch, q] and [batch, k] segment ids -> [batch, 1, q, k].

  Segment 0 is padding and is never attended to; other ids must match. With `causal`, query i
  (at slot `query_offset + i`) sees keys at slots <= its own.
  """
  q_len, k_len = query_segment_ids.shape[1], key_segment_ids.shape[1]
  mask = query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
  mask &= key_segment_ids[:, None, :] != 0
  if causal:
    q_slot = query_offset + jnp.arange(q_len)
    mask &= q_slot[:, None] >= jnp.arange(k_len)[None, :]
  return mask[:, None, :, :]


def _choose_impl(impl: AttentionImpl, dtype: Any) -> AttentionImpl:
  if impl is not AttentionImpl.AUTO:
    return impl
  on_gpu = jax.default_backend() == "gpu"
  return AttentionImpl.CUDNN if on_gpu and dtype in (jnp.bfloat16, jnp.float16) else AttentionImpl.XLA


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
                          impl: AttentionImpl = AttentionImpl.AUTO) -> jax.Array:
  """softmax(q k^T / sqrt(d) + mask) v with kv heads shared by groups of query heads.

  q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim];
  mask: bool [batch, 1, q_len, kv_len]. Returns [batch, q_len, heads, head_dim].
  """
  impl = _choose_impl(impl, q.dtype)
  if impl is AttentionImpl.CUDNN:
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
  b, s, h, d = q.shape
  kv_heads = k.shape[2]
  q = q.reshape(b, s, kv_heads, h // kv_heads, d)  # [batch, q, kv_heads, group, head_dim]
  logits = jnp.einsum("bskgd,btkd->bkgst", q, k, preferred_element_type=jnp.float32)
  logits = logits * (d ** -0.5)
  # A large finite negative, not -inf, keeps fully masked rows (padding queries) free of NaN.
  logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgst,btkd->bskgd", probs, v)
  return out.reshape(b, s, h, d)


class Attention(nn.Module):
  """Self-attention: projections, optional rotary positions, optional KV cache, output proj."""

  config: ModelConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, positions: jax.Array,
               cache: LayerCache | None = None, cache_index: jax.Array | None = None
               ) -> tuple[jax.Array, LayerCache | None]:
    """x: [batch, length, embed] -> ([batch, length, embed], updated cache or None)."""
    cfg = self.config
    d, hd = cfg.embed_dim, cfg.dim_per_head
    project = lambda name, heads: DenseGeneral(
        (d,), (heads, hd), ("embed", "heads", "kv"), cfg.qkv_bias, cfg, self.dtype, name=name)(x)
    q = project("query", cfg.num_heads)    # [batch, length, heads, head_dim]
    k = project("key", cfg.kv_heads)       # [batch, length, kv_heads, head_dim]
    v = project("value", cfg.kv_heads)
    if cfg.positions is Positions.ROTARY:
      inv_freq = rope_inverse_frequencies(cfg)  # [head_dim / 2], a constant
      q = rotary_embedding(q, positions, inv_freq)
      k = rotary_embedding(k, positions, inv_freq)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    if cache is not None:
      start = (0, cache_index, 0, 0)
      k = jax.lax.dynamic_update_slice(cache["key"], k.astype(cache["key"].dtype), start)
      v = jax.lax.dynamic_update_slice(cache["value"], v.astype(cache["value"].dtype), start)
      cache = {"key": k, "value": v}
    out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, impl=cfg.attention)
    out = DenseGeneral((cfg.num_heads, hd), (d,), ("heads", "kv", "embed"), cfg.use_bias, cfg,
                       self.dtype, name="out")(out)
    return out, cache
