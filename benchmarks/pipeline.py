"""Pipeline parallelism on 8 fake CPU devices: bubble fraction, per-device memory and FLOPs of the
compiled train step for a few (stages, micro-batches), beside data parallelism and FSDP (by hand).

    .venv/bin/python benchmarks/pipeline.py [--layers 8] [--width 512] [--seq 256] [--batch 64]

Nothing is allocated: each step is compiled as `lmjax train --compile-only` does (XLA's memory
and cost analyses of the partitioned program). The model is a Llama of `--layers` x `--width`
(vocabulary 8,192, float32, remat save_dots). Columns:

  bubble     (S-1)/(M+S-1): the share of each stage's time spent on no micro-batch;
  state      params + Adam moments per device;
  peak       arguments + outputs - aliased + temporaries (the compile-only total);
  layer work each device's share of the layers' FLOPs relative to a perfect split over the
             8 devices: M+S-1 iterations each running L/S layers on B/(M x data) rows, over
             L x B / 8 (1.00 for data parallelism); the analytic figure, since XLA's cost
             analysis counts a loop body once;
  permutes   collective-permutes in the compiled step: the stage buffer's shifts.
"""

from __future__ import annotations

import argparse
import os
import re

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

from lmjax.config import load_config  # noqa: E402
from lmjax.sharding import mesh_rules  # noqa: E402
from lmjax.memory import per_device_bytes  # noqa: E402
from lmjax.train.compile import abstract_batch  # noqa: E402
from lmjax.train.setup import setup_step  # noqa: E402

# (label, mesh overrides, micro-batches)
LAYOUTS = [
    ("data=8", dict(data=8), 1),
    ("fsdp=8", dict(data=1, fsdp=8), 1),
    ("stage=2 data=4", dict(data=4, stage=2), 2),
    ("stage=2 data=4", dict(data=4, stage=2), 8),
    ("stage=4 data=2", dict(data=2, stage=4), 4),
    ("stage=4 data=2", dict(data=2, stage=4), 16),
    ("stage=8", dict(data=1, stage=8), 8),
    ("stage=8", dict(data=1, stage=8), 32),
    ("stage=4 fsdp=2", dict(data=1, fsdp=2, stage=4), 16),
    ("data=4 fsdp=2", dict(data=4, fsdp=2), 1),
]


def overrides(args, mesh: dict[str, int], micro: int) -> list[str]:
  return [f"model.num_layers={args.layers}", f"model.embed_dim={args.width}",
          f"model.num_heads={args.width // 64}", f"model.num_kv_heads={args.width // 128}",
          f"model.mlp_dim={3 * args.width}", "model.vocab_size=8192",
          f"model.max_seq_len={args.seq}", f"train.seq_len={args.seq}",
          f"train.batch_size={args.batch}", f"train.microbatches={micro}",
          *[f"mesh.{k}={v}" for k, v in mesh.items()]]


def compile_step(config) -> tuple[float, float, int]:
  """MiB per device of the compiled, partitioned step (its state, its peak as `lmjax train
  --compile-only` counts it) and how many collective-permutes it holds."""
  placement = mesh_rules(config.mesh)
  setup = setup_step(config, placement)
  batch = abstract_batch(config, placement)
  compiled = setup.step_fn.lower(setup.abstract_state, batch, setup.hyper).compile()
  m = compiled.memory_analysis()
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes + m.generated_code_size_in_bytes)
  state = per_device_bytes(setup.abstract_state)
  permutes = len(re.findall(r"collective-permute(?:-start)?\(", compiled.as_text()))
  return state / 2**20, peak / 2**20, permutes


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--layers", type=int, default=8)
  parser.add_argument("--width", type=int, default=512)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--layouts", type=int, nargs="*", help="indices into LAYOUTS (all)")
  args = parser.parse_args()
  assert jax.device_count() == 8, jax.devices()
  print(f"Llama {args.layers} layers x {args.width}, sequence {args.seq}, batch {args.batch}, "
        f"8 fake CPU devices")
  print("| mesh | M | bubble | state / device | peak / device | layer work | permutes |")
  print("|---|---|---|---|---|---|---|")
  for i, (label, mesh, micro) in enumerate(LAYOUTS):
    if args.layouts and i not in args.layouts:
      continue
    config = load_config("tiny-llama", overrides(args, mesh, micro))
    state, peak, permutes = compile_step(config)
    stages, data = mesh.get("stage", 1), mesh.get("data", 1) * mesh.get("fsdp", 1)
    bubble = (stages - 1) / (micro + stages - 1)
    work = (micro + stages - 1) * (args.layers / stages) * (args.batch / (micro * data)) / (
        args.layers * args.batch / 8)
    print(f"| {label} | {micro if stages > 1 else '-'} | {bubble:.1%} | {state:,.1f} MiB | "
          f"{peak:,.1f} MiB | {work:.2f} | {permutes} |", flush=True)


if __name__ == "__main__":
  main()
