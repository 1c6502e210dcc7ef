"""The mesh planner: `lmjax plan CONFIG --devices N` and `lmjax train CONFIG --set mesh=auto`.

For N devices it tries every mesh whose axes multiply to N (the axes of `planned_axes`; a
mesh whose sizes do not divide the model's heads, MLP, vocabulary or the batch is left out, by
the same checks that refuse it in training), under every remat policy; estimates what each costs
a device (lmjax.train.plan_cost: memory, FLOPs, communication, a step time); ranks them by
estimated step time; then compiles the most promising with XLA (lmjax.train.plan_compile:
on N fake CPU devices where N real ones are not at hand) to confirm their memory, in rounds
while none fits, each round's estimates scaled by what the compiles so far found (XLA's bytes
over the estimate, per remat policy). The recommendation is the fastest candidate XLA confirms
to fit the device, else the fastest expected to.

No device is needed to estimate: the abstract state is placed on an abstract mesh, so the
state's bytes per device are exact for any N.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Sequence

import jax
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

from lmjax.config import Config
from lmjax.errors import UserError
from lmjax.memory import device_memory, format_bytes, free_bytes, per_device_bytes
from lmjax.model import ModelConfig, Remat
from lmjax.model.trainable import trained_part
from lmjax.placement import check_params_fit_mesh
from lmjax.sharding import MESH_AXES, MeshRules, axis_rules
from lmjax.train.compile import compilable
from lmjax.train.multihost import broadcast_json, initialize_distributed, is_writer
from lmjax.train.optimizer import make_optimizer
from lmjax.train.plan_compile import candidate_config, compile_here
from lmjax.train.plan_cost import Estimate, StateBytes, estimate
from lmjax.train.setup import check_batch_fits_mesh, make_model, objective_of
from lmjax.train.state import boxed_state

log = logging.getLogger(__name__)

# The mesh axes the planner sizes (the others stay 1). `context` and `stage` join this tuple
# when context and pipeline parallelism land: their costs are in plan_cost already.
PLANNED_AXES = ("data", "fsdp", "tensor")
# How far below XLA's figure the estimate may be (tests/test_plan.py checks 15% on the tiny
# configs): candidates estimated within this of the device's memory are compiled too.
ESTIMATE_TOLERANCE = 0.15
# Rounds of compiles: while the fastest candidate expected to fit is not confirmed.
MAX_ROUNDS = 3


def planned_axes(model: ModelConfig) -> tuple[str, ...]:
  """The mesh axes the planner sizes for `model`: `expert` too for a Mixture-of-Experts one."""
  return PLANNED_AXES + (("expert",) if model.moe.enabled else ())


def factorizations(n: int, parts: int) -> list[tuple[int, ...]]:
  """Every ordered tuple of `parts` positive integers whose product is `n`."""
  if parts == 1:
    return [(n,)]
  return [(d, *rest) for d in range(1, n + 1) if n % d == 0
          for rest in factorizations(n // d, parts - 1)]


def candidate_meshes(n: int, axes: Sequence[str]) -> list[dict[str, int]]:
  """The meshes of `n` devices over `axes` (every other mesh axis 1), as {axis: size} in
  MESH_AXES order."""
  return [{a: dict(zip(axes, sizes)).get(a, 1) for a in MESH_AXES}
          for sizes in factorizations(n, len(axes))]


def describe_mesh(mesh: dict[str, int]) -> str:
  """'data=2 fsdp=4' (axes of size 1 left out; 'data=1' for one device)."""
  return " ".join(f"{a}={s}" for a, s in mesh.items() if s != 1) or "data=1"


@dataclasses.dataclass
class Row:
  """One candidate: a mesh, a remat policy, their estimate and, once compiled, XLA's bytes."""

  mesh: dict[str, int]
  remat: Remat
  estimate: Estimate
  compiled: int | None = None    # XLA's memory analysis, bytes per device
  problem: str | None = None     # why compiling refused it
  scale: float = 1.0             # XLA's bytes over the estimate, as compiling others found

  @property
  def memory(self) -> int:
    """XLA's bytes per device where compiled, else the estimate scaled by what compiling the
    others found."""
    return self.compiled if self.compiled is not None else int(self.estimate.memory * self.scale)

  def fits(self, device_memory: int | None) -> bool | None:
    if self.problem is not None:
      return False
    return None if device_memory is None else self.memory <= device_memory


@dataclasses.dataclass
class Plan:
  """The planner's answer: candidates ranked by estimated step time (fastest first)."""

  config: Config
  num_devices: int
  device_memory: int | None      # bytes per device (None: unknown, no verdict)
  rows: list[Row]
  skipped: dict[str, str]        # mesh -> why the model or batch does not divide over it
  recommended: Row | None

  def overrides(self, row: Row) -> list[str]:
    """The `--set` words that train on `row`: its planned axes, and any other the config sets
    otherwise."""
    axes = planned_axes(self.config.model)
    return [f"mesh.{a}={s}" for a, s in row.mesh.items()
            if a in axes or getattr(self.config.mesh, a) != s] + [f"model.remat={row.remat.value}"]

  def format(self, *, limit: int = 12) -> str:
    """The table: the `limit` fastest candidates (those that fit first) and every compiled
    one, the recommendation marked."""
    # Those that fit first (fastest first), then the others: what does not fit is context.
    ordered = sorted(self.rows, key=lambda r: r.fits(self.device_memory) is False)
    shown = [r for i, r in enumerate(ordered) if i < limit or r.compiled or r.problem]
    header = ("mesh", "remat", "est. memory", "compiled", "est. FLOPs", "est. comm", "est. step",
              "fits?")
    table = [header]
    for row in shown:
      fits = row.fits(self.device_memory)
      table.append((describe_mesh(row.mesh), row.remat.value, format_bytes(row.estimate.memory),
                    format_bytes(row.compiled) if row.compiled is not None else
                    ("refused" if row.problem else "-"),
                    f"{row.estimate.flops:.3g}", format_bytes(row.estimate.comm),
                    _seconds(row.estimate.seconds),
                    "?" if fits is None else ("yes" if fits else "no")))
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    lines = [f"{self.num_devices} devices, "
             + (f"{format_bytes(self.device_memory)} each" if self.device_memory else
                "device memory unknown (--device-memory GB for a verdict)")
             + f": {len(self.rows)} candidates (memory and FLOPs per device, comm bytes sent per "
               f"device per step)"]
    for n, cells in enumerate(table):
      mark = "  <- recommended" if n and shown[n - 1] is self.recommended else ""
      lines.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip() + mark)
    if len(self.rows) > len(shown):
      lines.append(f"({len(self.rows) - len(shown)} more candidates not shown)")
    if self.skipped:
      lines.append(f"{len(self.skipped)} meshes left out, their sizes not dividing the model or "
                   f"batch, e.g. {next(iter(self.skipped))}: {next(iter(self.skipped.values()))}")
    for row in shown:
      if row.problem:
        lines.append(f"{describe_mesh(row.mesh)} remat={row.remat.value} refused: {row.problem}")
    scaled = {r.remat.value: r.scale for r in self.rows if r.compiled is None and r.scale != 1}
    if scaled:
      lines.append("fits? of a candidate not compiled: its estimate times XLA's bytes over the "
                   "estimate where compiled (" + ", ".join(f"{k} x{v:.2f}"
                                                            for k, v in scaled.items()) + ")")
    if self.recommended is not None:
      r = self.recommended
      confirmed = (f"{format_bytes(r.compiled)} per device compiled" if r.compiled is not None
                   else f"{format_bytes(r.memory)} per device expected, not compiled")
      lines.append(f"recommended: {describe_mesh(r.mesh)} with model.remat={r.remat.value}, "
                   f"{confirmed}: --set {' '.join(self.overrides(r))}")
    return "\n".join(lines)


def _seconds(t: float) -> str:
  """0.0123 -> '12.3 ms'."""
  for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
    if t >= scale or unit == "us":
      return f"{t / scale:.3g} {unit}"
  return f"{t:.3g} s"


Compiler = Callable[[Config, Sequence[tuple[dict[str, int], Remat]]], list[dict]]


def state_bytes(config: Config, boxed, mesh: dict[str, int]) -> StateBytes:
  """What `mesh` makes of the train state on one device; UserError where it does not divide."""
  abstract_mesh = AbstractMesh(tuple(mesh[a] for a in MESH_AXES), MESH_AXES,
                               axis_types=(AxisType.Auto,) * len(MESH_AXES))
  placement = MeshRules(abstract_mesh, axis_rules(config.mesh))
  check_batch_fits_mesh(config, placement)
  abstract, _, logical = placement.place_abstract(boxed)
  check_params_fit_mesh(abstract.params, logical.params, config.model)
  specs = jax.tree.leaves(logical.params, is_leaf=lambda x: isinstance(x, PartitionSpec))
  experts = [leaf for leaf, spec in zip(jax.tree.leaves(abstract.params), specs)
             if "expert" in tuple(spec)]
  blocks = [v for k, v in abstract.params.items() if k == "layers" or k.startswith("layers_")]
  layers = max(1, config.model.num_layers // mesh["stage"])
  return StateBytes(state=per_device_bytes(abstract), params=per_device_bytes(abstract.params),
                    trained=per_device_bytes(trained_part(abstract.params, config.model)),
                    experts=per_device_bytes(experts), layer=per_device_bytes(blocks) // layers)


def check_devices(num_devices: object) -> int:
  """`num_devices` as a positive int; UserError otherwise."""
  if isinstance(num_devices, bool) or not isinstance(num_devices, int) or num_devices < 1:
    raise UserError(f"--devices {num_devices!r}: give the number of devices to plan for, a "
                    f"positive integer (e.g. --devices 8).")
  return num_devices


def estimate_candidates(config: Config, num_devices: int, *, device_kind: str | None = None
                        ) -> tuple[list[Row], dict[str, str]]:
  """Every candidate (mesh x remat) ranked by estimated step time, and the meshes left out
  (mesh -> why)."""
  config = compilable(config)
  objective_of(config)  # an objective the model cannot train is refused before anything else
  boxed = boxed_state(make_model(config), make_optimizer(config.train),
                      seq_len=config.train.seq_len)
  rows, skipped = [], {}
  for mesh in candidate_meshes(num_devices, planned_axes(config.model)):
    try:
      state = state_bytes(config, boxed, mesh)
    except UserError as e:
      skipped[describe_mesh(mesh)] = str(e)
      continue
    for remat in Remat:
      rows.append(Row(mesh, remat, estimate(config, mesh, remat, state,
                                            device_kind=device_kind)))
  rows.sort(key=lambda r: (r.estimate.seconds, r.estimate.memory))
  return rows, skipped


def plan(config: Config, num_devices: int, *, device_memory: int | None,
         compiler: Compiler | None, compile_top: int = 3, device_kind: str | None = None
         ) -> Plan:
  """Ranks the meshes of `num_devices` devices for `config`; compiles with `compiler` the
  `compile_top` fastest of those that may fit `device_memory` bytes per device, in rounds
  (MAX_ROUNDS) while the fastest expected to fit is not confirmed; recommends the fastest XLA
  confirms, else the fastest expected to fit. NothingFits (a UserError) when none may."""
  num_devices = check_devices(num_devices)
  if device_memory is not None and device_memory <= 0:
    raise UserError(f"--device-memory must be positive, got {device_memory / 2**30:g} GB.")
  rows, skipped = estimate_candidates(config, num_devices, device_kind=device_kind)
  if not rows:
    reasons = "\n  ".join(f"{mesh}: {why}" for mesh, why in list(skipped.items())[:4])
    raise UserError(f"no mesh of {num_devices} devices divides this model and batch:\n  "
                    f"{reasons}\nChange --devices, train.batch_size or the model's sizes.")
  recommended = None
  for round_ in range(MAX_ROUNDS if compiler is not None and compile_top > 0 else 0):
    _calibrate(rows)
    if device_memory is None and round_:  # no verdict to confirm: the fastest, once
      break
    fastest = next((r for r in rows if r.fits(device_memory)), None)
    if fastest is not None and fastest.compiled is not None:  # confirmed
      break
    batch = _hopeful(rows, device_memory)[:compile_top]
    if not batch:
      break
    log.info("compiling %d candidate(s) to confirm their memory: %s", len(batch),
             "; ".join(f"{describe_mesh(r.mesh)} remat={r.remat.value}" for r in batch))
    for row, result in zip(batch, compiler(config, [(r.mesh, r.remat) for r in batch])):
      row.compiled, row.problem = result.get("bytes"), result.get("error")
  _calibrate(rows)
  if device_memory is not None:  # the fastest that XLA confirms, else the fastest expected to
    recommended = next((r for r in rows if r.compiled is not None and r.fits(device_memory)),
                       None) or next((r for r in rows if r.fits(device_memory)), None)
  result = Plan(config, num_devices, device_memory, rows, skipped, recommended)
  if device_memory is not None and recommended is None:
    smallest = min(rows, key=lambda r: r.memory)
    raise NothingFits(result, (
        f"no mesh of {num_devices} devices fits {format_bytes(device_memory)} per device: the "
        f"smallest, {describe_mesh(smallest.mesh)} with model.remat={smallest.remat.value}, "
        f"needs {format_bytes(smallest.memory)}. Use more devices, or shrink what a device "
        f"holds: train.batch_size or train.seq_len (or split the batch into "
        f"train.grad_accum_steps micro-batches), train.loss_chunk_size, the model."))
  return result


def _calibrate(rows: list[Row]) -> None:
  """Scales the estimate of each row not compiled by what compiling found so far: the largest
  ratio of XLA's bytes to the estimate among compiled rows of its remat policy (else of any)."""
  ratios: dict[Remat | None, float] = {}
  for row in rows:
    if row.compiled is not None:
      ratio = row.compiled / max(row.estimate.memory, 1)
      for key in (row.remat, None):
        ratios[key] = max(ratios.get(key, 0.0), ratio)
  for row in rows:
    row.scale = ratios.get(row.remat, ratios.get(None, 1.0))


def _hopeful(rows: list[Row], device_memory: int | None) -> list[Row]:
  """The rows not compiled yet that may fit, fastest first: those expected to fit, then those
  within the estimate's tolerance of fitting."""
  if device_memory is None:
    return [r for r in rows if r.compiled is None and r.problem is None]
  untried = [r for r in rows if r.compiled is None and r.problem is None
             and r.memory <= device_memory * (1 + ESTIMATE_TOLERANCE)]
  return sorted(untried, key=lambda r: r.memory > device_memory)  # stable: fastest first


class NothingFits(UserError):
  """No candidate fits the device memory; `plan` holds the table that shows it."""

  def __init__(self, plan_: Plan, message: str):
    super().__init__(message)
    self.plan = plan_


def resolve_auto_mesh(config: Config) -> Config:
  """`config` on the mesh and remat policy the planner recommends for the devices present
  (`mesh: auto`): compiled on them, for the memory each has (an accelerator's allocator limit,
  else the host's available memory shared by its CPU devices). Every process of a multi-host
  job takes process 0's choice. The returned config names the sizes, so the run's config.yaml
  records the mesh it trained on."""
  initialize_distributed(config.distributed)
  devices = jax.devices()
  local = jax.local_devices()[0]
  memory = device_memory(local)
  if memory is None:
    free = free_bytes()
    memory = None if free is None else free[0]
  compiler = lambda cfg, candidates: compile_here(cfg, candidates, devices)
  try:
    result = plan(config, len(devices), device_memory=memory, compiler=compiler,
                  compile_top=1, device_kind=local.device_kind)
  except NothingFits as e:
    raise UserError(f"mesh=auto: {e}\n{e.plan.format()}") from None
  choice = result.recommended or result.rows[0]
  if is_writer():
    log.info("mesh=auto: %s\n%s", describe_mesh(choice.mesh), result.format(limit=5))
  picked = broadcast_json({"mesh": choice.mesh, "remat": choice.remat.value})
  return candidate_config(config, picked["mesh"], Remat(picked["remat"]),
                          distributed=config.distributed)
