"""The device mesh, the logical-axis rules, and shardings for state and batches.

The model names logical axes only (`LOGICAL_AXES`); a rules table maps them to the mesh axes
('data', 'stage', 'fsdp', 'context', 'tensor', 'expert'). Rules are tried in order and a mesh axis is used at most
once per array, so activations, whose batch dim takes ('data', 'fsdp', 'expert') first, keep
`embed` whole while parameters shard `embed` over 'fsdp'. The default table gives, in any combination:

  data parallel   the batch split over `data` (and `fsdp`), state replicated on `data`;
  FSDP (ZeRO-3)   params and optimizer state split along `embed` over `fsdp`, gathered per use;
  tensor (Megatron) attention heads (query and key/value), MLP units and the vocabulary split
                  over `tensor`;
  expert parallel a Mixture-of-Experts model's experts split over `expert`, which also splits the
                  batch outside the experts; with `model.moe.capacity_factor`, each device
                  computes its own experts' tokens (lmjax.model.moe);
  context         activations split along the sequence (`length`) over `context`;
  pipeline        a scanned stack's layers split over `stage`, each stage holding its own
                  (lmjax.model.pipeline); outside the stack the batch splits over it too.

`mesh.rules` in a config replaces the table, e.g. `[[batch, [data, fsdp]], [embed, null]]`.
A mesh and the rules that place arrays on it travel together as one `MeshRules`.

Multi-slice (ICI x DCN): `mesh.dcn_data`, `mesh.dcn_fsdp`, … multiply an axis across slices
(TPU slices joined by the data-center network, or hosts of a GPU cluster), while `mesh.data`,
`mesh.fsdp`, … give its size inside one slice. The usual layout keeps FSDP and tensor
parallelism inside a slice and crosses slices with data parallelism only (`mesh.dcn_data=2`:
two slices, each a data-parallel replica), so the slow network carries one gradient all-reduce
per step. Devices without a slice index (CPUs, GPUs) take each process as a slice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from lmjax.errors import UserError

# Outermost first: `stage` (pipeline) and `data` cross slow links best; `context` (the sequence)
# and `tensor` talk every layer and sit innermost, beside `expert`.
MESH_AXES = ("data", "stage", "fsdp", "context", "tensor", "expert")
BATCH_AXES = ("data", "fsdp", "expert")
# Every logical name the model uses. `kv` is the size of one head (head_dim), kept whole;
# key/value heads are named `heads` like query heads, so they split over `tensor` too.
# `length` is the sequence (split over `context` for long sequences); `layers` numbers a scanned
# stack's layers (split over `stage` for pipeline parallelism).
# `lora_rank` is a LoRA adapter's rank, a few dims: replicated. `expert` numbers a MoE layer's
# experts; `expert_batch` is the batch of its dispatch buffers, whose `expert` dim takes that mesh
# axis (so the rows there split over the other batch axes only).
LOGICAL_AXES = ("batch", "length", "embed", "heads", "kv", "mlp", "vocab", "layers",
                "lora_rank", "expert", "expert_batch")

Rules = tuple[tuple[str, Any], ...]

LOGICAL_AXIS_RULES: Rules = (
    ("batch", BATCH_AXES),   # data parallel over both; FSDP is data parallel with sharded state
    ("embed", "fsdp"),       # ZeRO-3: parameters and optimizer state sharded over fsdp
    ("heads", "tensor"),     # Megatron: attention heads …
    ("mlp", "tensor"),       # … MLP hidden units …
    ("vocab", "tensor"),     # … and the vocabulary split over tensor
    ("length", "context"),   # context parallel: activations split along the sequence
    ("kv", None),
    ("layers", "stage"),     # pipeline parallel: each stage holds its layers
    ("lora_rank", None),
    ("expert", "expert"),    # expert parallel: each device holds (and computes) its experts
    ("expert_batch", ("data", "fsdp")),
)


def parse_rules(raw: Any) -> Rules:
  """`mesh.rules` as read from YAML -> a validated, hashable rules table.

  `raw` is a list of [logical_name, mesh_axis | [mesh_axis, ...] | null] pairs.
  """
  example = "e.g. [[batch, [data, fsdp]], [embed, fsdp], [heads, tensor]]"
  if not isinstance(raw, (list, tuple)):
    raise UserError(f"mesh.rules must be a list of [logical_name, mesh_axis] pairs ({example}), "
                    f"got {raw!r}.")
  rules = []
  for item in raw:
    if not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], str):
      raise UserError(f"mesh.rules entry {item!r} must be a pair [logical_name, mesh_axis] "
                      f"({example}).")
    name, target = item
    if name not in LOGICAL_AXES:
      raise UserError(f"mesh.rules names the logical axis {name!r}, which the model does not "
                      f"use; logical axes are {', '.join(LOGICAL_AXES)}.")
    axes = [target] if isinstance(target, str) else list(target or [])
    for axis in axes:
      if axis not in MESH_AXES:
        raise UserError(f"mesh.rules maps {name!r} to {axis!r}, which is not a mesh axis; mesh "
                        f"axes are {', '.join(MESH_AXES)} (or null for 'not sharded').")
    if len(set(axes)) != len(axes):
      raise UserError(f"mesh.rules maps {name!r} to {target!r}, which repeats a mesh axis.")
    rules.append((name, target if target is None or isinstance(target, str) else tuple(axes)))
  return tuple(rules)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """The `mesh` section of a run config."""

  data: int = -1    # -1: all devices not used by the other axes
  fsdp: int = 1
  tensor: int = 1
  expert: int = 1   # expert parallelism (Mixture-of-Experts models); a batch axis elsewhere
  context: int = 1  # context parallelism: the sequence split across devices
  stage: int = 1    # pipeline parallelism: the layer stack split into stages
  # Across slices (the data-center network): each axis's size is its ICI size times these.
  dcn_data: int = 1
  dcn_fsdp: int = 1
  dcn_tensor: int = 1
  dcn_expert: int = 1
  dcn_context: int = 1
  dcn_stage: int = 1
  # [[logical_name, mesh_axis | [mesh_axis, ...] | null], ...] replacing the default table
  # (LOGICAL_AXIS_RULES); null keeps the default.
  rules: Any = None

  def __post_init__(self):
    if self.rules is not None:
      object.__setattr__(self, "rules", parse_rules(self.rules))
    for axis in MESH_AXES:
      size = getattr(self, f"dcn_{axis}")
      if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise UserError(f"mesh.dcn_{axis}={size!r}: the number of slices an axis spans is a "
                        f"positive integer (1: inside one slice).")

  @property
  def dcn_shape(self) -> tuple[int, ...]:
    """The slices each mesh axis spans, in MESH_AXES order."""
    return tuple(getattr(self, f"dcn_{axis}") for axis in MESH_AXES)


def axis_rules(config: MeshConfig, *, stages: int = 1) -> Rules:
  """The rules table a run uses: `mesh.rules` when given, else `LOGICAL_AXIS_RULES`. With
  pipeline stages (`stages` > 1) the default table splits the batch over `stage` too: outside
  the layer stack (embeddings, the head and the loss) each stage's devices then take their
  share of the rows instead of all computing all of them (lmjax.model.pipeline)."""
  if config.rules is not None:
    return config.rules
  if stages == 1:
    return LOGICAL_AXIS_RULES
  return tuple((name, ("data", "stage", "fsdp", "expert") if name == "batch" else target)
               for name, target in LOGICAL_AXIS_RULES)


def mesh_shape(config: MeshConfig, num_devices: int) -> tuple[int, ...]:
  """The MESH_AXES sizes inside one slice (all of `num_devices` when the mesh
  spans one), with at most one -1 filled from the devices of a slice."""
  slices = math.prod(config.dcn_shape)
  if num_devices % slices:
    raise UserError(f"mesh.dcn_* spans {slices} slices ({' x '.join(map(str, config.dcn_shape))}), "
                    f"which do not divide the {num_devices} devices available.")
  num_devices //= slices
  sizes = [getattr(config, axis) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise UserError(f"at most one of mesh.{'/'.join(MESH_AXES)} may be -1, got "
                    f"{tuple(sizes)}.")
  for name, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise UserError(f"mesh.{name}={size}: sizes are positive, or -1 for 'the remaining devices'.")
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % fixed:
      raise UserError(f"the mesh's fixed axes ({fixed} devices) do not divide the {num_devices} "
                      f"devices available; adjust mesh.{'/'.join(MESH_AXES)}.")
    sizes[sizes.index(-1)] = num_devices // fixed
  if int(np.prod(sizes)) != num_devices:
    shown = " x ".join(f"{axis}={size}" for axis, size in zip(MESH_AXES, sizes)
                       if size != 1 or axis == "data")
    where = f" in each of {slices} slices" if slices > 1 else ""
    raise UserError(f"mesh {shown} needs {int(np.prod(sizes))} devices but {num_devices} are "
                    f"available{where}; set one axis to -1 to use all of them.")
  return tuple(sizes)


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A MESH_AXES mesh over all devices (of all processes), Auto axis
  types; across slices (`mesh.dcn_*`), each axis's slices laid out by the slow network."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(config, len(devices))
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if math.prod(config.dcn_shape) == 1:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  # TPU slices number their devices by slice; elsewhere (CPU, GPU hosts: one slice index, or
  # none) each process is a slice.
  by_process = len({getattr(d, "slice_index", None) for d in devices}) == 1
  try:
    grid = mesh_utils.create_hybrid_device_mesh(shape, config.dcn_shape, devices,
                                                process_is_granule=by_process)
  except ValueError as e:
    unit = "processes" if by_process else "slices"
    raise UserError(f"mesh.dcn_* = {' x '.join(map(str, config.dcn_shape))} does not match the "
                    f"{unit} the devices come from ({e}); each of the "
                    f"{math.prod(config.dcn_shape)} {unit} must hold "
                    f"{math.prod(shape)} devices.") from None
  return Mesh(grid, MESH_AXES, axis_types=axis_types)


def mesh_axes_size(mesh: Mesh, axes: Any) -> int:
  """How many ways a PartitionSpec entry (None, an axis or a tuple of axes) splits a dim."""
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  return math.prod(mesh.shape[a] for a in axes)


def describe_axes(mesh: Mesh, axes: Any) -> str:
  """'mesh.tensor=2' or 'mesh.data x mesh.fsdp = 4', for error messages."""
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  if len(axes) == 1:
    return f"mesh.{axes[0]}={mesh.shape[axes[0]]}"
  return f"{' x '.join(f'mesh.{a}' for a in axes)} = {mesh_axes_size(mesh, axes)}"


@dataclasses.dataclass(frozen=True)
class MeshRules:
  """A mesh and the logical-axis rules that place arrays on it: where any array of the model,
  the state or a batch lives follows from these two together."""

  mesh: Mesh
  rules: Rules = LOGICAL_AXIS_RULES

  def sharding(self, logical_specs: Any) -> Any:
    """A tree of logical PartitionSpecs -> a tree of NamedShardings on the mesh."""
    return nn.logical_to_mesh_sharding(logical_specs, self.mesh, list(self.rules))

  @contextlib.contextmanager
  def activation_context(self) -> Iterator[None]:
    """Makes the model's `nn.with_logical_constraint`s bind to the mesh, while tracing under jit.

    Without both a mesh and rules in context Flax drops those constraints silently, and XLA is
    left to guess the activations' layout at block boundaries.
    """
    with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh), \
         nn.logical_axis_rules(list(self.rules)):
      yield

  def batch_sharding(self) -> NamedSharding:
    """Where the rows of [batch, length] inputs live: by default rows over ('data', 'fsdp')."""
    return self.sharding(P("batch", "length"))

  def example_sharding(self) -> NamedSharding:
    """Where arrays of one value per row ([batch], e.g. labels) live: as the rows do."""
    return NamedSharding(self.mesh, P(self.batch_sharding().spec[0]))

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def process_batch_positions(self, batch_size: int) -> np.ndarray:
    """Positions in the global batch whose rows this process's devices hold: sorted [n] int.

    With one process that is every row; on a pod, each host reads only these rows.
    """
    rows = NamedSharding(self.mesh, P(self.batch_sharding().spec[0]))
    index_map = rows.addressable_devices_indices_map((batch_size,))
    slices = {(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop)
              for s in index_map.values()}
    return np.concatenate([np.arange(start, stop) for start, stop in sorted(slices)])

  def shard_batch(self, local_rows: Mapping[str, np.ndarray], batch_size: int
                  ) -> dict[str, jax.Array]:
    """This process's rows ([n, ...] each, at `process_batch_positions`) -> global Arrays of
    [batch_size, ...], sharded over rows as `batch_sharding` says."""
    rows, examples = self.batch_sharding(), self.example_sharding()
    return {k: jax.make_array_from_process_local_data(
                rows if np.ndim(v) > 1 else examples, np.asarray(v), (batch_size, *np.shape(v)[1:]))
            for k, v in local_rows.items()}

  def place_abstract(self, boxed: Any) -> tuple[Any, Any, Any]:
    """A tree of abstract values in Flax's logically partitioned boxes (`jax.eval_shape` of an
    init) -> (ShapeDtypeStructs carrying their shardings, the matching NamedShardings, the
    logical PartitionSpecs)."""
    logical = nn.get_partition_spec(boxed)
    shardings = self.sharding(logical)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            nn.unbox(boxed), shardings)
    return abstract, shardings, logical


def mesh_rules(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> MeshRules:
  """The mesh of `config` over all devices (or `devices`) with the rules it names."""
  mesh = make_mesh(config, devices)
  return MeshRules(mesh, axis_rules(config, stages=mesh.shape["stage"]))


def check_divisible(shape: Sequence[int], sharding: NamedSharding, *, describe_dim) -> None:
  """Raises UserError for the first dim of `shape` that its mesh axes do not split evenly.

  `describe_dim(i)` names dim i for the message (e.g. "model.num_heads=6 (…)").
  """
  for i, axes in enumerate(sharding.spec):
    size = mesh_axes_size(sharding.mesh, axes)
    if shape[i] % size:
      raise UserError(
          f"{describe_dim(i)} has size {shape[i]}, which {describe_axes(sharding.mesh, axes)} "
          f"does not divide: change the mesh (mesh.{'/'.join(MESH_AXES)}) or that size so that "
          f"{size} divides {shape[i]}.")
