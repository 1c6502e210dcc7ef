"""LoRA against full fine-tuning on the same model: memory per device and step time (by hand).

    .venv/bin/python benchmarks/lora_memory.py [--preset llama-1b] [--rank 16]
        [--time-width 256] [--time-layers 4] [--steps 10]

Memory: the train step of `--preset` compiled for one device without allocating anything
(`lmjax train --compile-only`'s report: XLA's memory analysis), full fine-tuning against LoRA
of `--rank` on every projection; the difference is the base's gradients and Adam moments, which
LoRA never holds. Time: median step time of a smaller Llama (`--time-width`, `--time-layers`)
trained for real, both ways, on synthetic batches.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from lmjax.config import load_config
from lmjax.sharding import mesh_rules
from lmjax.train.compile import compile_train_step
from lmjax.train.setup import setup_step
from lmjax.train.state import create_train_state


def memory(preset: str, rank: int, seq: int, batch: int) -> dict[str, float]:
  """GiB per device of the compiled step, full and LoRA."""
  out = {}
  for name, extra in (("full", []), ("lora", [f"model.lora.rank={rank}"])):
    config = load_config("tiny-llama", [f"model.preset={preset}", f"train.seq_len={seq}",
                                        f"train.batch_size={batch}", *extra])
    report = compile_train_step(config)
    out[name] = report.bytes_per_device / 2**30 if report.bytes_per_device else float("nan")
    out[f"{name}_arguments"] = report.memory["argument"] / 2**30 if report.memory else float("nan")
  return out


def step_time(width: int, layers: int, rank: int, steps: int, seq: int, batch: int
              ) -> dict[str, float]:
  """Median seconds per optimizer step, full and LoRA, on the same synthetic batches."""
  out = {}
  rng = np.random.default_rng(0)
  for name, extra in (("full", []), ("lora", [f"model.lora.rank={rank}"])):
    config = load_config("tiny-llama", [
        f"model.embed_dim={width}", f"model.mlp_dim={4 * width}", f"model.num_layers={layers}",
        "model.num_heads=8", "model.num_kv_heads=4", "model.vocab_size=8192",
        f"model.max_seq_len={seq}", f"train.seq_len={seq}", f"train.batch_size={batch}", *extra])
    placement = mesh_rules(config.mesh)
    setup = setup_step(config, placement)
    state = create_train_state(setup.model, setup.tx, placement, seed=0, seq_len=seq)
    ids = rng.integers(0, 8192, (batch, seq), dtype=np.int32)
    batch_arrays = {"input_ids": ids, "segment_ids": np.ones_like(ids),
                    "positions": np.tile(np.arange(seq, dtype=np.int32), (batch, 1))}
    placed = {k: jax.device_put(v, placement.batch_sharding()) for k, v in batch_arrays.items()}
    state, metrics = setup.step(state, placed)  # compile
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      state, metrics = setup.step(state, placed)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    out[name] = statistics.median(times)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="llama-1b")
  parser.add_argument("--rank", type=int, default=16)
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--time-width", type=int, default=256)
  parser.add_argument("--time-layers", type=int, default=4)
  parser.add_argument("--time-seq", type=int, default=128)
  parser.add_argument("--time-batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  device = jax.devices()[0].device_kind
  mem = memory(args.preset, args.rank, args.seq, args.batch)
  print(f"{args.preset}, batch {args.batch} x {args.seq}, one {device}: per device "
        f"{mem['full']:.2f} GiB full fine-tuning (arguments {mem['full_arguments']:.2f}), "
        f"{mem['lora']:.2f} GiB LoRA rank {args.rank} (arguments {mem['lora_arguments']:.2f})")
  times = step_time(args.time_width, args.time_layers, args.rank, args.steps, args.time_seq,
                    args.time_batch)
  print(f"step time, width {args.time_width} x {args.time_layers} layers, batch "
        f"{args.time_batch} x {args.time_seq}: full {times['full'] * 1e3:.0f} ms, LoRA "
        f"{times['lora'] * 1e3:.0f} ms ({times['full'] / times['lora']:.2f}x)")


if __name__ == "__main__":
  main()
