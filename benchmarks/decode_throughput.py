"""Greedy decoding: lmjax's KV-cache loop against transformers' `generate` (run by hand).

    .venv/bin/python benchmarks/decode_throughput.py [--width 256] [--layers 4] [--vocab 8192]
                                                     [--prompt 32] [--new 128] [--batch 1 8]

One random GPT-2 (learned positions, tied embeddings) made in PyTorch and converted with
`lmjax.from_hf`, so both decode the same weights; greedy, no end-of-sequence stop, the same
prompts (the same length in a batch). Each timing is the median of `--repeats` full calls, the
two libraries in turn, after a warm-up (which compiles lmjax's prefill and decode loop once per
shape); tokens/s counts new tokens over the whole call (prefill included). The outputs are checked to
be the same tokens.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np


def alternating(fns: dict, repeats: int) -> tuple[dict[str, float], dict]:
  """Median seconds of each function, called in turn `repeats` times after a warm-up call each
  (which compiles lmjax and fills PyTorch's caches), and their last outputs."""
  outputs = {name: fn() for name, fn in fns.items()}
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t = time.perf_counter()
      outputs[name] = fn()
      times[name].append(time.perf_counter() - t)
  return {name: statistics.median(t) for name, t in times.items()}, outputs


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
  """The random GPT-2's size and the request shape (benchmarks/serve.py takes them too)."""
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
  parser.add_argument("--new", type=int, default=128, help="new tokens per sequence")


def random_gpt2(args):
  """The random GPT-2 both libraries decode, in PyTorch (seed 0), sized by `args`."""
  import torch
  import transformers
  torch.manual_seed(0)
  return transformers.GPT2LMHeadModel(transformers.GPT2Config(
      n_layer=args.layers, n_embd=args.width, n_head=max(1, args.width // 64),
      n_positions=args.prompt + args.new, vocab_size=args.vocab)).eval()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_model_arguments(parser)
  parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()

  import torch

  import lmjax
  from lmjax.infer import generate

  torch.set_num_threads(os.cpu_count() or 1)
  hf_model = random_gpt2(args)
  with tempfile.TemporaryDirectory() as directory:
    hf_model.save_pretrained(directory)
    model, params = lmjax.from_hf(directory)
  print(f"GPT-2 {args.layers} layers x {args.width}, vocab {args.vocab}; {args.prompt}-token "
        f"prompts, {args.new} new tokens, greedy; {os.cpu_count()} cores", flush=True)
  rng = np.random.default_rng(0)
  for batch in args.batch:
    prompts = rng.integers(0, args.vocab, (batch, args.prompt))
    ids = torch.from_numpy(prompts)

    def hf_generate():
      with torch.no_grad():
        return hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=args.new, min_new_tokens=args.new,
                                 pad_token_id=0)
    times, outputs = alternating({
        "lmjax": lambda: generate(model, params, prompts.tolist(), max_new_tokens=args.new,
                                  temperature=0),
        "transformers": hf_generate}, args.repeats)
    ours_time, theirs_time = times["lmjax"], times["transformers"]
    same = np.array_equal(np.asarray(outputs["lmjax"]),
                          outputs["transformers"][:, args.prompt:].numpy())
    tokens = batch * args.new
    print(f"batch {batch}: lmjax {tokens / ours_time:,.0f} tok/s | transformers "
          f"{tokens / theirs_time:,.0f} tok/s | {theirs_time / ours_time:.2f}x | same tokens: "
          f"{same}", flush=True)
  seconds, nbytes = weight_read_floor(params)
  print(f"profile: one pass over the {nbytes / 1e6:.1f} MB of weight matrices at batch 1 (a "
        f"vector times each, one XLA program) takes {seconds * 1e3:.2f} ms "
        f"({nbytes / seconds / 1e9:.0f} GB/s): the floor of a decoding step", flush=True)


def weight_read_floor(params, repeats: int = 200) -> tuple[float, int]:
  """(seconds, bytes) of one batch-1 pass that multiplies a vector by every weight matrix once,
  in one jitted program: the memory-bound floor of a decoding step, without attention, norms,
  sampling or the loop around them."""
  import jax
  import jax.numpy as jnp
  weights = [w.reshape(-1, w.shape[-1]) for w in jax.tree.leaves(params) if w.ndim >= 2]
  read = jax.jit(lambda ws: sum((jnp.ones((1, w.shape[0]), w.dtype) @ w).sum() for w in ws))
  read(weights).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    out = read(weights)
  out.block_until_ready()
  return (time.perf_counter() - start) / repeats, sum(w.nbytes for w in weights)


if __name__ == "__main__":
  main()
