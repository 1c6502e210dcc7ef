"""Train state, created already sharded: eval_shape -> partition specs -> jitted init."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from lmjax.model import Transformer
from lmjax.sharding import LOGICAL_AXIS_RULES, logical_to_mesh_sharding


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array      # int32 scalar: number of updates applied
  params: Any          # float32 master weights
  opt_state: Any


def _init_fn(model: Transformer, tx: optax.GradientTransformation, seq_len: int):
  def init(rng: jax.Array) -> TrainState:
    ids = jnp.zeros((1, seq_len), jnp.int32)
    params = model.init({"params": rng}, ids)["params"]  # logically partitioned boxes
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return init


def state_shardings(model: Transformer, tx: optax.GradientTransformation, mesh: Mesh, *,
                    seq_len: int, rules=LOGICAL_AXIS_RULES) -> tuple[TrainState, TrainState]:
  """(abstract state of ShapeDtypeStructs, matching tree of NamedShardings), no allocation."""
  boxed = jax.eval_shape(_init_fn(model, tx, seq_len), jax.random.key(0))
  shardings = logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.unbox(boxed), shardings)
  return abstract, shardings


def create_train_state(model: Transformer, tx: optax.GradientTransformation, mesh: Mesh, *,
                       seed: int, seq_len: int, rules=LOGICAL_AXIS_RULES) -> TrainState:
  """Initialises params and optimizer state directly into their shards on `mesh`."""
  _, shardings = state_shardings(model, tx, mesh, seq_len=seq_len, rules=rules)
  init = _init_fn(model, tx, seq_len)
  return jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=shardings)(jax.random.key(seed))
