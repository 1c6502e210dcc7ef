"""Splash attention: JAX's Pallas TPU kernel (flash attention with block-sparse masks) behind the
attention enum (`model.attention: splash`; `auto` picks it on TPU where its shapes fit).

The kernel takes the structure of the mask, not a dense one: causal or full, and segment ids
(packed documents and padding, segment 0), so it skips the blocks a mask rules out entirely.
Grouped-query attention runs the kernel's multi-query form once per key/value head, vmapped.
Under a mesh it runs per shard through `jax.shard_map` (a Pallas call is opaque to the SPMD
partitioner): the batch over its mesh axes, heads over theirs, as the logical-axis rules place
the query. Off TPU it runs in Pallas interpret mode, which is how the tests check it against
the XLA attention on CPU.

Padding queries (segment 0) attend to padding keys here, where the XLA path masks them out
entirely; their outputs are never used (no loss counts them).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P

from lmjax.errors import UserError

BLOCK = 512  # the kernel's block size along queries and keys, or the whole length when shorter


def _pallas():
  """(the splash kernel module, its mask module), imported when a kernel is first built: the
  Pallas TPU ops take half a second to import, which every lmjax process (most never use
  splash) would otherwise pay at start."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel, \
      splash_attention_mask
  return splash_attention_kernel, splash_attention_mask


def supports(q_len: int, kv_len: int, head_dim: int) -> bool:
  """Whether the TPU kernel takes these shapes (lengths in whole blocks of 128, the lanes)."""
  return q_len == kv_len and q_len % 128 == 0 and head_dim % 128 == 0


@functools.lru_cache(maxsize=32)
def _kernel(q_len: int, kv_len: int, group: int, causal: bool, interpret: bool):
  """The multi-query kernel for one key/value head serving `group` query heads."""
  block_q, block_kv = min(BLOCK, q_len), min(BLOCK, kv_len)
  if q_len % block_q or kv_len % block_kv:
    raise UserError(f"splash attention needs sequence lengths that are multiples of {BLOCK} or "
                    f"below it, got {q_len} and {kv_len}: set model.attention=xla, or pad.")
  kernels, masks = _pallas()
  sizes = kernels.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
                             block_q_dkv=block_q, block_kv_dkv=block_kv,
                             block_kv_dkv_compute=block_kv, block_q_dq=block_q,
                             block_kv_dq=block_kv)
  mask = masks.CausalMask((q_len, kv_len)) if causal else masks.FullMask((q_len, kv_len))
  with jax.ensure_compile_time_eval():  # the kernel's mask tables are constants, not tracers
    return kernels.make_splash_mqa(masks.MultiHeadMask([mask] * group), head_shards=1,
                                   q_seq_shards=1, block_sizes=sizes, interpret=interpret)


def _local(q, k, v, query_segment_ids, key_segment_ids, *, causal: bool):
  """One shard: q [batch, q_len, heads, d]; k, v [batch, kv_heads, kv_len, d]; segment ids
  [batch, len] -> [batch, q_len, heads, d]."""
  b, s, h, d = q.shape
  kv_heads, t = k.shape[1], k.shape[2]
  group = h // kv_heads
  kernel = _kernel(s, t, group, causal, jax.default_backend() != "tpu")
  q = (q * d ** -0.5).reshape(b, s, kv_heads, group, d).transpose(0, 2, 3, 1, 4)  # [b, kv, g, s, d]
  per_head = jax.vmap(lambda q, k, v, segments: kernel(q, k, v, segment_ids=segments),
                      in_axes=(0, 0, 0, None))
  segments = _pallas()[0].SegmentIds(q=query_segment_ids, kv=key_segment_ids)
  out = jax.vmap(per_head)(q, k, v, segments)                                    # [b, kv, g, s, d]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, s, h, d)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, query_segment_ids: jax.Array,
                     key_segment_ids: jax.Array, *, causal: bool) -> jax.Array:
  """Attention through the splash kernel, per shard under the mesh in context (if any).

  q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_heads, kv_len, head_dim]; segment ids
  [batch, len] (0 = padding). Returns [batch, q_len, heads, head_dim].
  """
  local = functools.partial(_local, causal=causal)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return local(q, k, v, query_segment_ids, key_segment_ids)
  batch, heads = (tuple(nn.logical_to_mesh_axes(("batch", "heads")))[i] for i in (0, 1))
  query, kv, segments = P(batch, None, heads, None), P(batch, heads, None, None), P(batch, None)
  return jax.shard_map(local, mesh=mesh, in_specs=(query, kv, kv, segments, segments),
                       out_specs=query, check_vma=False)(q, k, v, query_segment_ids,
                                                         key_segment_ids)
