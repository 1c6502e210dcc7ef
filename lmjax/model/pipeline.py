"""Pipeline parallelism: a scanned layer stack run as stages over micro-batches (GPipe).

The stack's L layers form S stages of L/S consecutive layers each, and the batch forms M
micro-batches. A state buffer [S, micro_batch, length, embed] holds what each stage works on;
at every one of the M + S - 1 iterations all stages run their layers at once (a vmap over the
stages of a scan over each stage's layers), then the buffer shifts one stage down (stage s's
output becomes stage s+1's input: a collective-permute when the buffer's stage axis is split
over devices), the next micro-batch enters at stage 0 and the last stage's output is collected.
The backward pass is autodiff's (GPipe: all forwards, then all backwards).

    iteration:   0    1    2    3    4        S = 3 stages, M = 3 micro-batches:
    stage 0     m0   m1   m2    .    .        5 iterations, of which each stage idles
    stage 1      .   m0   m1   m2    .        S - 1: the bubble, (S - 1) / (M + S - 1) of
    stage 2      .    .   m0   m1   m2        the time

Params keep their [layers, ...] layout (a checkpoint is the same with or without stages): they
are viewed as [S, L/S, ...] inside the step only. The buffer's stage axis and the params' are
named by the logical axis `layers`, whose rule (lmjax.sharding: `layers` -> `stage`) places
each stage's layers and activations on the devices of its stage. What differs per row (the
mask, positions) travels through the stages with its micro-batch; what differs per layer
(sliding windows, rotary frequencies) stays with its stage.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class PipelineSchedule:
  """S stages over M micro-batches, GPipe's schedule."""

  stages: int
  microbatches: int

  @property
  def iterations(self) -> int:
    """Steps of the pipeline: M micro-batches through S stages."""
    return self.microbatches + self.stages - 1

  @property
  def bubble_fraction(self) -> float:
    """The share of each stage's time spent idle (computing nothing that is kept)."""
    return (self.stages - 1) / self.iterations

  def describe(self) -> str:
    return (f"pipeline: {self.stages} stages x {self.microbatches} micro-batches, "
            f"{self.iterations} iterations, bubble fraction {self.bubble_fraction:.1%} "
            f"((S-1)/(M+S-1))")


def run_pipeline(stage: nn.Module, params: Any, x: jax.Array, per_layer: Any, per_row: Any, *,
                 deterministic: bool, schedule: PipelineSchedule,
                 rng: jax.Array | None = None) -> jax.Array:
  """x [batch, length, embed] through all layers as `schedule` pipelines them -> [batch, length,
  embed], what the whole stack gives on the whole batch.

  stage: an unbound module of one stage's L/S layers, `stage.apply({"params": p}, x,
  per_layer, per_row, deterministic) -> (x, _)` with p and per_layer [L/S, ...]. params and
  per_layer: pytrees of [layers, ...] arrays. per_row: a pytree whose arrays of one or more
  dims are [batch, ...] (split into micro-batches); its scalars and non-array leaves are the
  same for every row. rng: a dropout key (None: no dropout).
  """
  stages, micro = schedule.stages, schedule.microbatches
  to_stages = lambda tree: jax.tree.map(
      lambda a: a.reshape(stages, a.shape[0] // stages, *a.shape[1:]), tree)  # [S, L/S, ...]
  stage_params, stage_layers = to_stages(params), to_stages(per_layer)
  xs = _micro_batches(x, micro)                                     # [M, mb, length, embed]
  leaves, treedef = jax.tree.flatten(per_row)
  is_row = [isinstance(a, jax.Array) and a.ndim >= 1 for a in leaves]
  rows = [_micro_batches(a, micro) for a, r in zip(leaves, is_row) if r]  # [M, mb, ...] each

  def stage_fn(p, h, layer, row_leaves, key):  # one stage's layers on its micro-batch
    it = iter(row_leaves)
    row = treedef.unflatten([next(it) if r else a for a, r in zip(leaves, is_row)])
    rngs = {} if key is None else {"dropout": key}
    return stage.apply({"params": p}, h, layer, row, deterministic, rngs=rngs)[0]

  stage_axis, rules = _stage_rules()
  run_stages = jax.vmap(stage_fn, spmd_axis_name=stage_axis)
  first = jnp.arange(stages) == 0                                   # [S]: stage 0 takes input

  def enter(buffer, new):  # micro-batch `new` [mb, ...] into stage 0 of buffer [S, mb, ...]
    return jnp.where(first.reshape(stages, *(1,) * new.ndim), new[None], buffer)

  def iteration(carry, t):
    h, row_state = carry
    m = jnp.minimum(t, micro - 1)  # after the last micro-batch stage 0 idles (its work unused)
    h = _on_stages(enter(h, xs[m]))
    row_state = [enter(b, r[m]) for b, r in zip(row_state, rows)]
    keys = None if rng is None else jax.random.split(jax.random.fold_in(rng, t), stages)
    out = _on_stages(run_stages(stage_params, h, stage_layers, row_state, keys))
    # stage s's output (and its micro-batch's rows) go to stage s+1; the last one's leaves
    return (_shift(out), [_shift(b) for b in row_state]), out[-1]

  with nn.logical_axis_rules(rules):
    # Every stage's devices hold the micro-batches' rows as each stage splits them (the batch
    # outside may be split over the stages too), so stage 0 takes each in turn where it is.
    xs = nn.with_logical_constraint(xs, (None, "batch", "length", "embed"))
    buffer = _on_stages(jnp.zeros((stages, *xs.shape[1:]), x.dtype))
    row_buffers = [jnp.zeros((stages, *r.shape[1:]), r.dtype) for r in rows]
    _, done = jax.lax.scan(iteration, (buffer, row_buffers), jnp.arange(schedule.iterations))
    done = nn.with_logical_constraint(done, (None, "batch", "length", "embed"))
  # Micro-batch m leaves the last stage at iteration m + S - 1.
  return nn.with_logical_constraint(_whole_batch(done[stages - 1:]), ("batch", "length", "embed"))


def _micro_batches(a: jax.Array, micro: int) -> jax.Array:
  """[batch, ...] -> [M, batch/M, ...]; micro-batch i takes rows i, i + M, i + 2M, …, so each
  device's rows of a batch split over devices stay on it (as gradient accumulation splits)."""
  return jnp.swapaxes(a.reshape(a.shape[0] // micro, micro, *a.shape[1:]), 0, 1)


def _whole_batch(a: jax.Array) -> jax.Array:
  """The inverse of `_micro_batches`: [M, batch/M, ...] -> [batch, ...]."""
  return jnp.swapaxes(a, 0, 1).reshape(-1, *a.shape[2:])


def _shift(buffer: jax.Array) -> jax.Array:
  """[S, ...] with entry s moved to s + 1 (the last wraps to 0, where the next micro-batch
  replaces it): over devices split along the stage axis, a collective-permute."""
  return jnp.roll(buffer, 1, axis=0)


def _on_stages(buffer: jax.Array) -> jax.Array:
  """The state buffer [S, micro_batch, length, embed] with its stages over the `layers` rule's
  mesh axis and the rest as the blocks' activations."""
  return nn.with_logical_constraint(buffer, ("layers", "batch", "length", "embed"))


def _stage_rules() -> tuple[Any, Any]:
  """(the mesh axis or axes that the logical axis `layers` maps to under the rules in context,
  the rules for work inside the pipeline: those rules with that axis left to `layers` alone).

  vmap over stages splits over that axis (so each stage's work stays on its devices); outside
  the pipeline the batch may split over it too (lmjax.sharding.axis_rules), inside it the
  stage buffer's leading axis holds it. (None, the rules) without rules or where `layers` maps
  to no mesh axis.
  """
  rules = nn.get_logical_axis_rules()
  stage_axis = nn.logical_to_mesh_axes(("layers",), rules)[0] if rules else None
  if stage_axis is None:
    return None, rules
  taken = {stage_axis} if isinstance(stage_axis, str) else set(stage_axis)

  def without(target):
    if target is None or isinstance(target, str):
      return None if target in taken else target
    kept = tuple(a for a in target if a not in taken)
    return kept or None
  return stage_axis, tuple((name, target if name == "layers" else without(target))
                           for name, target in rules)
