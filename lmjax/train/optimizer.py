"""AdamW with linear warmup, cosine decay, global-norm clipping and a weight-decay mask."""

from __future__ import annotations

import jax
import optax

from lmjax.config import TrainConfig

# Leaves whose last path element is one of these are not decayed: biases and norm scales.
NO_DECAY_NAMES = frozenset({"bias", "scale", "output_bias"})


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
  """0 -> peak over `warmup_steps`, then cosine down to `min_learning_rate_ratio * peak`."""
  warmup = min(config.warmup_steps, max(config.steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup,
      decay_steps=max(config.steps, warmup + 1),
      end_value=config.learning_rate * config.min_learning_rate_ratio)


def decay_mask(params) -> object:
  """True for parameters that get weight decay (matrices and embeddings)."""
  def decays(path, _):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return not any(name in NO_DECAY_NAMES for name in names)
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """The optimizer a run uses. Gradients arrive as token-weighted means."""
  adamw = optax.adamw(learning_rate_schedule(config), b1=config.adam_b1, b2=config.adam_b2,
                      eps=config.adam_eps, weight_decay=config.weight_decay, mask=decay_mask)
  if config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
  return adamw
