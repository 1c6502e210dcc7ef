"""What one mesh and remat policy cost one device, estimated from the config alone: memory
(state + gradients + activations), FLOPs and the bytes its collectives move, and from those a
step time. The planner (lmjax.train.plan) ranks candidates with these, then compiles the
most promising to confirm the memory with XLA's own analysis.

Memory per device, in bytes:

    state        params + optimizer state, exactly as the mesh shards them (the abstract state
                 placed on an abstract mesh: lmjax.train.plan)
    gradients    the trained params' shards in float32, plus under FSDP the weights of the
                 layer in use gathered whole (and their gradient before it is reduce-scattered)
    activations  per layer, what the remat policy keeps for the backward pass (`_KEPT`), plus
                 one layer's worth recomputed in the backward pass, plus the logits (float32,
                 [tokens, vocab / tensor], or [rows, loss_chunk_size, vocab / tensor] chunked)

Each term counts the copies of a tensor XLA holds at its peak (`_KEPT`, `_LOGIT_COPIES`, …):
checked against XLA's memory analysis on CPU (tests/test_plan.py: within 15% on the tiny
configs over several meshes). Accelerator backends fuse more and use flash attention (no
[queries, keys] scores), so there the estimate errs on the safe side.

Communication, in bytes each device sends per step (ring collectives: an all-gather or
reduce-scatter of an array of X bytes over n devices sends X (n - 1) / n from each, an
all-reduce twice that): FSDP's weight all-gathers (forward and backward) and gradient
reduce-scatter, the data-parallel gradient all-reduce, tensor parallelism's activation
all-reduces (two per layer forward, two backward, two more recomputed under remat=full), the
experts' all-to-all dispatch and combine, context parallelism's K/V ring.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

from lmjax.config import ComputeDtype, Config
from lmjax.model import Remat
from lmjax.model.attention import QUERY_BLOCK
from lmjax.model.options import AttentionImpl
from lmjax.train.metrics import peak_flops_per_device

# Per layer and token, the copies of each activation a remat policy keeps for the backward
# pass: `embed` counts [embed]-wide vectors (the residual stream, norms' outputs, projections
# back to embed), `qkv` the query/key/value projections and the attention's output before its
# projection, `mlp` the MLP's hidden units (each of gate and up when gated), `scores` the
# float32 [heads, keys] attention scores.
_KEPT: dict[Remat, dict[str, float]] = {
    Remat.NONE: {"embed": 9.5, "qkv": 7.0, "mlp": 1.0, "scores": 1.15},
    Remat.SAVE_DOTS: {"embed": 1.7, "qkv": 1.0, "mlp": 1.0, "scores": 0.0},
    Remat.FULL: {"embed": 1.0, "qkv": 0.0, "mlp": 0.0, "scores": 0.0},
}
# The backward pass of one layer holds these copies besides (recomputing what remat dropped,
# and the gradients of its activations).
_BACKWARD_LAYER: dict[Remat, dict[str, float]] = {
    Remat.NONE: {"embed": 1.5, "qkv": 0.5, "mlp": 0.5, "scores": 0.5},
    Remat.SAVE_DOTS: {"embed": 4.5, "qkv": 1.5, "mlp": 1.5, "scores": 1.5},
    Remat.FULL: {"embed": 4.5, "qkv": 1.5, "mlp": 1.5, "scores": 1.5},
}
_LOGIT_COPIES = 1.6     # float32 logits and their gradient, partly fused away
# Under FSDP: the embedding table gathered whole (for the lookup) with its gradient before the
# reduce-scatter, and the block in use gathered whole with its gradient.
_EMBEDDING_COPIES = 1.6
_GATHERED_LAYER_COPIES = 2.0

# Nominal accelerator where the device kind is unknown (fake CPU devices planning for a pod):
# only the ratio matters for ranking, ~2,000 FLOPs per byte sent (an H100's 989 TFLOP/s over
# 450 GB/s of NVLink; a TPU v5p's 459 TFLOP/s over its ICI links).
NOMINAL_PEAK_FLOPS = 400e12
NOMINAL_LINK_BYTES_PER_S = 200e9
# Bytes per second one device sends over its fastest links (NVLink, ICI), by device kind
# (substrings of `device.device_kind`, most specific first), from the vendors' spec sheets.
LINK_BYTES_PER_S: tuple[tuple[str, float], ...] = (
    ("H200", 450e9), ("H100", 450e9), ("A100", 300e9), ("TPU v6", 448e9), ("TPU v5p", 600e9),
    ("TPU v5 lite", 200e9), ("TPU v5e", 200e9), ("TPU v4", 270e9),
)


@dataclasses.dataclass(frozen=True)
class StateBytes:
  """What a mesh makes of the train state on one device, in bytes (exact: from the abstract
  state placed on the mesh)."""

  state: int         # params + optimizer state
  params: int
  trained: int       # the trained params (all of them, or a LoRA run's adapters)
  experts: int       # the params split over `expert` (a Mixture-of-Experts model's experts)
  layer: int         # one block's params (the stack's share of the device's params per layer)


@dataclasses.dataclass(frozen=True)
class Estimate:
  """One candidate's estimated costs per device and step."""

  memory: int                  # bytes per device
  parts: dict[str, int]        # memory by part: state, gradients, activations
  flops: float                 # FLOPs per device per step (model FLOPs + remat recompute)
  comm: float                  # bytes each device sends per step
  seconds: float               # flops / peak + comm / link bandwidth (no overlap assumed)


@dataclasses.dataclass(frozen=True)
class _Local:
  """A micro-batch's per-device shapes under a mesh."""

  rows: int         # sequences per device per micro-batch
  length: int       # positions per device (the sequence over `context`)
  layers: int       # layers per device (the stack over `stage`)
  heads: float      # query heads per device (over `tensor`)
  kv_heads: float
  mlp: float        # MLP units per device (each expert's, for a Mixture-of-Experts model)
  vocab: float
  itemsize: int     # the compute dtype's

  @property
  def tokens(self) -> int:
    return self.rows * self.length


def _local(config: Config, mesh: Mapping[str, int]) -> _Local:
  model, train = config.model, config.train
  batch_shards = mesh.get("data", 1) * mesh.get("fsdp", 1) * mesh.get("expert", 1)
  tensor = mesh.get("tensor", 1)
  mlp = model.mlp_dim
  if model.moe.enabled:  # the tokens each device's experts take, at their own width
    mlp = model.expert_mlp_dim * model.moe.experts_per_token
  return _Local(
      rows=max(1, train.batch_size // (train.grad_accum_steps * batch_shards)),
      length=max(1, train.seq_len // mesh.get("context", 1)),
      layers=max(1, model.num_layers // mesh.get("stage", 1)),
      heads=model.num_heads / tensor, kv_heads=model.kv_heads / tensor, mlp=mlp / tensor,
      vocab=model.vocab_size / tensor,
      itemsize=2 if train.compute_dtype is ComputeDtype.BFLOAT16 else 4)


def _score_keys(config: Config, length: int) -> float:
  """Keys per query whose float32 score XLA's dense attention holds at once (flash kernels:
  none); long causal sequences are read a block of queries at a time."""
  model = config.model
  if model.attention in (AttentionImpl.CUDNN, AttentionImpl.SPLASH):
    return 0.0
  if model.causal and length > QUERY_BLOCK:
    return (length + QUERY_BLOCK) / 2
  return float(length)


def _layer_bytes(config: Config, local: _Local, kept: Mapping[str, float]) -> float:
  """One layer's kept activations on one device, for `kept` copies of each."""
  model, c = config.model, local.itemsize
  mlp_in = 2 if model.gated_mlp else 1
  per_token = (kept["embed"] * model.embed_dim * c
               + kept["qkv"] * (2 * local.heads + 2 * local.kv_heads) * model.dim_per_head * c
               + kept["mlp"] * local.mlp * mlp_in * c
               + kept["scores"] * local.heads * _score_keys(config, local.length) * 4)
  return local.tokens * per_token


def activation_bytes(config: Config, mesh: Mapping[str, int], remat: Remat) -> float:
  """What one device holds of a micro-batch's activations at the backward pass's peak."""
  local = _local(config, mesh)
  layers = (local.layers * _layer_bytes(config, local, _KEPT[remat])
            + _layer_bytes(config, local, _BACKWARD_LAYER[remat]))
  chunk = config.train.loss_chunk_size
  positions = min(chunk, local.length) if chunk else local.length
  logits = _LOGIT_COPIES * local.rows * positions * local.vocab * 4
  return layers + logits


def memory_bytes(config: Config, mesh: Mapping[str, int], remat: Remat,
                 state: StateBytes) -> dict[str, int]:
  """Each part of one device's memory at the step's peak, in bytes."""
  fsdp = mesh.get("fsdp", 1)
  gathered = 0.0
  if fsdp > 1:
    model, local = config.model, _local(config, mesh)
    gathered = (_EMBEDDING_COPIES * local.vocab * model.embed_dim * 4
                + _GATHERED_LAYER_COPIES * state.layer * fsdp)
  return {"state": state.state, "gradients": int(state.trained + gathered),
          "activations": int(activation_bytes(config, mesh, remat))}


def step_flops(config: Config, remat: Remat, num_devices: int) -> float:
  """FLOPs per device per step: the model's (ModelConfig.flops_per_token: forward + backward)
  plus what the remat policy recomputes (a forward of every block under `full`, of the
  attention scores under `save_dots`)."""
  model, train = config.model, config.train
  tokens = train.batch_size * train.seq_len
  keys = sum(model.keys_per_query(train.seq_len, w) for w in model.layer_windows)
  attention = 4 * model.num_heads * model.dim_per_head * keys  # forward, per token
  blocks = 2 * model.num_layers * model.block_param_count() + attention
  extra = {Remat.NONE: 0.0, Remat.SAVE_DOTS: attention, Remat.FULL: blocks}[remat]
  return (model.flops_per_token(train.seq_len) + extra) * tokens / num_devices


def comm_bytes(config: Config, mesh: Mapping[str, int], remat: Remat, state: StateBytes) -> float:
  """Bytes each device sends per step over its collectives (ring algorithms)."""
  model, train = config.model, config.train
  local = _local(config, mesh)
  micro = train.grad_accum_steps
  fsdp, data, tensor = mesh.get("fsdp", 1), mesh.get("data", 1), mesh.get("tensor", 1)
  expert, context = mesh.get("expert", 1), mesh.get("context", 1)
  sent = 0.0
  # FSDP: each micro-batch gathers the weights forward and again backward, and reduce-scatters
  # their gradients.
  sent += micro * (2 * state.params + state.trained) * (fsdp - 1)
  # Data parallel (and `expert`, a batch axis outside the experts): one all-reduce of the
  # gradients per step.
  dense = state.trained - state.experts
  sent += 2 * dense * (data * expert - 1) / (data * expert)
  sent += 2 * state.experts * (data - 1) / data
  activation = local.tokens * model.embed_dim * local.itemsize  # [rows, length, embed]
  recompute = 1 if remat is Remat.FULL else 0
  if tensor > 1:  # Megatron: attention and MLP outputs forward, their inputs' grads backward
    per_layer = 2 * (2 + 2 + 2 * recompute) * activation * (tensor - 1) / tensor
    sent += micro * (local.layers * per_layer + 2 * 2 * activation * (tensor - 1) / tensor)
  if model.moe.enabled and expert > 1:  # tokens to their experts and back, forward and backward
    routed = activation * model.moe.experts_per_token * (expert - 1) / expert
    sent += micro * local.layers * 2 * (2 + recompute) * routed
  if context > 1:  # the K/V blocks around the ring, forward and backward
    kv = local.tokens * 2 * local.kv_heads * model.dim_per_head * local.itemsize
    sent += micro * local.layers * (2 + recompute) * kv * (context - 1)
  return sent


def device_rates(device_kind: str | None, compute_dtype: str) -> tuple[float, float]:
  """(peak FLOP/s, link bytes/s) of one device of `device_kind`, nominal where unknown."""
  peak = peak_flops_per_device(device_kind, compute_dtype) if device_kind else None
  link = next((bw for key, bw in LINK_BYTES_PER_S
               if device_kind and key.lower() in device_kind.lower()), None)
  return peak or NOMINAL_PEAK_FLOPS, link or NOMINAL_LINK_BYTES_PER_S


def estimate(config: Config, mesh: Mapping[str, int], remat: Remat, state: StateBytes, *,
             device_kind: str | None = None) -> Estimate:
  """The estimated costs of training `config` on `mesh` (axis -> size) under `remat`."""
  parts = memory_bytes(config, mesh, remat, state)
  flops = step_flops(config, remat, math.prod(mesh.values()))
  comm = comm_bytes(config, mesh, remat, state)
  peak, link = device_rates(device_kind, config.train.compute_dtype.value)
  return Estimate(memory=sum(parts.values()), parts=parts, flops=flops, comm=comm,
                  seconds=flops / peak + comm / link)
