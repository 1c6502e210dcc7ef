"""Train state, created already sharded: eval_shape -> partition specs -> jitted init.

No host ever holds a full copy: the jitted init computes each device's shards where they live
(JAX's partitionable threefry makes the values independent of the mesh).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from lmjax.model import Transformer
from lmjax.model.config import ModelConfig
from lmjax.sharding import LOGICAL_AXIS_RULES, Rules, check_divisible, logical_to_mesh_sharding


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
                    seq_len: int, rules: Rules = LOGICAL_AXIS_RULES
                    ) -> tuple[TrainState, TrainState]:
  """(abstract state of ShapeDtypeStructs, matching tree of NamedShardings), no allocation.

  Raises UserError when a parameter dimension does not split evenly over its mesh axes.
  """
  boxed = jax.eval_shape(_init_fn(model, tx, seq_len), jax.random.key(0))
  logical = nn.get_partition_spec(boxed)
  shardings = logical_to_mesh_sharding(logical, mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.unbox(boxed), shardings)
  check_params_fit_mesh(abstract.params, logical.params, model.config)
  return abstract, shardings


def check_params_fit_mesh(abstract_params: Any, logical_specs: Any, config: ModelConfig) -> None:
  """Refuses params whose sharded dims their mesh axes do not divide, naming the config key.

  The optimizer state mirrors the params, so checking these covers it too.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(abstract_params)
  specs = jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  for (path, leaf), spec in zip(flat, specs):
    name = "/".join(str(getattr(k, "key", k)) for k in path)

    def describe(i, shape=leaf.shape, spec=spec, name=name):
      return f"{_config_key(spec[i], shape[i], config)} (the {spec[i]!r} dim of param {name})"

    check_divisible(leaf.shape, leaf.sharding, describe_dim=describe)


def _config_key(logical: str | None, size: int, config: ModelConfig) -> str:
  """The `model.*` key that sets a dim of logical axis `logical` and size `size`."""
  if logical == "heads":
    return "model.num_heads" if size == config.num_heads else "model.num_kv_heads"
  keys = {"embed": "model.embed_dim", "mlp": "model.mlp_dim", "vocab": "model.vocab_size",
          "kv": "model.head_dim", "layers": "model.num_layers"}
  return keys.get(logical, f"a dim of size {size}")


def create_train_state(model: Transformer, tx: optax.GradientTransformation, mesh: Mesh, *,
                       seed: int, seq_len: int, rules: Rules = LOGICAL_AXIS_RULES) -> TrainState:
  """Initialises params and optimizer state directly into their shards on `mesh`."""
  _, shardings = state_shardings(model, tx, mesh, seq_len=seq_len, rules=rules)
  init = _init_fn(model, tx, seq_len)
  return jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=shardings)(jax.random.key(seed))
