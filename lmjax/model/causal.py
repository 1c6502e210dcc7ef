"""Causal attention over rows that are one document each, right-padded, without a KV cache:
the case of scoring, perplexity and evaluation (lmjax.infer.scoring says so to the model), on
CPUs (lmjax.model.attention picks it there only).

There, query slot i sees exactly the keys at slots <= i: a padding key stands after every real
query, so causality alone keeps it out, and no mask needs building or reading but the slot
comparison on the diagonal. The sequence is read in square tiles of `BLOCK` queries by `BLOCK`
keys: each block of queries takes its diagonal tile (masked by slot) and then the tiles before
it (masked by nothing), folding each into a running softmax (the online softmax of flash
attention), so only the scores at or below the diagonal are computed and one tile's scores live
at a time, small enough to stay in the CPU's caches. XLA's dense attention instead computes and
masks every score of a block of queries against all earlier keys (lmjax.model.attention), whose
softmax then streams from memory: on a 2-core AVX2 CPU, one layer of SmolLM2-135M (9 heads,
3 KV heads, head_dim 64) over 8,192 tokens takes 1.24 CPU seconds here against 2.44, and
PyTorch's fused causal kernel 1.38 (`benchmarks/perplexity.py --attention 8192`).

Both loops are `lax.fori_loop`s (the inner one's trip count is the outer one's index), so the
program is one tile's, whatever the length: a static Python loop over the tiles compiles for
seconds and runs slower, as XLA merges its products back into large ones. A loop with a traced
trip count has no reverse-mode derivative: this path is for inference only (training masks
packed documents by segment and takes the dense path).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Queries (and keys) per tile. Measured on a 2-core CPU at 8,064 tokens in SmolLM2-135M's shape:
# 1.23 CPU seconds at 256, 1.34 at 512, 1.56 at 128 (512 queries by 256 keys: 1.31).
BLOCK = 256


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float) -> jax.Array:
  """softmax(q k^T * scale, causal) v for right-padded single-document rows, no KV cache.

  q: [batch, length, heads, head_dim]; k, v: [batch, kv_heads, length, head_dim] (kv heads
  shared by groups of query heads). Returns [batch, length, heads, head_dim]; what padding
  queries get is unspecified (they see the keys up to their own slot).
  """
  b, s, h, d = q.shape
  kv_heads = k.shape[1]
  group = h // kv_heads
  blocks = -(-s // BLOCK)
  padded = blocks * BLOCK
  # Zero keys past the end sit after every real query: the diagonal tile's mask keeps them out.
  q, k, v = (jnp.pad(a, [(0, 0)] * axis + [(0, padded - s)] + [(0, 0)] * (3 - axis))
             for a, axis in ((q, 1), (k, 2), (v, 2)))
  # Each kv head's group of query heads as one axis of rows, as _dense_attention arranges them;
  # scaled once here, not each tile's scores (a pass over them that XLA:CPU writes out).
  q = q * jnp.asarray(scale, q.dtype)
  q = q.reshape(b, padded, kv_heads, group, d).transpose(0, 2, 3, 1, 4)  # [b, kv, group, s, d]
  tile = lambda a, j: jax.lax.dynamic_slice_in_dim(a, j * BLOCK, BLOCK, axis=2)
  rows = jax.lax.broadcasted_iota(jnp.int32, (group, BLOCK, BLOCK), 1)
  keys = jax.lax.broadcasted_iota(jnp.int32, (group, BLOCK, BLOCK), 2)
  diagonal = (keys <= rows).reshape(group * BLOCK, BLOCK)  # a query sees keys up to its own slot

  def query_block(i, out):
    qb = jax.lax.dynamic_slice_in_dim(q, i * BLOCK, BLOCK, axis=3)
    qb = qb.reshape(b, kv_heads, group * BLOCK, d)                      # [b, kv, rows, d]
    # The diagonal tile first: every row sees its own key, so the running max starts finite.
    state = _fold_tile(None, qb, tile(k, i), tile(v, i), diagonal)
    state = jax.lax.fori_loop(
        0, i, lambda j, state: _fold_tile(state, qb, tile(k, j), tile(v, j)), state)
    _, total, weighted = state
    done = (weighted / total).astype(out.dtype).reshape(b, kv_heads, group, BLOCK, d)
    return jax.lax.dynamic_update_slice_in_dim(out, done, i * BLOCK, axis=3)

  out = jax.lax.fori_loop(0, blocks, query_block, jnp.zeros_like(q))   # [b, kv, group, s, d]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, padded, h, d)[:, :s]


def _fold_tile(state: tuple[jax.Array, jax.Array, jax.Array] | None, qb: jax.Array,
               kt: jax.Array, vt: jax.Array, mask: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One tile of keys folded into the running (max, sum of exp, exp-weighted values) of each
  row, float32 [b, kv, rows, 1], [b, kv, rows, 1], [b, kv, rows, d]; None: the first tile.
  qb: the scaled queries."""
  logits = jnp.einsum("bkqd,bktd->bkqt", qb, kt, preferred_element_type=jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  top = jnp.max(logits, axis=-1, keepdims=True)
  if state is not None:
    top = jnp.maximum(top, state[0])
  probs = jnp.exp(logits - top)
  total = jnp.sum(probs, axis=-1, keepdims=True)
  weighted = jnp.einsum("bkqt,bktd->bkqd", probs.astype(vt.dtype), vt,
                        preferred_element_type=jnp.float32)
  if state is not None:
    rescale = jnp.exp(state[0] - top)  # the earlier tiles' terms, to the new max
    total, weighted = total + state[1] * rescale, weighted + state[2] * rescale
  return top, total, weighted
