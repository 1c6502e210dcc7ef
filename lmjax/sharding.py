"""The device mesh, the logical-axis rules, and shardings for state and batches.

The model names logical axes only (`batch, length, embed, heads, kv, mlp, vocab, layers`);
`LOGICAL_AXIS_RULES` maps them to the mesh axes ('data', 'fsdp', 'tensor'). Rules are tried in
order and a mesh axis is used at most once per array, so activations, whose batch dim takes
('data', 'fsdp') first, keep `embed` whole while parameters shard `embed` over 'fsdp'.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from lmjax.config import MeshConfig
from lmjax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),   # data parallel over both; FSDP is data parallel with sharded state
    ("embed", "fsdp"),       # ZeRO-3: parameters and optimizer state sharded over fsdp
    ("heads", "tensor"),     # Megatron: attention heads …
    ("mlp", "tensor"),       # … MLP hidden units …
    ("vocab", "tensor"),     # … and the vocabulary split over tensor
    ("length", None),
    ("kv", None),
    ("layers", None),
)


def mesh_shape(config: MeshConfig, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes, with at most one -1 filled from `num_devices`."""
  sizes = [config.data, config.fsdp, config.tensor]
  if sizes.count(-1) > 1:
    raise UserError(f"at most one of mesh.data/fsdp/tensor may be -1, got {tuple(sizes)}.")
  for name, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise UserError(f"mesh.{name}={size}: sizes are positive, or -1 for 'the remaining devices'.")
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % fixed:
      raise UserError(f"the mesh's fixed axes ({fixed} devices) do not divide the {num_devices} "
                      f"devices available; adjust mesh.data/fsdp/tensor.")
    sizes[sizes.index(-1)] = num_devices // fixed
  if int(np.prod(sizes)) != num_devices:
    raise UserError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs "
                    f"{int(np.prod(sizes))} devices but {num_devices} are available; set one "
                    f"axis to -1 to use all of them.")
  return tuple(sizes)


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over all devices, with Auto axis types."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_mesh_sharding(logical_specs: Any, mesh: Mesh,
                             rules: Sequence = LOGICAL_AXIS_RULES) -> Any:
  """A tree of logical PartitionSpecs -> a tree of NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split along their first dim over ('data', 'fsdp') and replicated on tensor."""
  return NamedSharding(mesh, P(BATCH_AXES))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Process-local numpy rows -> global jax Arrays sharded over the batch axes.

  Each process passes only its own rows (global_batch / process_count of them); with one
  process that is the whole batch.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
