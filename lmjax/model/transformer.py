"""The Transformer: embeddings, a stack of blocks (scanned or unrolled), and an output head.

One module covers GPT-2, BERT/RoBERTa/DistilBERT, ModernBERT, Llama-style (dense or
Mixture-of-Experts) and Gemma 2/3 models; `ModelConfig` selects the variant. Call it as

    logits = model.apply({"params": params}, input_ids, attention_mask=None, token_type_ids=None)

and, for incremental decoding, pass a cache from `init_cache` and get it back updated:

    logits, cache = model.apply({"params": params}, input_ids, cache=cache)

LM heads split into two methods that `__call__` chains, so a loss can project to the vocabulary
a chunk of positions at a time:

    hidden = model.apply(variables, input_ids, method=Transformer.features)   # [b, l, embed]
    logits = model.apply(variables, hidden, method=Transformer.decode)         # [b, l, vocab]
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lmjax.model.attention import Attention
from lmjax.model.attention import Rows, make_mask, write_cache
from lmjax.model.context_parallel import TokenOrder, context_split
from lmjax.model.config import (ClassifierPooling, Head, ModelConfig, NormPosition,
                                PoolerActivation, Positions, Remat)
from lmjax.model.layers import (DenseGeneral, LayerNorm, Mlp, activation, embedding_lookup,
                                initializer, layer_inverse_frequencies, soft_cap)
from lmjax.model.moe import MoeMlp
from lmjax.model.pipeline import PipelineSchedule, run_pipeline

Cache = dict  # {"layers": the layers' {"key", "value"} [batch, kv_heads, len, head_dim],
              #    stacked [layers, …] for scanned models, a list of one per layer unrolled;
              #  "segment_ids": [batch, len] (0 = empty slot), "index": int32 scalar, or [batch]}


def init_cache(config: ModelConfig, batch_size: int, max_length: int,
               dtype: jnp.dtype = jnp.float32) -> Cache:
  """An empty KV cache for `batch_size` sequences of up to `max_length` tokens. Its "index" (the
  next slot written) is one scalar for all rows; a [batch_size] vector in its place gives each
  row its own (lmjax.infer.slots: a server's requests of different lengths)."""
  shape = (batch_size, config.kv_heads, max_length, config.dim_per_head)
  empty = lambda *lead: {"key": jnp.zeros(lead + shape, dtype),
                         "value": jnp.zeros(lead + shape, dtype)}
  layers = (empty(config.num_layers) if config.scan_layers
            else [empty() for _ in range(config.num_layers)])
  return {"layers": layers, "segment_ids": jnp.zeros((batch_size, max_length), jnp.int32),
          "index": jnp.zeros((), jnp.int32)}


def unrolled(config: ModelConfig, params) -> tuple[ModelConfig, Any]:
  """The config and params of the same model with unrolled layers (`layers_{i}` instead of one
  `layers` stacked over a leading axis). Decoding runs unrolled: each layer's KV cache is then
  an array of its own, updated in place a token at a time, where a scanned stack slices and
  rewrites every layer's whole cache at each step."""
  if not config.scan_layers:
    return config, params
  params = dict(params)
  stacked = params.pop("layers")
  for i in range(config.num_layers):
    params[f"layers_{i}"] = jax.tree.map(lambda x: x[i], stacked)
  return dataclasses.replace(config, scan_layers=False), params


@struct.dataclass
class LayerInputs:
  """What differs from layer to layer; scanned layers take each field stacked on a leading
  [layers] axis. None: not used by this model."""

  cache: Any = None              # the layer's {"key", "value"} KV cache
  window: Any = None             # its sliding window (an int32 scalar under scan; None: none)
  inv_freq: Any = None           # its rotary inverse frequencies [head_dim / 2] where layers
                                 # differ (None: the config's)
  attention_norm_on: Any = None  # whether its attention input is normalised, where layers
                                 # differ (a bool scalar under scan; None: it is)


@struct.dataclass
class SharedInputs:
  """What every layer sees alike (broadcast under scan)."""

  mask: Any                      # lmjax.model.attention's mask
  positions: Any                 # [batch, length] int32
  cache_index: Any = None        # where a KV cache is written (None: no cache)


class Block(nn.Module):
  """Attention + MLP with residuals, normalised before (pre) or after (post) each; with
  `post_norms`, pre-normalised and their outputs normalised too (Gemma 2's sandwich)."""

  config: ModelConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, layer: LayerInputs, shared: SharedInputs, deterministic: bool):
    """x [batch, length, embed] -> (x, the layer's updated cache)."""
    cfg = self.config
    layer_cache, window, inv_freq = layer.cache, layer.window, layer.inv_freq
    attention_norm_on, mask, positions = layer.attention_norm_on, shared.mask, shared.positions
    cache_index = shared.cache_index
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    attention = Attention(cfg, self.dtype, deterministic, name="attention")
    if cfg.moe.enabled:  # experts route real tokens only (the load-balancing statistics)
      experts = MoeMlp(cfg, self.dtype, name="mlp")
      mlp = lambda y: experts(y, mask.query_segment_ids != 0)
    else:
      mlp = Mlp(cfg, self.dtype, deterministic, name="mlp")
    norm1 = LayerNorm(cfg, self.dtype, name="attention_norm")
    norm2 = LayerNorm(cfg, self.dtype, name="mlp_norm")
    post = lambda y, name: LayerNorm(cfg, self.dtype, name=name)(y) if cfg.post_norms else y
    if cfg.norm_position is NormPosition.PRE:
      y = norm1(x)
      if attention_norm_on is not None:  # ModernBERT's layer 0 reads x itself
        y = jnp.where(attention_norm_on, y, x)
      h, layer_cache = attention(y, mask, positions, layer_cache, cache_index, window,
                                 inv_freq)
      x = x + drop(post(h, "attention_post_norm"))
      x = x + drop(post(mlp(norm2(x)), "mlp_post_norm"))
    else:
      h, layer_cache = attention(x, mask, positions, layer_cache, cache_index, window, inv_freq)
      x = norm1(x + drop(h))
      x = norm2(x + drop(mlp(x)))
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return x, layer_cache


_REMAT_POLICIES = {
    Remat.FULL: None,  # save nothing
    Remat.SAVE_DOTS: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
# Block.__call__'s `deterministic`, counting self (static under remat), found by name.
_DETERMINISTIC_ARG = list(inspect.signature(Block.__call__).parameters).index("deterministic")

_POOLER_ACTIVATIONS = {PoolerActivation.TANH: jnp.tanh, PoolerActivation.RELU: jax.nn.relu}


def _block_stack(cfg: ModelConfig, dtype: jnp.dtype, length: int | None, **kwargs) -> nn.Module:
  """`length` blocks scanned over a leading `layers` axis of their params (None: one block)."""
  block = Block if cfg.remat is Remat.NONE else nn.remat(
      Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers,
      static_argnums=(_DETERMINISTIC_ARG,))
  if length is not None:
    block = nn.scan(block, variable_axes={"params": 0, "intermediates": 0},
                    split_rngs={"params": True, "dropout": True},
                    in_axes=(0, nn.broadcast, nn.broadcast),  # LayerInputs, SharedInputs, flag
                    length=length, metadata_params={nn.PARTITION_NAME: "layers"})
  return block(cfg, dtype, **kwargs)


class Transformer(nn.Module):
  """A GPT-2, BERT-style, ModernBERT, Llama-style or Gemma 2/3 model, as `config` says."""

  config: ModelConfig
  dtype: jnp.dtype = jnp.float32
  pipeline: PipelineSchedule | None = None  # the scanned stack as stages (lmjax.model.pipeline)

  def setup(self):
    cfg = self.config
    embedding = lambda axes: nn.with_logical_partitioning(initializer(cfg), axes)
    self.token_embedding = self.param("token_embedding", embedding(("vocab", "embed")),
                                      (cfg.vocab_size, cfg.embed_dim), jnp.float32)
    if cfg.positions is Positions.LEARNED:
      self.position_embedding = self.param("position_embedding", embedding((None, "embed")),
                                           (cfg.num_position_embeddings, cfg.embed_dim),
                                           jnp.float32)
    if cfg.type_vocab_size:
      self.token_type_embedding = self.param("token_type_embedding", embedding((None, "embed")),
                                             (cfg.type_vocab_size, cfg.embed_dim), jnp.float32)
    if cfg.normalises_embeddings:
      self.embedding_norm = LayerNorm(cfg, self.dtype)
    if cfg.norm_position is NormPosition.PRE:
      self.final_norm = LayerNorm(cfg, self.dtype)
    self.dropout = nn.Dropout(cfg.dropout_rate)
    self.layers = self._stack()
    square = lambda bias: DenseGeneral((cfg.embed_dim,), (cfg.embed_dim,), ("embed", None), bias,
                                       cfg, self.dtype)
    if cfg.pooler:
      self.pooler = square(True)
    if cfg.prediction_head:
      self.mlm_transform = square(cfg.head_bias)
      self.mlm_norm = LayerNorm(cfg, self.dtype)
    if cfg.head is Head.MASKED_LM and cfg.decoder_bias:
      self.output_bias = self.param("output_bias", nn.with_logical_partitioning(
          nn.initializers.zeros_init(), ("vocab",)), (cfg.vocab_size,), jnp.float32)
    if cfg.head in (Head.CAUSAL_LM, Head.MASKED_LM) and not cfg.tie_embeddings:
      self.lm_head = DenseGeneral((cfg.embed_dim,), (cfg.vocab_size,), ("embed", "vocab"), False,
                                  cfg, self.dtype)
    if cfg.head is Head.CLASSIFICATION:
      if cfg.num_labels is None:
        raise ValueError("model.num_labels is not resolved: a classifier needs its label count "
                         "(data.labels, or the training data's labels)")
      self.classifier = DenseGeneral((cfg.embed_dim,), (cfg.num_labels,), ("embed", None),
                                     cfg.classifier_bias, cfg, self.dtype)

  def _stack(self):
    """The blocks: one module over a leading `layers` axis (scanned), or a list `layers_{i}`."""
    cfg = self.config
    if not cfg.scan_layers:
      return [_block_stack(cfg, self.dtype, None) for _ in range(cfg.num_layers)]
    return _block_stack(cfg, self.dtype, cfg.num_layers)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, positions=None,
               segment_ids=None, cache: Cache | None = None, train: bool = False):
    """input_ids: [batch, length] int -> logits [batch, length, vocab] (or per the head).

    attention_mask: [batch, length], 1 for tokens and 0 for padding. segment_ids: the same as
    integers, one id per packed document (0 = padding); it replaces attention_mask. positions:
    [batch, length] position ids (default 0, 1, … after what the cache holds). With `cache`,
    returns (output, updated cache). Headless models return the final hidden states
    [batch, length, embed]; classifiers [batch, num_labels] logits.
    """
    x, pooled, segment_ids, cache = self._trunk(input_ids, attention_mask, token_type_ids,
                                                positions, segment_ids, cache, train, Rows.ANY)
    match self.config.head:
      case Head.NONE:
        out = x.astype(jnp.float32)
      case Head.CAUSAL_LM | Head.MASKED_LM:
        out = self.decode(self._lm_features(x))
      case Head.CLASSIFICATION:
        out = self._classify(x, pooled, segment_ids, train)
      case head:
        raise ValueError(f"unknown head {head}")
    return out if cache is None else (out, cache)

  def features(self, input_ids, attention_mask=None, token_type_ids=None, *, positions=None,
               segment_ids=None, train: bool = False, right_padded: bool = False) -> jax.Array:
    """LM heads: the hidden states [batch, length, embed] that `decode` projects to the
    vocabulary (arguments as for `__call__`, without a cache). `right_padded`: the caller
    knows every row to be one document padded on the right only (attention_mask 1…1 0…0, no
    segment_ids), so long causal rows are read faster on CPUs (`attention.Rows.RIGHT_PADDED`;
    inference only: its loops have no reverse-mode derivative). What padding positions get is
    then unspecified."""
    if self.config.head not in (Head.CAUSAL_LM, Head.MASKED_LM):
      raise ValueError(f"features() is for LM heads, not {self.config.head.value!r}")
    if right_padded and segment_ids is not None:
      raise ValueError("right_padded rows are one document each: give attention_mask, not "
                       "segment_ids")
    x, _, _, _ = self._trunk(input_ids, attention_mask, token_type_ids, positions, segment_ids,
                             None, train, Rows.RIGHT_PADDED if right_padded else Rows.ANY)
    return self._lm_features(x)

  def decode(self, hidden: jax.Array) -> jax.Array:
    """The LM heads' vocabulary projection: hidden [..., embed] -> float32 logits [..., vocab]
    (the tied embedding or `lm_head`, plus the MLM decoder's bias; soft-capped with
    `final_logit_softcap`)."""
    cfg = self.config
    x = hidden.astype(self.dtype)
    if cfg.tie_embeddings:  # x @ embedding.T: rows of x against the embedding's rows, one 2-D
      # product (see layers.matmul) with no transposed copy of the embedding (a decoding loop
      # would make one per token)
      rows = x.reshape(-1, cfg.embed_dim) if context_split(cfg) is None else x
      logits = jax.lax.dot_general(rows, self.token_embedding.astype(self.dtype), (
          ((rows.ndim - 1,), (1,)), ((), ()))).reshape(*x.shape[:-1], -1)
    else:
      logits = self.lm_head(x)
    if cfg.head is Head.MASKED_LM and cfg.decoder_bias:
      logits = logits + self.output_bias.astype(self.dtype)
    if logits.ndim == 3:
      logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    return soft_cap(logits.astype(jnp.float32), cfg.final_logit_softcap)

  def _trunk(self, input_ids, attention_mask, token_type_ids, positions, segment_ids, cache,
             train, rows):
    """Embeddings and blocks: -> (hidden [batch, length, embed] after the final norm, pooled
    [batch, embed] or None, segment ids [batch, length], updated cache or None). `rows`: what
    the caller knows of the rows (attention.Rows)."""
    cfg = self.config
    b, s = input_ids.shape
    if segment_ids is None:
      segment_ids = (jnp.ones((b, s), jnp.int32) if attention_mask is None
                     else attention_mask.astype(jnp.int32))
    offset = 0 if cache is None else cache["index"]  # a scalar, or [batch]: each row's own
    if positions is None:
      positions = jnp.broadcast_to(jnp.asarray(offset, jnp.int32)[..., None] + jnp.arange(s),
                                   (b, s))
    order = TokenOrder(context_split(cfg, cached=cache is not None), s)  # context parallelism
    input_ids, token_type_ids, positions, seg = order.apply(input_ids, token_type_ids, positions,
                                                            segment_ids)
    x = self._embed(input_ids, token_type_ids, positions, train)  # [batch, length, embed]

    if cache is None:
      key_segment_ids, layer_caches = seg, None
    else:
      key_segment_ids = write_cache(cache["segment_ids"], segment_ids, offset, axis=1)
      layer_caches = cache["layers"]
    mask = make_mask(seg, key_segment_ids, causal=cfg.causal, query_offset=offset,
                     slots=order.slots, rows=rows)
    x, layer_caches = self._blocks(x, layer_caches, mask, positions,
                                   None if cache is None else offset, train)
    x = order.restore(x)
    if cfg.norm_position is NormPosition.PRE:
      x = self.final_norm(x)
    pooled = None
    if cfg.pooler:
      pooled = _POOLER_ACTIVATIONS[cfg.pooler_activation](self.pooler(x[:, 0]))
      self.sow("intermediates", "pooled", pooled)  # HF `pooler_output`, via mutable=["intermediates"]
    new_cache = None if cache is None else {
        "layers": layer_caches, "segment_ids": key_segment_ids, "index": offset + s}
    return x, pooled, segment_ids, new_cache

  def _embed(self, input_ids, token_type_ids, positions, train):
    cfg = self.config
    x = embedding_lookup(self.token_embedding, input_ids, "vocab").astype(self.dtype)
    if cfg.embed_scale:  # Gemma: the factor rounded to the compute dtype first, as HF's
      x = x * jnp.asarray(cfg.embed_dim ** 0.5, self.dtype)
    if cfg.positions is Positions.LEARNED:
      x = x + embedding_lookup(self.position_embedding,
                               positions + cfg.position_offset).astype(self.dtype)
    if cfg.type_vocab_size:
      types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
      x = x + embedding_lookup(self.token_type_embedding, types).astype(self.dtype)
    if cfg.normalises_embeddings:
      x = self.embedding_norm(x)
    x = self.dropout(x, deterministic=not train)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))

  def _blocks(self, x, caches, mask, positions, cache_index, train):
    cfg = self.config
    shared = SharedInputs(mask=mask, positions=positions, cache_index=cache_index)
    windows = cfg.layer_windows
    freqs = layer_inverse_frequencies(cfg)  # None: every layer rotates alike
    norm_on = None if cfg.first_attention_norm else [i > 0 for i in range(cfg.num_layers)]
    if cfg.scan_layers:
      # One scanned block for all layers: each layer's window as data, "no window" as one wider
      # than any distance, and so its rotary frequencies where layers differ.
      stacked = None if cfg.sliding_window is None else jnp.array(
          [jnp.iinfo(jnp.int32).max if w is None else w for w in windows], jnp.int32)
      stacked_freqs = None if freqs is None else jnp.asarray(np.stack(freqs))  # [layers, hd/2]
      stacked_norm_on = None if norm_on is None else jnp.array(norm_on)
      layers = LayerInputs(cache=caches, window=stacked, inv_freq=stacked_freqs,
                           attention_norm_on=stacked_norm_on)
      if self.pipeline is not None and caches is None and not self.is_initializing():
        stage = _block_stack(cfg, self.dtype, cfg.num_layers // self.pipeline.stages, parent=None)
        key = self.make_rng("dropout") if train and cfg.dropout_rate else None
        return run_pipeline(stage, self.variables["params"]["layers"], x, layers, shared,
                            deterministic=not train, schedule=self.pipeline, rng=key), None
      return self.layers(x, layers, shared, not train)
    new_caches = []
    for i, block in enumerate(self.layers):
      layer = LayerInputs(cache=None if caches is None else caches[i], window=windows[i],
                          inv_freq=None if freqs is None else freqs[i],
                          attention_norm_on=None if norm_on is None else norm_on[i])
      x, layer_cache = block(x, layer, shared, not train)
      new_caches.append(layer_cache)
    return x, None if caches is None else new_caches

  def _lm_features(self, x):
    """What the vocabulary projection takes: the final hidden states, or for BERT's MLM head
    their transform (dense, activation, norm)."""
    if self.config.head is not Head.MASKED_LM:
      return x
    return self._predict(x)

  def _predict(self, x):
    """The prediction head: dense, activation, norm (BERT's MLM transform, ModernBERT's `head`)."""
    cfg = self.config
    return self.mlm_norm(activation(cfg.head_activation or cfg.activation, self.mlm_transform(x)))

  def _classify(self, x, pooled, segment_ids, train):
    """Sequence logits [batch, num_labels]: encoders classify from the pooled first token (or
    the first token without a pooler), decoders from each row's last real token (the rightmost
    one, so left or right padding alike), as HF's `*ForSequenceClassification` do; with
    classifier_pooling=mean, from the mean over each row's real tokens (in float32). With
    `classifier_transform`, through the prediction head first (ModernBERT's)."""
    cfg = self.config
    if pooled is not None:
      features = pooled
    elif cfg.classifier_pooling is ClassifierPooling.MEAN:
      real = (segment_ids != 0)[..., None].astype(jnp.float32)             # [batch, length, 1]
      total = jnp.sum(x.astype(jnp.float32) * real, axis=1)
      features = (total / jnp.maximum(jnp.sum(real, axis=1), 1.0)).astype(x.dtype)
    elif not self.config.causal:
      features = x[:, 0]
    else:
      columns = jnp.arange(x.shape[1])
      last = jnp.max(jnp.where(segment_ids != 0, columns, 0), axis=-1)  # [batch]
      features = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    if cfg.classifier_transform:
      features = self._predict(features)
    features = self.dropout(features, deterministic=not train)
    return self.classifier(features).astype(jnp.float32)


@functools.lru_cache(maxsize=32)
def param_shapes(config: ModelConfig) -> Any:
  """The params `Transformer(config)` creates, as ShapeDtypeStructs in Flax's logically
  partitioned boxes (`nn.unbox` drops them): nothing is computed or allocated."""
  init = lambda: Transformer(config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
  return jax.eval_shape(init)["params"]
