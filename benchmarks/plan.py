"""The mesh planner on shipped large configs at pod sizes: does its recommendation compile, and
how close is its estimate to XLA's memory analysis? (By hand; figures in docs/performance.md.)

    .venv/bin/python benchmarks/plan.py [--devices 64 128 256] [--device-memory 80]
        [--cases llama-8b mixtral-8x7b]

Each case is planned (`lmjax plan`'s code) for each device count on fake CPU devices (this
process starts with the largest count; a plan for fewer uses the first N), compiling the best
candidate that may fit; one row per plan: the recommendation, its estimated and compiled
memory per device, the estimated step, and the wall time of planning + compiling.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_MAX_DEVICES = max([int(a) for a in sys.argv[sys.argv.index("--devices") + 1:]
                    if a.isdigit()] if "--devices" in sys.argv else [256])
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={_MAX_DEVICES}")

from lmjax.config import load_config  # noqa: E402 -- after XLA_FLAGS: JAX reads them once
from lmjax.errors import UserError  # noqa: E402
from lmjax.memory import format_bytes  # noqa: E402
from lmjax.train import plan  # noqa: E402
from lmjax.train.plan_compile import compile_candidates  # noqa: E402

# Llama 3 8B's shape (32 x 4096, 32 query / 8 key-value heads, SwiGLU 14,336, 128,256 tokens,
# untied), on llama-1b.yaml's schedule: bfloat16 compute, batch 256 x 4,096.
LLAMA_8B = ["model.num_layers=32", "model.embed_dim=4096", "model.num_heads=32",
            "model.num_kv_heads=8", "model.mlp_dim=14336", "model.vocab_size=128256",
            "model.tie_embeddings=false", "model.max_seq_len=8192", "train.seq_len=4096"]
CASES = {
    "llama-8b": ("llama-1b", LLAMA_8B),
    "llama-1b": ("llama-1b", []),
    "mixtral-8x7b": ("mixtral-8x7b", []),
    "qwen3-30b-a3b": ("qwen3-30b-a3b", []),
}


def plan_case(name: str, devices: int, memory_gib: float, compile_top: int) -> dict:
  config_name, overrides = CASES[name]
  config = load_config(config_name, overrides)
  start = time.perf_counter()
  try:
    result = plan.plan(config, devices, device_memory=int(memory_gib * 2**30),
                       compiler=lambda cfg, c: compile_candidates(cfg, c, devices),
                       compile_top=compile_top)
  except UserError as e:
    return {"case": name, "devices": devices, "error": str(e).splitlines()[0],
            "seconds": time.perf_counter() - start}
  row = result.recommended
  return {"case": name, "devices": devices, "candidates": len(result.rows),
          "mesh": plan.describe_mesh(row.mesh), "remat": row.remat.value,
          "estimated": row.estimate.memory, "compiled": row.compiled,
          "step": row.estimate.seconds, "seconds": time.perf_counter() - start}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, nargs="+", default=[64, 128, 256])
  parser.add_argument("--device-memory", type=float, default=80.0, help="GiB (default: H100)")
  parser.add_argument("--cases", nargs="+", default=["llama-8b", "mixtral-8x7b"],
                      choices=sorted(CASES))
  parser.add_argument("--compile", type=int, default=1, dest="compile_top")
  args = parser.parse_args()
  print("| config | devices | candidates | recommended | remat | estimated | compiled (XLA) "
        "| est. / XLA | est. step | plan + compile |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for name in args.cases:
    for devices in args.devices:
      r = plan_case(name, devices, args.device_memory, args.compile_top)
      if "error" in r:
        print(f"| {name} | {devices} | | {r['error']} | | | | | | {r['seconds']:.0f} s |",
              flush=True)
        continue
      compiled = format_bytes(r["compiled"]) if r["compiled"] else "-"
      ratio = f"{r['estimated'] / r['compiled']:.2f}" if r["compiled"] else "-"
      print(f"| {name} | {devices} | {r['candidates']} | {r['mesh']} | {r['remat']} | "
            f"{format_bytes(r['estimated'])} | {compiled} | {ratio} | {r['step']:.2f} s | "
            f"{r['seconds']:.0f} s |", flush=True)


if __name__ == "__main__":
  main()
