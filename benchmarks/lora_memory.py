"""Full fine-tuning, LoRA and QLoRA on the same model: memory per device and step time (by hand).

    .venv/bin/python benchmarks/lora_memory.py [--preset llama-1b] [--rank 16]
        [--time-width 256] [--time-layers 4] [--steps 10] [--group-size 64]

Memory: the train step of `--preset` compiled for one device without allocating anything
(`lmjax train --compile-only`'s report: XLA's memory analysis), full fine-tuning against LoRA
of `--rank` on every projection (the difference is the base's gradients and Adam moments, which
LoRA never holds) and against QLoRA (the same adapters on a base whose projections are int8, or
int4 in groups of `--group-size`: `model.quantization`), with the bytes of the frozen base the
state holds. Time: median step time of a smaller Llama (`--time-width`, `--time-layers`) trained
for real, each way, on synthetic batches, and the tokens per second that makes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from lmjax.config import load_config
from lmjax.model.trainable import split
from lmjax.sharding import mesh_rules
from lmjax.train.compile import compile_train_step
from lmjax.train.setup import setup_step
from lmjax.train.state import create_train_state


def variants(rank: int, group_size: int) -> dict[str, list[str]]:
  """The ways to fine-tune, by name: `--set` keys on top of the model's. `-bf16`: the frozen
  params that stay float (embeddings, norms, or LoRA's whole base) in bfloat16."""
  lora = [f"model.lora.rank={rank}"]
  int4 = [*lora, "model.quantization.scheme=int4", f"model.quantization.group_size={group_size}"]
  half = ["model.lora.base_dtype=bfloat16"]
  return {"full": [], "lora": lora, "lora-bf16": [*lora, *half],
          "qlora-int8": [*lora, "model.quantization.scheme=int8"], "qlora-int4": int4,
          "qlora-int4-bf16": [*int4, *half]}


def base_bytes(config) -> int:
  """Bytes of the params a run does not train (every param for full fine-tuning), int4 counted
  packed, two a byte, as XLA's memory analysis counts them (jax on CPU spends a byte on each)."""
  setup = setup_step(config, mesh_rules(config.mesh))
  params = setup.abstract_state.params
  frozen = split(params, config.model)[1] if config.model.lora.enabled else params
  return sum(int(np.prod(x.shape)) * jax.dtypes.itemsize_bits(x.dtype) // 8
             for x in jax.tree.leaves(frozen))


def memory(preset: str, rank: int, seq: int, batch: int, group_size: int) -> dict[str, float]:
  """GiB per device of the compiled step, of its arguments and of the frozen base, each way."""
  out = {}
  for name, extra in variants(rank, group_size).items():
    config = load_config("tiny-llama", [f"model.preset={preset}", f"train.seq_len={seq}",
                                        f"train.batch_size={batch}", *extra])
    report = compile_train_step(config)
    out[name] = report.bytes_per_device / 2**30 if report.bytes_per_device else float("nan")
    out[f"{name}_arguments"] = report.memory["argument"] / 2**30 if report.memory else float("nan")
    out[f"{name}_base"] = base_bytes(config) / 2**30
  return out


def step_time(width: int, layers: int, rank: int, steps: int, seq: int, batch: int,
              group_size: int) -> dict[str, tuple[float, float]]:
  """(median wall seconds, median CPU seconds of this process) per optimizer step, each way, on
  the same synthetic batch. The ways take their steps in turn, one each per round, so that a
  machine shared with other work slows them alike; CPU seconds are what XLA's threads spent."""
  rng = np.random.default_rng(0)
  group_size = min(group_size, width // 8)  # within a head: attention/out groups its head_dim
  ids = rng.integers(0, 8192, (batch, seq), dtype=np.int32)
  batch_arrays = {"input_ids": ids, "segment_ids": np.ones_like(ids),
                  "positions": np.tile(np.arange(seq, dtype=np.int32), (batch, 1))}
  runs = {}
  for name, extra in variants(rank, group_size).items():
    config = load_config("tiny-llama", [
        f"model.embed_dim={width}", f"model.mlp_dim={4 * width}", f"model.num_layers={layers}",
        "model.num_heads=8", "model.num_kv_heads=4", "model.vocab_size=8192",
        f"model.max_seq_len={seq}", f"train.seq_len={seq}", f"train.batch_size={batch}", *extra])
    placement = mesh_rules(config.mesh)
    setup = setup_step(config, placement)
    state = create_train_state(setup.model, setup.tx, placement, seed=0, seq_len=seq)
    placed = {k: jax.device_put(v, placement.batch_sharding()) for k, v in batch_arrays.items()}
    state, metrics = setup.step(state, placed)  # compile
    jax.block_until_ready(metrics)
    runs[name] = [setup, state, placed, [], []]
  for _ in range(steps):
    for run in runs.values():
      setup, state, placed, walls, cpus = run
      wall, cpu = time.perf_counter(), time.process_time()
      run[1], metrics = setup.step(state, placed)
      jax.block_until_ready(metrics)
      walls.append(time.perf_counter() - wall)
      cpus.append(time.process_time() - cpu)
  return {name: (statistics.median(run[3]), statistics.median(run[4]))
          for name, run in runs.items()}


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
  parser.add_argument("--group-size", type=int, default=64, help="QLoRA int4's group size")
  parser.add_argument("--time-only", action="store_true", help="skip the memory compiles")
  args = parser.parse_args()
  device = jax.devices()[0].device_kind
  if not args.time_only:
    mem = memory(args.preset, args.rank, args.seq, args.batch, args.group_size)
    print(f"{args.preset}, batch {args.batch} x {args.seq}, rank {args.rank}, one {device}, "
          f"GiB per device:")
    for name in variants(args.rank, args.group_size):
      print(f"  {name:<15} step {mem[name]:6.2f}  arguments {mem[name + '_arguments']:6.2f}  "
            f"frozen base {mem[name + '_base']:6.2f} "
            f"({mem[name + '_base'] / mem['lora_base']:.2f}x LoRA's)")
  times = step_time(args.time_width, args.time_layers, args.rank, args.steps, args.time_seq,
                    args.time_batch, args.group_size)
  tokens = args.time_batch * args.time_seq
  print(f"step time, width {args.time_width} x {args.time_layers} layers, batch "
        f"{args.time_batch} x {args.time_seq} (int4 groups of at most a head, 32):")
  for name, (wall, cpu) in times.items():
    print(f"  {name:<15} {wall * 1e3:5.0f} ms  {tokens / wall:8.0f} tokens/s  "
          f"({times['lora'][0] / wall:.2f}x LoRA's speed)  CPU {cpu * 1e3:5.0f} ms "
          f"({times['lora'][1] / cpu:.2f}x)")


if __name__ == "__main__":
  main()
