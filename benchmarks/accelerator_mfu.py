"""Model FLOPs utilisation on one accelerator (NVIDIA H100/H200 or a TPU host), run by hand.

    .venv/bin/python benchmarks/accelerator_mfu.py [--model gpt2 llama] [--steps 10]
                                                   [--set key=value ...]

Two standard shapes, trained by lmjax's own step on synthetic tokens: GPT-2 124M (`gpt2-small`)
at sequence 1024, batch 32, and a ~1.2B Llama-style model (`llama-1b`, Llama 3.2 1B's shape) at
sequence 2048, batch 8; bfloat16 compute with float32 master weights, AdamW, the default
attention (`auto`: cuDNN flash through `jax.nn.dot_product_attention` on NVIDIA GPUs, the
splash kernel on TPUs). After `--warmup` steps, `--steps` timed steps give tokens/s and the step
time; MFU is model FLOPs (`ModelConfig.flops_per_token`) over the device's published dense
bfloat16 peak (lmjax.train.metrics.PEAK_FLOPS); peak memory is the device allocator's.
`--set` overrides the config, e.g. `train.batch_size=16 model.remat=full`.

Targets: 45% MFU for GPT-2 124M (llm.c reaches about 40% on an H100), 55% for the ~1B model
(MaxText reports about 50% for Llama-class models).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from lmjax.config import load_config
from lmjax.sharding import mesh_rules
from lmjax.train.metrics import model_flops_utilization
from lmjax.train.setup import setup_step
from lmjax.train.state import create_train_state

SHAPES = {
    "gpt2": ("gpt2-small", 1024, 32),
    "llama": ("llama-1b", 2048, 8),
}


def run(name: str, args) -> None:
  preset, seq, batch = SHAPES[name]
  config = load_config("tiny-gpt", [
      f"model.preset={preset}", "model.family=" + ("gpt2" if name == "gpt2" else "llama"),
      f"model.max_seq_len={seq}", "model.dropout_rate=0.0", f"train.seq_len={seq}",
      f"train.batch_size={batch}", "train.compute_dtype=bfloat16", "train.steps=100000",
      "train.warmup_steps=10", "mesh.data=1", *args.set])
  device = jax.devices()[0]
  placement = mesh_rules(config.mesh, devices=[device])
  setup = setup_step(config, placement)
  state = create_train_state(setup.model, setup.tx, placement, seed=0,
                             seq_len=config.train.seq_len)
  rows, length = config.train.batch_size, config.train.seq_len
  ids = np.random.default_rng(0).integers(0, config.model.vocab_size, (rows, length), np.int32)
  batch = placement.shard_batch({
      "input_ids": ids, "segment_ids": np.ones_like(ids),
      "positions": np.broadcast_to(np.arange(length, dtype=np.int32), ids.shape).copy()}, rows)
  for _ in range(args.warmup):
    state, metrics = setup.step(state, batch)
  jax.block_until_ready(metrics["loss"])
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = setup.step(state, batch)
  jax.block_until_ready(metrics["loss"])
  step_time = (time.perf_counter() - start) / args.steps
  tokens_per_second = rows * length / step_time
  mfu = model_flops_utilization(config.model.flops_per_token(length), tokens_per_second,
                                dtype="bfloat16", devices=[device])
  params = sum(x.size for x in jax.tree.leaves(state.params))
  stats = device.memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  print(f"{name} ({preset}, {params / 1e6:,.0f}M params, seq {length}, batch {rows}) on "
        f"{device.device_kind}: {tokens_per_second:,.0f} tokens/s, {step_time * 1e3:.1f} ms/step, "
        f"MFU {'n/a (unknown peak)' if mfu is None else f'{mfu:.1%}'}, peak memory "
        f"{'n/a' if peak is None else f'{peak / 2**30:.1f} GiB'}, loss {float(metrics['loss']):.3f}",
        flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
  args = parser.parse_args()
  for name in args.model:
    run(name, args)


if __name__ == "__main__":
  main()
