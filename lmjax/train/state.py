"""Train state, created already sharded: eval_shape -> partition specs -> jitted init.

No host ever holds a full copy: the jitted init computes each device's shards where they live
(JAX's partitionable threefry makes the values independent of the mesh). The state's pytree,
`TrainState`, is what checkpoints hold (lmjax.run.record).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lmjax.model import Transformer
from lmjax.model.trainable import cast_frozen, trained_part
from lmjax.placement import check_params_fit_mesh
from lmjax.run.record import TrainState
from lmjax.sharding import MeshRules


def _init_fn(model: Transformer, tx: optax.GradientTransformation, seq_len: int):
  def init(rng: jax.Array) -> TrainState:
    ids = jnp.zeros((1, seq_len), jnp.int32)
    params = model.init({"params": rng}, ids)["params"]  # logically partitioned boxes
    params = cast_frozen(params, model.config)  # a LoRA run may keep its base in bfloat16
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(trained_part(params, model.config)))
  return init


def boxed_state(model: Transformer, tx: optax.GradientTransformation, *, seq_len: int) -> TrainState:
  """The train state's abstract values in Flax's logically partitioned boxes (no mesh yet): what
  `MeshRules.place_abstract` places on any mesh, a real one or an abstract one (the planner)."""
  return jax.eval_shape(_init_fn(model, tx, seq_len), jax.random.key(0))


def state_shardings(model: Transformer, tx: optax.GradientTransformation, placement: MeshRules,
                    *, seq_len: int) -> tuple[TrainState, TrainState]:
  """(abstract state of ShapeDtypeStructs, matching tree of NamedShardings), no allocation.

  Raises UserError when a parameter dimension does not split evenly over its mesh axes.
  """
  abstract, shardings, logical = placement.place_abstract(boxed_state(model, tx, seq_len=seq_len))
  check_params_fit_mesh(abstract.params, logical.params, model.config)
  return abstract, shardings


def create_train_state(model: Transformer, tx: optax.GradientTransformation,
                       placement: MeshRules, *, seed: int, seq_len: int) -> TrainState:
  """Initialises params and optimizer state directly into their shards on the mesh."""
  _, shardings = state_shardings(model, tx, placement, seq_len=seq_len)
  init = _init_fn(model, tx, seq_len)
  return jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=shardings)(jax.random.key(seed))
