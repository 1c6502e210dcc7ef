"""`lmjax train CONFIG --compile-only`: what a train step costs each device, before hiring a pod.

The step is lowered with abstract inputs (ShapeDtypeStructs carrying their shardings), so
nothing is allocated, no data is read and no run directory is written. XLA's memory analysis
of the compiled, partitioned step gives each device's bytes; its cost analysis gives the FLOPs
each device executes, shown beside the model FLOPs from `ModelConfig.flops_per_token`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax

from lmjax.config import Config
from lmjax.data.spec import PER_EXAMPLE, batch_fields
from lmjax.memory import device_memory, format_bytes
from lmjax.model import Head
from lmjax.sharding import MeshRules, mesh_rules
from lmjax.train.multihost import initialize_distributed
from lmjax.train.setup import objective_of, setup_step
from lmjax.train.step import batch_shardings


@dataclasses.dataclass(frozen=True)
class CompileReport:
  mesh: dict[str, int]                 # axis name -> size
  device_kind: str
  memory: dict[str, int] | None        # per device, bytes, from XLA (None: backend has none)
  device_memory: int | None            # what one device has, where the backend says
  xla_flops_per_device: float | None   # per step, from XLA's cost analysis
  model_flops_per_step: float          # flops_per_token x tokens, over all devices
  tokens_per_step: int
  scanned_layers: bool                 # XLA's count then covers one layer of the scanned stack
  pipeline: str | None = None          # mesh.stage > 1: stages, micro-batches, bubble fraction

  @property
  def num_devices(self) -> int:
    return math.prod(self.mesh.values())

  @property
  def bytes_per_device(self) -> int | None:
    """Peak estimate: arguments + outputs - donated (aliased) + temporaries + generated code."""
    if self.memory is None:
      return None
    m = self.memory
    return m["argument"] + m["output"] - m["alias"] + m["temp"] + m["generated_code"]

  def format(self) -> str:
    mesh = " x ".join(f"{k}={v}" for k, v in self.mesh.items())
    lines = [f"train step compiled for mesh {mesh} ({self.num_devices} x {self.device_kind}), "
             f"{self.tokens_per_step:,} tokens per step"]
    if self.pipeline:
      lines.append(self.pipeline)
    if self.memory is None:
      lines.append("memory per device: not reported by this backend")
    else:
      lines.append("memory per device (XLA memory analysis):")
      rows = [("arguments", "argument", "params, optimizer state and batch shards"),
              ("outputs", "output", "the new state and metrics"),
              ("aliased", "alias", "outputs written over donated arguments, counted once"),
              ("temporaries", "temp", "activations, gradients, collectives' buffers"),
              ("generated code", "generated_code", "")]
      for label, key, note in rows:
        lines.append(f"  {label:<15}{format_bytes(self.memory[key]):>12}  {note}".rstrip())
      lines.append(f"  {'total':<15}{format_bytes(self.bytes_per_device):>12}  "
                   f"arguments + outputs - aliased + temporaries + code")
      if self.device_memory:
        verdict = "fits" if self.bytes_per_device <= self.device_memory else "DOES NOT FIT"
        lines.append(f"  device memory  {format_bytes(self.device_memory):>12}  {verdict}")
    lines.append("FLOPs per step:")
    if self.xla_flops_per_device is None:
      lines.append("  XLA cost analysis: not reported by this backend")
    else:
      lines.append(f"  XLA cost analysis  {self.xla_flops_per_device:.4g} per device, "
                   f"{self.xla_flops_per_device * self.num_devices:.4g} on all devices")
      if self.scanned_layers:
        lines.append("                     (XLA counts a loop body once: with model.scan_layers "
                     "this covers one layer of the stack)")
    lines.append(f"  model (config)     {self.model_flops_per_step:.4g} "
                 f"(flops_per_token x tokens; forward + backward)")
    return "\n".join(lines)


def abstract_batch(config: Config, placement: MeshRules) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch as ShapeDtypeStructs with their shardings: [batch_size, seq_len] each
  ([batch_size] for one value per row)."""
  rows, tokens = config.train.batch_size, config.train.seq_len
  objective = objective_of(config)
  shardings = batch_shardings(placement, objective)
  return {name: jax.ShapeDtypeStruct((rows,) if name in PER_EXAMPLE else (rows, tokens), dtype,
                                     sharding=shardings[name])
          for name, dtype in batch_fields(objective).items()}


def compilable(config: Config) -> Config:
  """`config` as compiling without data sees it: a classifier whose labels come from the data
  gets two (two labels weigh as many as any few)."""
  if config.model.head is Head.CLASSIFICATION and config.model.num_labels is None:
    return dataclasses.replace(config, model=dataclasses.replace(config.model, num_labels=2))
  return config


def compile_train_step(config: Config, devices: Sequence[jax.Device] | None = None
                       ) -> CompileReport:
  """Compiles the configured train step on the configured mesh (over all devices, or
  `devices`) and reads XLA's analyses."""
  if devices is None:
    initialize_distributed(config.distributed)
  config = compilable(config)
  placement = mesh_rules(config.mesh, devices)
  setup = setup_step(config, placement)
  reference = (setup.abstract_state.params,) if setup.frozen_reference else ()  # dpo's copy
  lowered = setup.step_fn.lower(setup.abstract_state, abstract_batch(config, placement),
                               setup.hyper, *reference)
  compiled = lowered.compile()
  tokens = config.train.batch_size * config.train.seq_len
  device = placement.mesh.devices.flat[0]
  return CompileReport(
      mesh=dict(placement.mesh.shape), device_kind=device.device_kind,
      memory=_memory(compiled.memory_analysis()), device_memory=device_memory(device),
      xla_flops_per_device=_flops(compiled.cost_analysis()),
      model_flops_per_step=config.model.flops_per_token(config.train.seq_len) * tokens,
      tokens_per_step=tokens, scanned_layers=config.model.scan_layers,
      pipeline=None if setup.model.pipeline is None else setup.model.pipeline.describe())


def _memory(stats: Any) -> dict[str, int] | None:
  if stats is None:
    return None
  names = ("argument", "output", "alias", "temp", "generated_code")
  return {n: int(getattr(stats, f"{n}_size_in_bytes", 0) or 0) for n in names}


def _flops(cost: Any) -> float | None:
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])
