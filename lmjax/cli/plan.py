"""`lmjax plan CONFIG --devices N [--device-memory GB] [--compile K]`: the mesh planner's table
(lmjax.train.plan) for N devices, their memory from the flag or this machine's accelerator, the
candidates compiled on N fake CPU devices (lmjax.train.plan_compile)."""

from __future__ import annotations

import jax

from lmjax.config import load_config
from lmjax.errors import UserError
from lmjax.memory import device_memory
from lmjax.train import plan
from lmjax.train.plan_compile import compile_candidates


def run(args) -> int:
  """`lmjax plan`: the table on stdout; UserError (exit 2) for a bad flag or when nothing fits
  (the table printed first)."""
  num_devices = _whole(args.devices, "--devices", "the number of devices to plan for, e.g. "
                       "--devices 64", minimum=1)
  compile_top = _whole(args.compile_top, "--compile", "how many candidates to compile, e.g. "
                       "--compile 3 (0: estimates only)", minimum=0)
  memory = None
  if args.device_memory is not None:
    try:
      gib = float(args.device_memory)
    except ValueError:
      gib = float("nan")
    if not 0 < gib < float("inf"):
      raise UserError(f"--device-memory {args.device_memory!r}: give one device's memory in "
                      f"GiB, a positive number (e.g. --device-memory 80 for an H100).")
    memory = int(gib * 2**30)
  config = load_config(args.config, args.overrides, auto_mesh=lambda c: c)  # replaced anyway
  device = jax.devices()[0]
  kind = device.device_kind if device.platform != "cpu" else None
  if memory is None and kind is not None:
    memory = device_memory(device)
  compiler = lambda cfg, candidates: compile_candidates(cfg, candidates, num_devices)
  try:
    result = plan.plan(config, num_devices, device_memory=memory, compiler=compiler,
                       compile_top=compile_top, device_kind=kind)
  except plan.NothingFits as e:
    print(e.plan.format(), flush=True)
    raise
  print(result.format())
  return 0


def _whole(text: str, flag: str, what: str, *, minimum: int) -> int:
  """`text` as an int of at least `minimum`; UserError naming `flag` and `what` it takes."""
  try:
    value = int(text)
  except ValueError:
    value = None
  if value is None or value < minimum:
    raise UserError(f"{flag} {text!r}: give {what}.")
  return value
