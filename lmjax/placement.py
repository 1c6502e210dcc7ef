"""Where a model's params live on a mesh: their sharded abstract values, checked to divide.

Loading (lmjax.run) and training (lmjax.train) place params the same way: the model's logical
axis names, the mesh and its rules (lmjax.sharding) decide; a dimension the mesh does not divide
is refused naming the config key that sets it.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import PartitionSpec

from lmjax.model import ModelConfig, param_shapes
from lmjax.sharding import MeshRules, check_divisible


def placed_params(config: ModelConfig, placement: MeshRules) -> Any:
  """The params of `Transformer(config)` as ShapeDtypeStructs carrying their shardings; a
  UserError names the config key whose size the mesh does not divide."""
  abstract, _, logical = placement.place_abstract(param_shapes(config))
  check_params_fit_mesh(abstract, logical, config)
  return abstract


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
  if logical == "mlp" and config.moe.enabled and size == config.expert_mlp_dim:
    return "model.moe.mlp_dim" if config.moe.mlp_dim else "model.mlp_dim"
  keys = {"embed": "model.embed_dim", "mlp": "model.mlp_dim", "vocab": "model.vocab_size",
          "kv": "model.head_dim", "layers": "model.num_layers",
          "expert": "model.moe.num_experts"}
  return keys.get(logical, f"a dim of size {size}")
