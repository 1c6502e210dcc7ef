"""The Mixture-of-Experts MLP (`model.moe`): a router, top-k routing and two dispatches.

Routing is transformers' MixtralTopKRouter / Qwen3MoeTopKRouter: softmax (float32) of the
router's logits over all experts, the top k kept and, with `normalize_weights`, renormalised to
sum to one. Each expert is a gated MLP, wo(act(x W_gate) * x W_up).

Dispatch never computes every expert for every token:

- dropless (`capacity_factor: null`): the token copies are sorted by expert and go through
  one grouped matmul per weight (`lax.ragged_dot`, group sizes = tokens per expert). TPUs and
  GPUs run it as a grouped kernel, so the work is k experts per token; XLA:CPU has no grouped
  kernel and lowers it to a masked dense product (every expert's rows), correct but no faster
  than dense. With the experts sharded over `expert`, XLA gathers their weights.
- with capacity (`capacity_factor: c`): each sequence is a group whose tokens fill a buffer of
  C = ceil(c * length * k / experts) slots per expert (at most `length`, which drops nothing),
  first choices before second ones; tokens past C lose that expert (its share of their output
  is zero, as in Switch/GShard). The buffer is [batch, experts, C, embed] with experts over the
  `expert` mesh axis, so each device computes its experts only (XLA moves the tokens with an
  all-to-all): the expert-parallel path. Padding takes no slots.

`dense_moe` computes every expert for every token, the reference both are tested against.
The load-balancing loss is sown per layer (`router_stats`) and assembled by
`load_balancing_loss`, which equals transformers' `load_balancing_loss_func`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.model.config import ModelConfig
from lmjax.model.layers import activation, initializer, matmul

ROUTER_STATS = "router_stats"  # the sown [3, experts] rows: top-k counts, probability sums, rows


class MoeMlp(nn.Module):
  """x [batch, length, embed], valid [batch, length] (False: padding) -> [batch, length, embed]."""

  config: ModelConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
    cfg, moe = self.config, self.config.moe
    d, f, e = cfg.embed_dim, cfg.expert_mlp_dim, moe.num_experts
    param = lambda name, axes, shape: self.param(
        name, nn.with_logical_partitioning(initializer(cfg), axes), shape, jnp.float32)
    router = param("router", ("embed", None), (d, e))
    experts = (param("experts_gate", ("expert", "embed", "mlp"), (e, d, f)),
               param("experts_up", ("expert", "embed", "mlp"), (e, d, f)),
               param("experts_down", ("expert", "mlp", "embed"), (e, f, d)))
    experts = tuple(w.astype(self.dtype) for w in experts)
    b, l, _ = x.shape
    probs = jax.nn.softmax(matmul(x, router, in_dims=1, dtype=self.dtype).astype(jnp.float32))
    weights, chosen = route(probs, moe.experts_per_token, moe.normalize_weights)  # [b, l, k]
    self.sow("intermediates", ROUTER_STATS, router_stats(probs, chosen, valid))
    act = lambda h: activation(cfg.activation, h)
    if moe.capacity_factor is None:
      y = _dropless(x.reshape(b * l, d), chosen.reshape(b * l, -1),
                    weights.reshape(b * l, -1), experts, act).reshape(b, l, d)
    else:
      capacity = min(l, math.ceil(moe.capacity_factor * l * moe.experts_per_token / e))
      y = _with_capacity(x, chosen, weights, valid, experts, act, capacity)
    return y.astype(self.dtype)


def route(probs: jax.Array, k: int, normalize: bool) -> tuple[jax.Array, jax.Array]:
  """Router probabilities [..., experts] -> (weights, expert ids), each [..., k], largest first."""
  weights, chosen = jax.lax.top_k(probs, k)
  if normalize:
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
  return weights, chosen


def router_stats(probs: jax.Array, chosen: jax.Array, valid: jax.Array) -> jax.Array:
  """One layer's load-balancing statistics over its real tokens: [3, experts] rows of top-k
  assignment counts, summed probabilities, and the token count (repeated)."""
  e = probs.shape[-1]
  mask = valid.astype(jnp.float32)[..., None]                          # [b, l, 1]
  counts = jnp.sum(jax.nn.one_hot(chosen, e, dtype=jnp.float32) * mask[..., None], axis=(0, 1, 2))
  prob_sums = jnp.sum(probs * mask, axis=(0, 1))
  return jnp.stack([counts, prob_sums, jnp.broadcast_to(jnp.sum(mask), (e,))])


def load_balancing_loss(intermediates) -> jax.Array:
  """The auxiliary loss of a forward pass's sown `router_stats` (every MoE layer's), as
  transformers' `load_balancing_loss_func` computes it over all layers' tokens together:
  experts * sum_e (share of top-k assignments to e) * (mean router probability of e)."""
  leaves = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(intermediates)
            if any(getattr(key, "key", None) == ROUTER_STATS for key in path)]
  if not leaves:
    raise ValueError("no router statistics were sown: is this a Mixture-of-Experts model, "
                     "applied with mutable=['intermediates']?")
  stats = jnp.concatenate([leaf.reshape(-1, *leaf.shape[-2:]) for leaf in leaves]).sum(0)
  counts, prob_sums, rows = stats
  rows = jnp.maximum(rows, 1.0)
  return stats.shape[-1] * jnp.sum((counts / rows) * (prob_sums / rows))


def _expert_mlp(x, gate, up, down, act, dot):
  return dot(act(dot(x, gate)) * dot(x, up), down)


def _dropless(tokens, chosen, weights, experts, act):
  """tokens [T, d], chosen/weights [T, k] -> [T, d] float32: token copies sorted by expert
  through grouped matmuls."""
  t, k = chosen.shape
  flat = chosen.reshape(-1)                                  # [T * k], token-major
  order = jnp.argsort(flat, stable=True)
  token_of = order // k
  sizes = jnp.bincount(flat, length=experts[0].shape[0]).astype(jnp.int32)
  dot = lambda a, w: jax.lax.ragged_dot(a, w, sizes)
  ys = _expert_mlp(tokens[token_of], *experts, act, dot)     # [T * k, d]
  mixed = ys.astype(jnp.float32) * weights.reshape(-1)[order][:, None]
  return jnp.zeros((t, tokens.shape[-1]), jnp.float32).at[token_of].add(mixed)


def _with_capacity(x, chosen, weights, valid, experts, act, capacity):
  """x [b, l, d], chosen/weights [b, l, k] -> [b, l, d] float32 through per-sequence buffers
  [b, experts, capacity, d]."""
  b, l, k = chosen.shape
  e = experts[0].shape[0]
  choice = jnp.swapaxes(chosen, 1, 2).reshape(b, k * l)     # first choices of all tokens first
  real = jnp.tile(valid, (1, k))                             # [b, k * l], in `choice`'s order
  taken = jax.nn.one_hot(choice, e, dtype=jnp.int32) * real[..., None]
  slot = jnp.take_along_axis(jnp.cumsum(taken, axis=1), choice[..., None], axis=2)[..., 0] - 1
  kept = (slot < capacity) & real
  slot = jnp.where(kept, slot, capacity)                     # out of bounds: dropped
  rows = jnp.arange(b)[:, None]
  copies = jnp.tile(x, (1, k, 1))                            # [b, k * l, d]
  # Filled where the tokens are (rows over every batch axis), then moved to where the experts
  # are (experts over `expert`, rows over the rest): a reshard of one dense array, which XLA
  # makes an all-to-all; the outputs come back the same way before each row gathers its own.
  local = lambda a: nn.with_logical_constraint(a, ("batch", None, None, None))
  spread = lambda a: nn.with_logical_constraint(a, ("expert_batch", "expert", None, None))
  buffer = local(jnp.zeros((b, e, capacity, x.shape[-1]), x.dtype).at[rows, choice, slot].set(
      copies, mode="drop"))
  dot = lambda a, w: jnp.einsum("becx,exy->becy", a, w)
  out = local(spread(_expert_mlp(spread(buffer), *experts, act, dot)))  # [b, e, capacity, d]
  ys = out.at[rows, choice, slot].get(mode="fill", fill_value=0)   # [b, k * l, d]
  w = jnp.where(kept, jnp.swapaxes(weights, 1, 2).reshape(b, k * l), 0.0)
  mixed = (ys.astype(jnp.float32) * w[..., None]).reshape(b, k, l, -1)
  return jnp.sum(mixed, axis=1)


def dense_moe(x: jax.Array, params, config: ModelConfig) -> jax.Array:
  """The reference: every expert on every token, mixed by the router's top-k weights (a
  MoeMlp's params; x [..., embed] -> [..., embed] float32)."""
  moe = config.moe
  probs = jax.nn.softmax(matmul(x, params["router"], in_dims=1, dtype=x.dtype).astype(jnp.float32))
  weights, chosen = route(probs, moe.experts_per_token, moe.normalize_weights)
  mix = jnp.sum(jax.nn.one_hot(chosen, moe.num_experts) * weights[..., None], axis=-2)
  gate, up, down = (params[n] for n in ("experts_gate", "experts_up", "experts_down"))
  into = lambda w: jnp.einsum("...x,exy->...ey", x, w)                 # [..., e, f]
  h = activation(config.activation, into(gate)) * into(up)
  ys = jnp.einsum("...ey,eyx->...ex", h, down)                         # [..., e, d]
  return jnp.sum(ys * mix[..., None], axis=-2)
