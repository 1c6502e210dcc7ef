"""Compiling the planner's candidates to read XLA's memory analysis of each: on devices at hand,
or on N fake CPU devices in a child process.

XLA fixes the number of CPU devices when JAX starts (`--xla_force_host_platform_device_count`
in XLA_FLAGS), so a process that has fewer than the N a plan is for compiles its candidates in
a child started with that flag (`python -m lmjax.train.plan_compile REQUEST.json`), which prints
one JSON result per candidate on stdout. `lmjax plan` sets the flag for its own process before
JAX starts and so compiles in-process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
from typing import Sequence

import jax

from lmjax.config import Config, DistributedConfig, from_dict
from lmjax.errors import UserError
from lmjax.model import Remat
from lmjax.sharding import MeshConfig
from lmjax.train.compile import compile_train_step

Candidate = tuple[dict[str, int], Remat]  # (mesh axis -> size, remat policy)

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def cpu_device_flags(flags: str, num_devices: int) -> str:
  """XLA_FLAGS `flags` with the fake CPU device count set to `num_devices`."""
  kept = re.sub(rf"\s*{_DEVICE_COUNT_FLAG}=\S*", "", flags or "").strip()
  return f"{kept} {_DEVICE_COUNT_FLAG}={num_devices}".strip()


def candidate_config(config: Config, mesh: dict[str, int], remat: Remat, *,
                     distributed: DistributedConfig = DistributedConfig()) -> Config:
  """`config` on `mesh` (axis -> size; the mesh's rules kept) under `remat`, by default as one
  process compiles it (no distributed job)."""
  return dataclasses.replace(
      config, mesh=dataclasses.replace(MeshConfig(rules=config.mesh.rules), **mesh),
      model=dataclasses.replace(config.model, remat=remat), distributed=distributed)


def compile_here(config: Config, candidates: Sequence[Candidate],
                 devices: Sequence[jax.Device]) -> list[dict]:
  """Each candidate compiled on `devices`: {"bytes": XLA's bytes per device} or {"error": why}."""
  results = []
  for mesh, remat in candidates:
    try:
      report = compile_train_step(candidate_config(config, mesh, remat), devices)
    except UserError as e:
      results.append({"error": str(e)})
      continue
    results.append({"bytes": report.bytes_per_device} if report.bytes_per_device is not None
                   else {"error": "this backend reports no memory analysis"})
  return results


def cpu_devices(num_devices: int) -> list[jax.Device] | None:
  """`num_devices` CPU devices of this process, or None where it has fewer."""
  try:
    devices = jax.devices("cpu")
  except RuntimeError:  # JAX_PLATFORMS without cpu
    return None
  return list(devices[:num_devices]) if len(devices) >= num_devices else None


def compile_candidates(config: Config, candidates: Sequence[Candidate], num_devices: int
                       ) -> list[dict]:
  """Each candidate compiled on `num_devices` CPU devices: this process's where it has enough,
  else a child's."""
  devices = cpu_devices(num_devices)
  if devices is not None:
    return compile_here(config, candidates, devices)
  return compile_in_child([(config, mesh, remat) for mesh, remat in candidates], num_devices)


def compile_in_child(jobs: Sequence[tuple[Config, dict[str, int], Remat]], num_devices: int
                     ) -> list[dict]:
  """Each (config, mesh, remat) compiled in one child process with `num_devices` fake CPU
  devices."""
  request = [{"config": config.to_dict(), "mesh": mesh, "remat": remat.value}
             for config, mesh, remat in jobs]
  package_root = str(pathlib.Path(__file__).resolve().parents[2])
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=cpu_device_flags(os.environ.get("XLA_FLAGS", ""), num_devices),
             PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                        if p))
  with tempfile.TemporaryDirectory(prefix="lmjax-plan-") as tmp:
    path = pathlib.Path(tmp) / "request.json"
    path.write_text(json.dumps(request), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "lmjax.train.plan_compile", str(path)],
                          env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          check=False)
  if done.returncode != 0:
    raise RuntimeError(f"compiling the candidates on {num_devices} fake CPU devices failed "
                       f"(exit {done.returncode}):\n{done.stderr[-4000:]}")
  return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _main(request_path: str) -> None:
  devices = jax.devices("cpu")
  for job in json.loads(pathlib.Path(request_path).read_text(encoding="utf-8")):
    config = from_dict(job["config"], resolved=True)
    [result] = compile_here(config, [(job["mesh"], Remat(job["remat"]))], devices)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
  _main(sys.argv[1])
