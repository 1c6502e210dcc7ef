"""Where a server's params and decoding slots live on a mesh, and its programs jitted for it.

    placement = serving_placement(["mesh.tensor=2"])      # MeshRules over the local devices
    programs = slot_programs(model, model.config, placement, slots_count=8, max_seq_len=512,
                             steps=4, adapters=False)
    params = jax.device_put(params, programs.params_shardings)
    state = programs.empty()                              # the slots, already sharded
    state, first = programs.prefill(params, None, state, slot, ids, length, key, settings, adapter)
    state, sampled = programs.decode(params, None, state, active)   # 4 tokens a slot

A server is laid out as training lays out its state (lmjax.sharding): params by the model's
logical axes and the mesh's rules (`mesh.rules`, else the standard table: FSDP over `fsdp`, Megatron over `tensor`; lmjax.placement
refuses a mesh the model does not divide), and its slots as a batch is, each cache row
[slots, kv_heads, len, head_dim] split over the batch axes (`data`, `fsdp`, `expert`) by slot
and over `tensor` by key/value head. Every program is jitted once per (model, placement, slots,
length) with explicit in and out shardings, traced with the rules in context (the model's
activation constraints bind, as in the train step), and its output state has the sharding its
input had: nothing is compiled again as requests come and go. A prompt is prefilled as a batch
of one, unsplit (all the devices compute it together, its heads split over `tensor`), then
written into its slot's row where that row lives.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from lmjax.config import apply_override
from lmjax.config_schema import build
from lmjax.errors import UserError
from lmjax.infer import slots
from lmjax.model import ModelConfig, Transformer
from lmjax.placement import placed_params
from lmjax.sharding import MeshConfig, MeshRules, mesh_axes_size, mesh_rules

# The logical axes of a slot's arrays (lmjax.infer.slots.Slots): a cache row's key and value are
# [slots, kv_heads, len, head_dim]; everything else has one value per slot.
_CACHE_AXES = ("batch", "heads", None, "kv")
_SLOT_AXES = ("batch",)


def serving_placement(overrides: Sequence[str] = (), devices: Sequence[jax.Device] | None = None
                      ) -> MeshRules:
  """The mesh `--set mesh.KEY=VALUE ...` describe (lmjax.sharding.MeshConfig; by default every
  local device on `data`) over `devices` (default: this process's), with its rules."""
  raw: dict[str, Any] = {}
  for item in overrides:
    if not item.partition("=")[0].strip().startswith("mesh."):
      raise UserError(f"--set {item!r}: lmjax serve takes mesh keys only (mesh.data, mesh.fsdp, "
                      f"mesh.tensor, mesh.expert, mesh.rules), e.g. --set mesh.tensor=2.")
    apply_override(raw, item)
  config = build(MeshConfig, raw.get("mesh", {}), "mesh")
  placement = mesh_rules(config, list(devices if devices is not None else jax.local_devices()))
  for axis, what in (("stage", "pipeline stages"), ("context", "a sequence split")):
    if placement.mesh.shape[axis] > 1:
      raise UserError(f"mesh.{axis}={placement.mesh.shape[axis]}: lmjax serve decodes without "
                      f"{what} (training only): split the model with mesh.tensor or mesh.fsdp, "
                      f"and the slots with mesh.data.")
  return placement


def batch_shards(placement: MeshRules) -> int:
  """How many ways the mesh splits the slots (the batch axes' sizes multiplied)."""
  return mesh_axes_size(placement.mesh, placement.batch_sharding().spec[0])


def check_slots_divide(max_batch: int, placement: MeshRules) -> None:
  """UserError when the mesh's batch axes do not split `max_batch` slots evenly."""
  shards = batch_shards(placement)
  if max_batch % shards:
    axes = " x ".join(f"mesh.{a}={placement.mesh.shape[a]}" for a in
                      _axes(placement.batch_sharding().spec[0]) if placement.mesh.shape[a] > 1)
    raise UserError(f"--max-batch {max_batch} slots do not split over the mesh's {shards} batch "
                    f"shards ({axes}): give a multiple of {shards}, or a mesh with fewer "
                    f"(e.g. --set mesh.tensor=... instead).")


def _axes(entry: Any) -> tuple[str, ...]:
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _fitting(placement: MeshRules, logical: tuple, shape: tuple[int, ...]) -> NamedSharding:
  """The sharding of `logical` axes for an array of `shape`, a dim kept whole where its mesh
  axes do not divide it (e.g. fewer key/value heads than `mesh.tensor`)."""
  spec = placement.sharding(P(*logical)).spec
  spec = [axes if size % mesh_axes_size(placement.mesh, axes) == 0 else None
          for axes, size in zip(list(spec) + [None] * (len(shape) - len(spec)), shape)]
  return NamedSharding(placement.mesh, P(*spec))


def slot_shardings(state: slots.Slots, placement: MeshRules) -> slots.Slots:
  """Where each array of `state` (abstract or not) lives: see the module's docstring."""
  def sharding(path, leaf):
    names = {getattr(k, "key", None) for k in path}
    logical = _CACHE_AXES if names & {"key", "value"} and leaf.ndim == 4 else _SLOT_AXES
    return _fitting(placement, logical, leaf.shape)
  return jax.tree_util.tree_map_with_path(sharding, state)


def _one_row(placement: MeshRules) -> MeshRules:
  """The rules for a batch of one: `batch` unsplit, and the batch's mesh axes split nothing else
  (activations keep `embed` whole, as training's do, where FSDP splits the batch)."""
  batch = set(_axes(placement.batch_sharding().spec[0]))
  rules = []
  for name, target in placement.rules:
    kept = tuple(axis for axis in _axes(target) if axis not in batch)
    rules.append((name, None if name == "batch" or not kept else kept))
  return dataclasses.replace(placement, rules=tuple(rules))


def _traced_with(placement: MeshRules, fn: Callable, traces: collections.Counter) -> Callable:
  """`fn` traced with `placement`'s rules in context, counting its traces (its compilations:
  the shardings are fixed, so only new shapes trace it again)."""
  @functools.wraps(fn)
  def traced(*args, **kwargs):
    traces[fn.__name__] += 1
    with placement.activation_context():
      return fn(*args, **kwargs)
  return traced


@dataclasses.dataclass(frozen=True)
class SlotPrograms:
  """A server's jitted programs over one layout (`slot_programs` makes them)."""

  empty: Callable[[], slots.Slots]
  prefill: Any   # jitted slots.prefill without its model
  decode: Any    # jitted slots.decode without its model, for `steps` steps
  params_shardings: Any          # where the params go (jax.device_put them there)
  adapters_sharding: NamedSharding
  traces: collections.Counter  # {"prefill": n, "decode": n}: the programs compiled so far

  def compiled(self) -> dict[str, int]:
    return {"compiled_prefills": self.traces["prefill"],
            "compiled_decodes": self.traces["decode"]}


@functools.lru_cache(maxsize=16)
def slot_programs(model: Transformer, params_config: ModelConfig, placement: MeshRules, *,
                  slots_count: int, max_seq_len: int, steps: int, adapters: bool
                  ) -> SlotPrograms:
  """The prefill and decode programs of `model` (its params those of `Transformer(params_config)`:
  the base under LoRA `adapters`, if any) over `slots_count` slots of `max_seq_len` positions,
  each decoding call `steps` tokens a slot; cached, so that engines alike share their
  compilations. A UserError names the config key whose size the mesh does not divide."""
  make_empty = functools.partial(slots.empty_slots, model, slots=slots_count,
                                 max_seq_len=max_seq_len)
  state = slot_shardings(jax.eval_shape(make_empty), placement)
  params = jax.tree.map(lambda a: a.sharding, placed_params(params_config, placement))
  everywhere = placement.replicated()
  traces: collections.Counter = collections.Counter()

  def prefill(params, adapters, state, slot, input_ids, length, key, settings, adapter):
    return slots.prefill(model, params, adapters, state, slot, input_ids, length, key, settings,
                         adapter)

  # With adapters, decoding runs the model once per row (jax.vmap), its batch of one unsplit
  # and the rows split over the batch axes.
  row_axes = _axes(placement.batch_sharding().spec[0]) or None if adapters else None
  decoding = _one_row(placement) if adapters else placement

  def decode(params, adapters, state, active):
    return slots.decode(model, params, adapters, state, active, steps=steps, row_axes=row_axes)

  # A prompt's activations keep their batch of one whole; decoding splits the slots.
  prefill = jax.jit(_traced_with(_one_row(placement), prefill, traces),
                    donate_argnames=("state",),
                    in_shardings=(params, everywhere, state) + (everywhere,) * 6,
                    out_shardings=(state, everywhere))
  decode = jax.jit(_traced_with(decoding, decode, traces), donate_argnames=("state",),
                   in_shardings=(params, everywhere, state, everywhere),
                   out_shardings=(state, everywhere))
  return SlotPrograms(empty=jax.jit(make_empty, out_shardings=state), prefill=prefill,
                      decode=decode, params_shardings=params, adapters_sharding=everywhere,
                      traces=traces)


__all__ = ["SlotPrograms", "batch_shards", "check_slots_divide", "serving_placement",
           "slot_programs", "slot_shardings"]
