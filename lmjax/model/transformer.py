"""The Transformer: embeddings, a stack of blocks (scanned or unrolled), and an output head.

One module covers GPT-2, BERT/RoBERTa and Llama-style models; `ModelConfig` selects the
variant. Call it as

    logits = model.apply({"params": params}, input_ids, attention_mask=None, token_type_ids=None)

and, for incremental decoding, pass a cache from `init_cache` and get it back updated:

    logits, cache = model.apply({"params": params}, input_ids, cache=cache)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.model.attention import Attention
from lmjax.model.attention import attention_mask as make_attention_mask
from lmjax.model.config import Head, ModelConfig, NormPosition, Positions, Remat
from lmjax.model.layers import DenseGeneral, LayerNorm, Mlp, activation, initializer

Cache = dict  # {"layers": {"key", "value"}: [layers, batch, len, kv_heads, head_dim],
              #  "segment_ids": [batch, len] (0 = empty slot), "index": int32 scalar}


def init_cache(config: ModelConfig, batch_size: int, max_length: int,
               dtype: jnp.dtype = jnp.float32) -> Cache:
  """An empty KV cache for `batch_size` sequences of up to `max_length` tokens."""
  shape = (config.num_layers, batch_size, max_length, config.kv_heads, config.dim_per_head)
  return {
      "layers": {"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)},
      "segment_ids": jnp.zeros((batch_size, max_length), jnp.int32),
      "index": jnp.zeros((), jnp.int32),
  }


class Block(nn.Module):
  """Attention + MLP with residuals, normalised before (pre) or after (post) each."""

  config: ModelConfig
  dtype: jnp.dtype = jnp.float32
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, layer_cache, mask, positions, cache_index):
    cfg = self.config
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
    attention = Attention(cfg, self.dtype, name="attention")
    mlp = lambda y: drop(Mlp(cfg, self.dtype, name="mlp")(y))
    norm1 = LayerNorm(cfg, self.dtype, name="attention_norm")
    norm2 = LayerNorm(cfg, self.dtype, name="mlp_norm")
    if cfg.norm_position is NormPosition.PRE:
      h, layer_cache = attention(norm1(x), mask, positions, layer_cache, cache_index)
      x = x + drop(h)
      x = x + mlp(norm2(x))
    else:
      h, layer_cache = attention(x, mask, positions, layer_cache, cache_index)
      x = norm1(x + drop(h))
      x = norm2(x + mlp(x))
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return x, layer_cache


_REMAT_POLICIES = {
    Remat.FULL: None,  # save nothing
    Remat.SAVE_DOTS: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Transformer(nn.Module):
  """A GPT-2, BERT/RoBERTa or Llama-style model, as `config` says."""

  config: ModelConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, positions=None,
               segment_ids=None, cache: Cache | None = None, train: bool = False,
               before_decoder: bool = False):
    """input_ids: [batch, length] int -> logits [batch, length, vocab] (or per the head).

    attention_mask: [batch, length], 1 for tokens and 0 for padding. segment_ids: the same as
    integers, one id per packed document (0 = padding); it replaces attention_mask. positions:
    [batch, length] position ids (default 0, 1, … after what the cache holds). With `cache`,
    returns (output, updated cache). `before_decoder` (LM heads): returns the hidden states
    [batch, length, embed] that the vocabulary projection would take; `decode_logits` applies
    it, e.g. a chunk of positions at a time.
    """
    cfg = self.config
    b, s = input_ids.shape
    if segment_ids is None:
      segment_ids = (jnp.ones((b, s), jnp.int32) if attention_mask is None
                     else attention_mask.astype(jnp.int32))
    offset = 0 if cache is None else cache["index"]
    if positions is None:
      positions = jnp.broadcast_to(offset + jnp.arange(s, dtype=jnp.int32), (b, s))

    embedding = self.param("token_embedding",
                           nn.with_logical_partitioning(initializer(cfg), ("vocab", "embed")),
                           (cfg.vocab_size, cfg.embed_dim), jnp.float32)
    x = jnp.take(embedding, input_ids, axis=0, mode="clip").astype(self.dtype)
    if cfg.positions is Positions.LEARNED:
      table = self.param("position_embedding",
                         nn.with_logical_partitioning(initializer(cfg), (None, "embed")),
                         (cfg.num_position_embeddings, cfg.embed_dim), jnp.float32)
      x = x + jnp.take(table, positions + cfg.position_offset, axis=0, mode="clip").astype(self.dtype)
    if cfg.type_vocab_size:
      table = self.param("token_type_embedding",
                         nn.with_logical_partitioning(initializer(cfg), (None, "embed")),
                         (cfg.type_vocab_size, cfg.embed_dim), jnp.float32)
      types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
      x = x + jnp.take(table, types, axis=0, mode="clip").astype(self.dtype)
    if cfg.norm_position is NormPosition.POST:
      x = LayerNorm(cfg, self.dtype, name="embedding_norm")(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=not train)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))  # [batch, length, embed]

    if cache is None:
      key_segment_ids, layer_caches = segment_ids, None
    else:
      key_segment_ids = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids, (0, offset))
      layer_caches = cache["layers"]
    mask = make_attention_mask(segment_ids, key_segment_ids, causal=cfg.causal, query_offset=offset)
    x, layer_caches = self._blocks(x, layer_caches, mask, positions,
                                   None if cache is None else offset, train)

    out = self._head(x, embedding, segment_ids, train, before_decoder)
    if cache is None:
      return out
    return out, {"layers": layer_caches, "segment_ids": key_segment_ids, "index": offset + s}

  def _blocks(self, x, caches, mask, positions, cache_index, train):
    cfg = self.config
    block = Block
    if cfg.remat is not Remat.NONE:
      block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                      in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      return stack(cfg, self.dtype, not train, name="layers")(x, caches, mask, positions, cache_index)
    new_caches = []
    for i in range(cfg.num_layers):
      layer_cache = None if caches is None else jax.tree.map(lambda a: a[i], caches)
      x, layer_cache = block(cfg, self.dtype, not train, name=f"layers_{i}")(
          x, layer_cache, mask, positions, cache_index)
      new_caches.append(layer_cache)
    if caches is None:
      return x, None
    return x, jax.tree.map(lambda *a: jnp.stack(a), *new_caches)

  def _head(self, x, embedding, segment_ids, train, before_decoder=False):
    cfg = self.config
    if cfg.norm_position is NormPosition.PRE:
      x = LayerNorm(cfg, self.dtype, name="final_norm")(x)
    if cfg.pooler:
      pooled = jnp.tanh(DenseGeneral((cfg.embed_dim,), (cfg.embed_dim,), ("embed", None), True, cfg,
                                     self.dtype, name="pooler")(x[:, 0]))
      self.sow("intermediates", "pooled", pooled)  # HF `pooler_output`, via mutable=["intermediates"]
    match cfg.head:
      case Head.NONE:
        return x.astype(jnp.float32)
      case Head.CAUSAL_LM:
        return x if before_decoder else self._decode(x, embedding, bias=False)
      case Head.MASKED_LM:
        h = DenseGeneral((cfg.embed_dim,), (cfg.embed_dim,), ("embed", None), True, cfg, self.dtype,
                         name="mlm_transform")(x)
        h = LayerNorm(cfg, self.dtype, name="mlm_norm")(activation(cfg.activation, h))
        return h if before_decoder else self._decode(h, embedding, bias=True)
      case Head.CLASSIFICATION:
        if cfg.pooler:
          features = pooled
        else:  # the last real token of each row, as HF's decoder classifiers do
          last = jnp.maximum(jnp.sum(segment_ids != 0, axis=-1) - 1, 0)
          features = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
        features = nn.Dropout(cfg.dropout_rate)(features, deterministic=not train)
        return DenseGeneral((cfg.embed_dim,), (cfg.num_labels,), ("embed", None), True, cfg,
                            self.dtype, name="classifier")(features).astype(jnp.float32)
    raise ValueError(f"unknown head {cfg.head}")

  def _decode(self, x, embedding, *, bias: bool):
    """Hidden states [batch, length, embed] -> float32 logits [batch, length, vocab]."""
    cfg = self.config
    if cfg.tie_embeddings:
      logits = jnp.einsum("bld,vd->blv", x, embedding.astype(self.dtype))
    else:
      logits = DenseGeneral((cfg.embed_dim,), (cfg.vocab_size,), ("embed", "vocab"), False, cfg,
                            self.dtype, name="lm_head")(x)
    if bias:
      logits = logits + self.param("output_bias", nn.with_logical_partitioning(
          nn.initializers.zeros_init(), ("vocab",)), (cfg.vocab_size,), jnp.float32).astype(self.dtype)
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    return logits.astype(jnp.float32)



def decode_logits(config: ModelConfig, params, hidden: jax.Array, *,
                  dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """The LM heads' vocabulary projection, outside the module: what `Transformer` computes from
  the hidden states that `before_decoder=True` returns. hidden [..., embed] -> float32 logits
  [..., vocab], with the same operations (and so the same numbers) as the module."""
  x = hidden.astype(dtype)
  if config.tie_embeddings:
    logits = jnp.einsum("...d,vd->...v", x, params["token_embedding"].astype(dtype))
  else:
    kernel = params["lm_head"]["kernel"].astype(dtype)                # [embed, vocab]
    logits = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
  if config.head is Head.MASKED_LM:
    logits = logits + params["output_bias"].astype(dtype)
  return logits.astype(jnp.float32)
