"""Training throughput: lmjax against transformers' PyTorch GPT-2 and a plain-JAX GPT-2 (run by hand).

    .venv/bin/python benchmarks/train_throughput.py [--width 256 512] [--layers 4] [--seq 256]
                                                    [--batch 8] [--vocab 8192] [--steps 10]

The same shape on all three (a GPT-2: learned positions, pre-LayerNorm, GELU-tanh, tied
embeddings), the same synthetic batches, float32, AdamW with global-norm clipping, dropout off.
Each round runs every contender for `--steps` full optimizer steps, in turn (so that the
machine's state, turbo and cache, is shared fairly); after a warm-up round, the median step time
over all rounds gives tokens/s. MFU is model FLOPs (lmjax's `ModelConfig.flops_per_token`, the
same count for all three) over the float32 matmul throughput this machine reaches (measured
here, in JAX and in PyTorch; the larger is the reference).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmjax.config import load_config
from lmjax.sharding import mesh_rules
from lmjax.train.setup import setup_step
from lmjax.train.state import create_train_state


def batches(vocab: int, batch: int, seq: int, count: int) -> list[np.ndarray]:
  rng = np.random.default_rng(0)
  return [rng.integers(0, vocab, (batch, seq), dtype=np.int32) for _ in range(count)]


def matmul_flops_per_second(repeats: int = 5) -> dict[str, float]:
  """float32 2048 x 2048 matmul throughput of JAX and PyTorch on this machine (the best of
  `repeats` runs of 10 each: a shared machine's noise only ever slows it down)."""
  import torch
  n = 2048
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
  f = jax.jit(lambda x: x @ x)
  x = torch.randn(n, n)
  runs = {"jax": lambda: f(a).block_until_ready(), "torch": lambda: x @ x}
  best = {}
  for name, run in runs.items():
    run()
    for _ in range(repeats):
      t = time.perf_counter()
      for _ in range(10):
        run()
      best[name] = max(best.get(name, 0.0), 10 * 2 * n ** 3 / (time.perf_counter() - t))
  return best


class Lmjax:
  """lmjax's own train step, its defaults (scanned layers, `model.remat=save_dots`)."""

  name = "lmjax"

  def __init__(self, args, width):
    heads = max(1, width // 64)
    self.config = load_config("tiny-gpt", [
        f"model.num_layers={args.layers}", f"model.embed_dim={width}", f"model.num_heads={heads}",
        f"model.mlp_dim={4 * width}", f"model.vocab_size={args.vocab}",
        f"model.max_seq_len={args.seq}", "model.dropout_rate=0.0", f"train.seq_len={args.seq}",
        f"train.batch_size={args.batch}", "train.steps=100000", "train.warmup_steps=10",
        "mesh.data=1", *args.set])
    self.placement = mesh_rules(self.config.mesh, devices=jax.devices()[:1])
    self.setup = setup_step(self.config, self.placement)
    self.state = create_train_state(self.setup.model, self.setup.tx, self.placement, seed=0,
                                    seq_len=args.seq)
    shape = (args.batch, args.seq)
    self.fixed = {"segment_ids": np.ones(shape, np.int32),
                  "positions": np.broadcast_to(np.arange(args.seq, dtype=np.int32), shape).copy()}

  def step(self, ids):
    batch = self.placement.shard_batch({"input_ids": ids, **self.fixed}, ids.shape[0])
    self.state, metrics = self.setup.step(self.state, batch)
    jax.block_until_ready(metrics["loss"])


class PlainJax:
  """A GPT-2 in jax.numpy and optax only: what a hand-written training step costs."""

  name = "plain-jax"

  def __init__(self, args, width):
    self.heads = max(1, width // 64)
    rng = np.random.default_rng(1)
    normal = lambda *shape: jnp.asarray(rng.normal(0, 0.02, shape), jnp.float32)
    layer = lambda: {"ln1": jnp.ones(width), "ln1b": jnp.zeros(width),
                     "qkv": normal(width, 3 * width), "qkvb": jnp.zeros(3 * width),
                     "proj": normal(width, width), "projb": jnp.zeros(width),
                     "ln2": jnp.ones(width), "ln2b": jnp.zeros(width),
                     "fc": normal(width, 4 * width), "fcb": jnp.zeros(4 * width),
                     "out": normal(4 * width, width), "outb": jnp.zeros(width)}
    self.params = {"wte": normal(args.vocab, width), "wpe": normal(args.seq, width),
                   "lnf": jnp.ones(width), "lnfb": jnp.zeros(width),
                   "layers": [layer() for _ in range(args.layers)]}
    self.tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, b1=0.9, b2=0.95))
    self.opt_state = self.tx.init(self.params)
    self._step = jax.jit(functools.partial(self._update, heads=self.heads), donate_argnums=(0, 1))

  @staticmethod
  def _norm(x, scale, bias):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias

  @classmethod
  def _loss(cls, params, ids, *, heads):
    b, s = ids.shape
    x = params["wte"][ids] + params["wpe"][None, :s]
    causal = jnp.tril(jnp.ones((s, s), bool))
    for p in params["layers"]:
      h = cls._norm(x, p["ln1"], p["ln1b"]) @ p["qkv"] + p["qkvb"]
      q, k, v = (t.reshape(b, s, heads, -1) for t in jnp.split(h, 3, axis=-1))
      scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1])
      attn = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
      x = x + jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, s, -1) @ p["proj"] + p["projb"]
      h = jax.nn.gelu(cls._norm(x, p["ln2"], p["ln2b"]) @ p["fc"] + p["fcb"], approximate=True)
      x = x + h @ p["out"] + p["outb"]
    logits = cls._norm(x, params["lnf"], params["lnfb"]) @ params["wte"].T
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

  def _update(self, params, opt_state, ids, *, heads):
    loss, grads = jax.value_and_grad(self._loss)(params, ids, heads=heads)
    updates, opt_state = self.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def step(self, ids):
    self.params, self.opt_state, loss = self._step(self.params, self.opt_state, ids)
    loss.block_until_ready()


class Torch:
  name = "pytorch"

  def __init__(self, args, width):
    import torch
    import transformers
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=args.layers, n_embd=width, n_head=max(1, width // 64),
                                     n_positions=args.seq, vocab_size=args.vocab, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0)
    self.torch = torch
    self.model = transformers.GPT2LMHeadModel(config).train()
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, betas=(0.9, 0.95),
                                       weight_decay=0.1)

  def step(self, ids):
    ids = self.torch.from_numpy(ids.astype(np.int64))
    loss = self.model(input_ids=ids, labels=ids).loss
    self.optimizer.zero_grad()
    loss.backward()
    self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
    self.optimizer.step()


def measure(args, width, peak) -> dict[str, float]:
  contenders = [cls(args, width) for cls in (Lmjax, Torch, PlainJax)]
  data = batches(args.vocab, args.batch, args.seq, args.steps)
  times = {c.name: [] for c in contenders}
  for round_ in range(args.rounds + 1):
    for c in contenders:
      for ids in data:
        t = time.perf_counter()
        c.step(ids)
        if round_:  # round 0 compiles and warms up
          times[c.name].append(time.perf_counter() - t)
  tokens = args.batch * args.seq
  flops = contenders[0].config.model.flops_per_token(args.seq)
  rates = {name: tokens / statistics.median(t) for name, t in times.items()}
  print(f"width {width}: " + " | ".join(
      f"{name} {rate:,.0f} tok/s (MFU {flops * rate / peak:.1%})" for name, rate in rates.items())
      + f" | vs pytorch: lmjax {rates['lmjax'] / rates['pytorch']:.2f}x, plain-jax "
        f"{rates['plain-jax'] / rates['pytorch']:.2f}x", flush=True)
  return rates


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--width", type=int, nargs="+", default=[256, 512])
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--steps", type=int, default=10, help="steps per contender per round")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                      help="lmjax config overrides, e.g. model.remat=none train.compute_dtype=bfloat16")
  args = parser.parse_args()
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  matmul = matmul_flops_per_second()
  peak = max(matmul.values())
  print(f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores; float32 2048^2 matmul: "
        f"JAX {matmul['jax'] / 1e9:.0f} GFLOP/s, PyTorch {matmul['torch'] / 1e9:.0f} GFLOP/s "
        f"(MFU below is against {peak / 1e9:.0f})", flush=True)
  for width in args.width:
    measure(args, width, peak)


if __name__ == "__main__":
  main()
