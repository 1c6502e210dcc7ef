"""AdamW with linear warmup, cosine decay, global-norm clipping and a weight-decay mask.

The schedule's numbers (peak, floor, warmup and decay lengths) are runtime values of the train
step, not constants compiled into it: runs that differ only in `train.steps`,
`train.warmup_steps` or `train.learning_rate` share one compiled step (and XLA's persistent
cache serves it to the next process). optax's own `warmup_cosine_decay_schedule` branches on
them in Python, so it cannot take traced values; `learning_rate_at` is its formula in jnp
(tests/test_train.py holds the two equal).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmjax.config import TrainConfig

# Leaves whose last path element is one of these are not decayed: biases and norm scales.
NO_DECAY_NAMES = frozenset({"bias", "scale", "output_bias"})

Hyper = Mapping[str, Any]  # the schedule's numbers: host scalars, or the step's traced values


def schedule_values(config: TrainConfig) -> dict[str, np.ndarray]:
  """The schedule's numbers for `config`, as float32 host scalars: 0 -> `peak` over `warmup`
  steps, then cosine down to `alpha * peak` at step `decay` (and flat after it)."""
  warmup = min(config.warmup_steps, max(config.steps - 1, 0))
  peak, end = config.learning_rate, config.learning_rate * config.min_learning_rate_ratio
  return {name: np.float32(value) for name, value in (
      ("peak", peak), ("alpha", 0.0 if peak == 0.0 else end / peak), ("warmup", warmup),
      ("decay", max(config.steps, warmup + 1) - warmup))}


def learning_rate_at(count: jax.Array, hyper: Hyper) -> jax.Array:
  """The learning rate at optimizer step `count` (optax's warmup_cosine_decay_schedule)."""
  count = jnp.asarray(count, jnp.float32)
  peak, alpha, warmup, decay = (hyper[k] for k in ("peak", "alpha", "warmup", "decay"))
  # Warmup: optax's linear (power-1 polynomial) schedule from 0 to peak over `warmup` steps.
  frac = 1 - jnp.clip(count, 0, warmup) / jnp.maximum(warmup, 1)
  warm = -peak * frac + peak
  # Then its cosine decay over the `decay` steps after the warmup.
  cosine = 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(count - warmup, decay) / decay))
  return jnp.where(count < warmup, warm, peak * ((1 - alpha) * cosine + alpha))


def decay_mask(params) -> object:
  """True for parameters that get weight decay (matrices and embeddings)."""
  def decays(path, _):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return not any(name in NO_DECAY_NAMES for name in names)
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: TrainConfig, hyper: Hyper | None = None) -> optax.GradientTransformation:
  """The optimizer a run uses, its schedule read from `hyper` (default: `config`'s numbers;
  the train step passes its runtime values). Gradients arrive as token-weighted means."""
  hyper = schedule_values(config) if hyper is None else hyper
  adamw = optax.adamw(lambda count: learning_rate_at(count, hyper), b1=config.adam_b1,
                      b2=config.adam_b2, eps=config.adam_eps, weight_decay=config.weight_decay,
                      mask=decay_mask)
  if config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
  return adamw
