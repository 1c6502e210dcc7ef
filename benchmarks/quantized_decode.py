"""Greedy decoding with float32 weights against int8 weights (`model.quantization`), run by hand.

    .venv/bin/python benchmarks/quantized_decode.py [--width 512] [--layers 4] [--vocab 8192]
                                                    [--prompt 32] [--new 64] [--batch 1 8]

One random Llama-style model (lmjax's own init), quantized with lmjax.run.loader.quantized
as `--quantize int8` does; the memory is the bytes of the params each decode holds (the blocks'
kernels int8 with float32 scales; embeddings and norms float32 in both). Each timing is the
median of `--repeats` full `generate` calls, float and int8 in turn, after a warm-up that
compiles each; tokens/s counts new tokens over the whole call (prefill included). Prints how many
of int8's greedy tokens equal float's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--width", type=int, default=512)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
  parser.add_argument("--new", type=int, default=64, help="new tokens per sequence")
  parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--scheme", default="int8", choices=("int8", "int4"))
  args = parser.parse_args()

  import flax.linen as nn

  from lmjax.infer import generate
  from lmjax.model import ModelConfig, Transformer
  from lmjax.run.loader import quantized

  config = ModelConfig.for_family(
      "llama", num_layers=args.layers, embed_dim=args.width, num_heads=args.width // 64,
      mlp_dim=4 * args.width, vocab_size=args.vocab, max_seq_len=args.prompt + args.new)
  model = Transformer(config)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  models = {"float32": (model, params["params"]),
            args.scheme: quantized(model, params["params"], {"scheme": args.scheme})}
  size = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree)) / 2**20
  print(f"llama-style, width {args.width}, {args.layers} layers, vocab {args.vocab}; "
        f"{jax.devices()[0].device_kind}")
  for name, (_, p) in models.items():
    print(f"  params held by {name}: {size(p):.1f} MiB (blocks {size(p['layers']):.1f} MiB)")

  rng = np.random.default_rng(0)
  for batch in args.batch:
    prompts = rng.integers(0, args.vocab, (batch, args.prompt)).tolist()
    call = {name: (lambda m=m, p=p: generate(m, p, prompts, max_new_tokens=args.new,
                                             temperature=0.0))
            for name, (m, p) in models.items()}
    outputs = {name: fn() for name, fn in call.items()}  # warm-up: compiles
    times = {name: [] for name in call}
    for _ in range(args.repeats):
      for name, fn in call.items():
        start = time.perf_counter()
        outputs[name] = fn()
        times[name].append(time.perf_counter() - start)
    speed = {name: batch * args.new / statistics.median(t) for name, t in times.items()}
    same = np.mean([a == b for x, y in zip(*outputs.values()) for a, b in zip(x, y)])
    print(f"batch {batch}: " + ", ".join(f"{n} {s:,.0f} tok/s" for n, s in speed.items())
          + f"; {args.scheme} / float32 {speed[args.scheme] / speed['float32']:.2f}x; "
          f"greedy tokens equal to float's: {same:.0%}")


if __name__ == "__main__":
  main()
