"""The longest sequence a train step fits in a fixed memory per device, with and without
context parallelism (compile-only, run by hand).

    .venv/bin/python benchmarks/context_parallel.py [--budget-gib 4] [--step 4096]

On 8 fake CPU devices (the script sets XLA_FLAGS itself when JAX has not started), the train
step of a small Llama-style model is compiled without allocating anything (`lmjax train
--compile-only`'s path: XLA's memory analysis of the partitioned step) for one sequence per
data-parallel replica on each mesh: data=8 (context=1, the sequence whole on every device),
data=2 x context=4 and context=8, each context mesh with ring attention and with all-gathered
K/V. For each, the sequence length doubles from `--start` until the step no longer fits in
`--budget-gib` per device, then bisects to a multiple of `--step`. Prints one table row per
mesh: the longest length that fits and its memory, and the memory at the length context=1
reaches.
"""

from __future__ import annotations

import argparse
import os
import sys

if "jax" not in sys.modules:  # 8 fake devices; LLVM's optimisations off (compiles 2x faster,
  # and the memory analysis is XLA's buffer assignment, which they do not touch)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                             " --xla_force_host_platform_device_count=8")

from lmjax.config import load_config  # noqa: E402
from lmjax.train.compile import compile_train_step  # noqa: E402

# A Llama-style model small enough that activations, not weights, fill the budget: grouped
# K/V, the vocabulary projected 1,024 positions at a time (train.loss_chunk_size), remat of
# everything but the matmuls (the default).
MODEL = ["model.preset=tiny-llama", "model.embed_dim=512", "model.num_heads=8",
         "model.num_kv_heads=4", "model.mlp_dim=1536", "model.num_layers=4",
         "model.vocab_size=8192", "train.loss_chunk_size=1024"]
MESHES = {  # name -> (mesh overrides, data-parallel replicas = sequences per step)
    "data=8": (["mesh.data=8"], 8),
    "data=2 x context=4, ring": (["mesh.data=2", "mesh.context=4"], 2),
    "data=2 x context=4, allgather": (["mesh.data=2", "mesh.context=4",
                                       "model.context_parallel=allgather"], 2),
    "context=8, ring": (["mesh.data=1", "mesh.context=8"], 1),
    "context=8, allgather": (["mesh.data=1", "mesh.context=8",
                              "model.context_parallel=allgather"], 1),
}


def gib_per_device(mesh: list[str], sequences: int, seq_len: int) -> float:
  config = load_config("tiny-llama", MODEL + mesh + [
      f"model.max_seq_len={seq_len}", f"train.seq_len={seq_len}", f"train.batch_size={sequences}"])
  return compile_train_step(config).bytes_per_device / 2**30


def longest(mesh: list[str], sequences: int, *, budget: float, start: int, step: int,
            limit: int) -> tuple[int, float]:
  """(the longest multiple of `step` that fits `budget` GiB per device, its GiB)."""
  fits, fits_gib, over = 0, float("nan"), None
  length = start
  while length <= limit:
    gib = gib_per_device(mesh, sequences, length)
    print(f"  {' '.join(mesh)}: {length:,} tokens -> {gib:.2f} GiB", file=sys.stderr, flush=True)
    if gib > budget:
      over = length
      break
    fits, fits_gib, length = length, gib, length * 2
  while over is not None and over - fits > step:
    middle = (fits + over) // 2 // step * step
    gib = gib_per_device(mesh, sequences, middle)
    print(f"  {' '.join(mesh)}: {middle:,} tokens -> {gib:.2f} GiB", file=sys.stderr, flush=True)
    if gib > budget:
      over = middle
    else:
      fits, fits_gib = middle, gib
  return fits, fits_gib


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--budget-gib", type=float, default=4.0)
  parser.add_argument("--start", type=int, default=4096)
  parser.add_argument("--step", type=int, default=4096)
  parser.add_argument("--limit", type=int, default=1 << 20)
  args = parser.parse_args()
  rows, baseline = [], None
  for name, (mesh, sequences) in MESHES.items():
    length, gib = longest(mesh, sequences, budget=args.budget_gib, start=args.start,
                          step=args.step, limit=args.limit)
    baseline = baseline or length
    at_baseline = gib_per_device(mesh, sequences, baseline)
    rows.append((name, length, gib, at_baseline))
  print(f"\nlongest sequence whose train step fits {args.budget_gib:g} GiB per device "
        f"(8 devices, one sequence per data-parallel replica; compile-only):")
  print(f"{'mesh':<32}{'longest':>10}{'GiB there':>11}{'GiB at ' + format(baseline, ','):>18}")
  for name, length, gib, at_baseline in rows:
    print(f"{name:<32}{length:>10,}{gib:>11.2f}{at_baseline:>18.2f}")


if __name__ == "__main__":
  main()
