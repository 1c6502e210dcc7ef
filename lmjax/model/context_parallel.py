"""Context (sequence) parallelism: where the sequence is split, and the order its tokens take.

The model names logical axes only; a sequence is split across devices when the rules in context
map the activations' `length` axis to mesh axes of more than one device (by default `length` ->
`context`, so `mesh.context`). `context_split` finds those axes while the model is traced, from
`nn.logical_to_mesh_axes` and `jax.sharding.get_abstract_mesh()` (MeshRules.activation_context
sets both under jit); without a mesh, or with a KV cache (decoding), it says None and attention
runs as usual.

Attention over a split sequence runs in lmjax.model.ring: ring attention (K/V blocks passed
around the devices) or all-gathered K/V, chosen by `model.context_parallel`. Every other layer
works token by token and needs nothing.

Load balance (ring attention, causal models). With the sequence in order, device i's queries
see the keys of devices 0…i only: the last device works n times as long as the first. The
zig-zag layout cuts the sequence into 2n chunks and gives device i chunks i and 2n-1-i (an early
and a late one), so each device does the same work and each ring step after the first computes
exactly half a block: the other half is masked out by causality and skipped.

Where the permutation lives: in the model, once per forward pass. `TokenOrder.apply` puts the
inputs (ids, positions, segment ids, token types) in zig-zag order before the embeddings, and
`TokenOrder.restore` puts the hidden states back in order after the last block, so the losses,
the data pipeline and every caller see the sequence in order. Masks are built by *slot* (the
token's index in the sequence), which travels with each token (`slots`), so causality, packed
documents and sliding windows stay exact in any order. Each reorder is two `ppermute`s of the
local chunk pair, no gather: a chunk's destination is a permutation of the devices for the first
chunks of all devices, and another for the second chunks.

Token order is invisible to every layer but two: dropout draws its masks by position (a run with
dropout differs from one device in which activations are dropped, as any other mesh change does
to the random stream), and a Mixture-of-Experts layer with a capacity drops the tokens that
overflow first in order.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from lmjax.errors import UserError
from lmjax.model.config import ContextParallel, ModelConfig


@dataclasses.dataclass(frozen=True)
class ContextSplit:
  """How the sequence is split: over which mesh axes, how many ways, and how attention runs."""

  axes: tuple[str, ...]   # the mesh axes splitting `length` (one: mesh.context by default)
  size: int               # the devices one sequence is spread over
  ring: bool              # ring attention (else all-gathered K/V)
  zigzag: bool            # tokens in zig-zag order (ring attention of a causal model)

  @property
  def axis_name(self) -> str | tuple[str, ...]:
    """The axes as collectives name them."""
    return self.axes[0] if len(self.axes) == 1 else self.axes


def context_split(config: ModelConfig, *, cached: bool = False) -> ContextSplit | None:
  """The split of the sequence that the mesh and logical rules in context imply, None where the
  sequence is whole on each device (no mesh, `length` unsplit, or a KV cache)."""
  mesh = jax.sharding.get_abstract_mesh()
  if cached or mesh.empty:
    return None
  axes = nn.logical_to_mesh_axes(("batch", "length", "embed"))[1]
  if axes is None:
    return None
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  size = math.prod(mesh.shape[a] for a in axes)
  if size == 1:
    return None
  ring = config.context_parallel is not ContextParallel.ALLGATHER
  return ContextSplit(axes, size, ring=ring, zigzag=ring and config.causal)


def check_length(split: ContextSplit, seq_len: int, *, what: str = "the sequence length") -> None:
  """UserError unless `split` cuts a sequence of `seq_len` tokens evenly (2 x its size chunks in
  zig-zag order)."""
  chunks = 2 * split.size if split.zigzag else split.size
  if seq_len % chunks:
    mesh = " x ".join(f"mesh.{a}" for a in split.axes)
    how = (f"ring attention of a causal model cuts it into 2 x {split.size} = {chunks} chunks "
           f"(zig-zag load balancing)" if split.zigzag else f"it is cut into {chunks} parts")
    fix = ", or set model.context_parallel=allgather (no zig-zag)" if split.zigzag else ""
    raise UserError(f"{what}={seq_len} is split over {mesh} = {split.size} devices and {how}, "
                    f"which do not divide {seq_len}: choose a length that is a multiple of "
                    f"{chunks}, or another mesh{fix}.")


def zigzag_slots(seq_len: int, size: int) -> np.ndarray:
  """The slot of each position of the zig-zag order: [seq_len] int32, device i's part holding
  chunks i and 2 * size - 1 - i of 2 * size."""
  chunks = np.arange(seq_len, dtype=np.int32).reshape(2 * size, -1)
  return np.concatenate([np.concatenate([chunks[i], chunks[2 * size - 1 - i]])
                         for i in range(size)])


def _chunk_moves(size: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
  """Where each device's first and second chunk go in zig-zag order: two permutations.

  In order, device d holds chunks 2d and 2d + 1; chunk c belongs to device c (c < size) or
  2 * size - 1 - c. The first chunks' destinations are the even devices below size and the odd
  ones, once each; so are the second chunks'. Device t receives its early chunk by the first
  permutation where t is even, by the second where it is odd.
  """
  home = lambda c: c if c < size else 2 * size - 1 - c
  return ([(d, home(2 * d)) for d in range(size)], [(d, home(2 * d + 1)) for d in range(size)])


def _send(x: jax.Array, moves: list[tuple[int, int]], axis_name: Any) -> jax.Array:
  """`x` moved as `moves` (source, destination) says. A chunk that stays on its device is not
  sent: XLA:CPU's collective permute lets a device whose only pair is itself skip the
  rendezvous the others wait in (a deadlock on fake devices)."""
  kept = np.zeros(len(moves), bool)  # by source device
  kept[[src for src, dst in moves if src == dst]] = True
  moved = jax.lax.ppermute(x, axis_name, [(src, dst) for src, dst in moves if src != dst])
  return jnp.where(jnp.asarray(kept)[jax.lax.axis_index(axis_name)], x, moved)


def _to_zigzag(x: jax.Array, *, axis_name: Any, size: int) -> jax.Array:
  """One device's part [batch, 2c, ...] in order -> its part in zig-zag order (in shard_map)."""
  first_moves, second_moves = _chunk_moves(size)
  c = x.shape[1] // 2
  from_first = _send(x[:, :c], first_moves, axis_name)
  from_second = _send(x[:, c:], second_moves, axis_name)
  even = jax.lax.axis_index(axis_name) % 2 == 0
  early = jnp.where(even, from_first, from_second)
  late = jnp.where(even, from_second, from_first)
  return jnp.concatenate([early, late], axis=1)


def _from_zigzag(x: jax.Array, *, axis_name: Any, size: int) -> jax.Array:
  """`_to_zigzag` undone: each chunk sent back the way it came."""
  first_moves, second_moves = _chunk_moves(size)
  back = lambda moves: [(dst, src) for src, dst in moves]
  c = x.shape[1] // 2
  even = jax.lax.axis_index(axis_name) % 2 == 0
  came_first = jnp.where(even, x[:, :c], x[:, c:])
  came_second = jnp.where(even, x[:, c:], x[:, :c])
  first = _send(came_first, back(first_moves), axis_name)
  second = _send(came_second, back(second_moves), axis_name)
  return jnp.concatenate([first, second], axis=1)


class TokenOrder:
  """The order tokens take through the blocks: the sequence's own, or zig-zag (see the module
  docstring), and the slot each position holds."""

  def __init__(self, split: ContextSplit | None, seq_len: int):
    self.split = split
    self.zigzag = split is not None and split.zigzag
    if split is not None:
      check_length(split, seq_len)
    # None: masks by arange (the usual attention); else every token's slot, [seq_len] int32
    self.slots = None if split is None else jnp.asarray(
        zigzag_slots(seq_len, split.size) if self.zigzag else np.arange(seq_len, dtype=np.int32))

  def _move(self, fn, x: jax.Array) -> jax.Array:
    split = self.split
    spec = P(None, split.axis_name)
    return jax.shard_map(lambda part: fn(part, axis_name=split.axis_name, size=split.size),
                         in_specs=spec, out_specs=spec, axis_names=frozenset(split.axes))(x)

  def apply(self, *arrays: jax.Array | None) -> tuple[jax.Array | None, ...]:
    """[batch, length, ...] arrays (None passes through) in the blocks' order."""
    if not self.zigzag:
      return arrays
    return tuple(None if a is None else self._move(_to_zigzag, a) for a in arrays)

  def restore(self, x: jax.Array) -> jax.Array:
    """[batch, length, ...] in the blocks' order -> in the sequence's order."""
    return self._move(_from_zigzag, x) if self.zigzag else x
