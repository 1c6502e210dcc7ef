"""Runs in one subprocess with 8 fake CPU devices (tests/test_context_parallel.py starts it).

  attention   ring and all-gathered attention against lmjax.model.attention's dense attention
              (values and gradients), on a mesh data=2 x context=4;
  training    a causal model (ring attention, zig-zag, grouped K/V, one sliding-window layer) and
              an MLM model (all-gathered K/V) trained on one device and on data=2 x context=4,
              from packed batches and unpacked ones (one padded document a row): losses and
              params;
  resume      the causal model trained on data=2 x context=4, resumed on data=8, and the same
              run uninterrupted on data=8 (the persistent compilation cache then compiles each
              step once for the module);
  refusals    `lmjax train` with sequence lengths the context axis does not split evenly.

Usage: python -m tests.context_parallel_worker OUT_DIR. Writes OUT_DIR/results.json, each
training run's final params as OUT_DIR/<model>-<layout>-<mesh>.npz, and the runs of `resume`
under OUT_DIR.
"""

import contextlib
import io
import json
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from lmjax.cli import main as cli_main  # noqa: E402
from lmjax.config import load_config  # noqa: E402
from lmjax.model import ring  # noqa: E402
from lmjax.model.attention import (dot_product_attention, make_mask,  # noqa: E402
                                   sliding_window_mask)
from lmjax.model.config import AttentionImpl  # noqa: E402
from lmjax.model.context_parallel import ContextSplit, TokenOrder  # noqa: E402
from lmjax.sharding import MeshConfig, mesh_rules  # noqa: E402
from lmjax.train.inputs import batch_sources, load_corpus  # noqa: E402
from lmjax.train.loop import train  # noqa: E402
from lmjax.train.setup import setup_step  # noqa: E402
from lmjax.train.state import create_train_state  # noqa: E402
from tests.conftest import TINY  # noqa: E402

STEPS = 3
CP_MESH = ["mesh.data=2", "mesh.context=4"]
OVERRIDES = TINY + ["train.warmup_steps=1", "train.learning_rate=3e-3"]
# (config, overrides): ring attention with grouped K/V and a sliding window on layer 1
# (causal), all-gathered K/V (MLM)
MODELS = {"causal": ("tiny-llama", ["model.sliding_window=12", "model.sliding_layers=[1]"]),
          "mlm": ("tiny-bert", ["model.context_parallel=allgather"])}
# name -> (ring, causal, sliding window): every case has grouped K/V and packed documents
ATTENTION_CASES = {"ring_causal": (True, True, None), "ring_causal_window": (True, True, 5),
                   "ring_bidirectional_window": (True, False, 5),
                   "allgather_causal_window": (False, True, 6)}
GRADIENT_CASES = ("ring_causal", "ring_bidirectional_window", "allgather_causal_window")
# name -> overrides that `lmjax train` must refuse before compiling
REFUSALS = {"indivisible": ["train.seq_len=30"], "zigzag": ["train.seq_len=36"],
            "stages": ["mesh.data=1", "mesh.stage=2"]}


def relative_error(got, want) -> float:
  return float(np.max(np.abs(np.asarray(got) - np.asarray(want)))
               / max(float(np.max(np.abs(want))), 1e-30))


def attention_errors(results: dict) -> None:
  """Ring / all-gathered attention on data=2 x context=4 against the dense reference."""
  placement = mesh_rules(MeshConfig(data=2, context=4))
  b, s, h, kv_heads, d = 2, 32, 4, 2, 8
  rng = np.random.default_rng(0)
  q = rng.standard_normal((b, s, h, d)).astype(np.float32)
  k, v = (rng.standard_normal((b, kv_heads, s, d)).astype(np.float32) for _ in range(2))
  seg = np.ones((b, s), np.int32)
  seg[0, 10:], seg[0, 27:], seg[1, 5:20] = 2, 0, 3     # packed documents, padding at the end
  # the loss weighs real queries only: padding queries see nothing (zeros here, the dense
  # reference's uniform mean there), which no loss reads
  weights = rng.standard_normal((b, s, h, d)).astype(np.float32) * (seg != 0)[:, :, None, None]

  def reference(causal, window):
    def loss(q, k, v):
      mask = make_mask(jnp.asarray(seg), jnp.asarray(seg), causal=causal)
      if window is not None:
        mask = sliding_window_mask(mask, window, causal=causal)
      out = dot_product_attention(q, k, v, mask, impl=AttentionImpl.XLA, causal=causal)
      return jnp.sum(out * weights), out
    return loss

  def split_across(ring_, causal, window):
    split = ContextSplit(("context",), 4, ring=ring_, zigzag=ring_ and causal)

    def loss(q, k, v):  # tokens reordered as the model does, heads-major keys as it passes them
      order = TokenOrder(split, s)
      q_, seg_ = order.apply(q, jnp.asarray(seg))
      k_, v_ = (order.apply(x.transpose(0, 2, 1, 3))[0].transpose(0, 2, 1, 3) for x in (k, v))
      out = order.restore(ring.attention(q_, k_, v_, seg_, seg_, order.slots, split=split,
                                         causal=causal, window=window, scale=d ** -0.5,
                                         softcap=None))
      return jnp.sum(out * weights), out
    return loss

  ring.QUERY_TILE = 3  # each device's 8 queries (4 in a zig-zag half) 3 at a time, padded
  replicated = NamedSharding(placement.mesh, P())
  inputs = [jax.device_put(x, replicated) for x in (q, k, v)]
  real = (seg != 0)[:, :, None, None]
  for name, (ring_, causal, window) in ATTENTION_CASES.items():
    want_fn, got_fn = reference(causal, window), split_across(ring_, causal, window)
    if name in GRADIENT_CASES:
      grad = lambda fn: jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2), has_aux=True))
      (_, want), want_grads = grad(want_fn)(q, k, v)
      with placement.activation_context():
        (_, got), got_grads = grad(got_fn)(*inputs)
      results["gradient_errors"][name] = max(
          relative_error(g, w) for g, w in zip(got_grads, want_grads))
    else:
      want = jax.jit(want_fn)(q, k, v)[1]
      with placement.activation_context():
        got = jax.jit(got_fn)(*inputs)[1]
    results["attention_errors"][name] = relative_error(np.where(real, got, 0),
                                                       np.where(real, want, 0))
    results["padding_outputs"][name] = float(np.max(np.abs(np.where(real, 0, got))))


def unpacked(batch: dict) -> dict:
  """One document a row instead of packed ones: row r's first 32 - 3r tokens, then padding."""
  batch = {k: np.array(v) for k, v in batch.items()}
  rows, length = batch["input_ids"].shape
  real = np.arange(length)[None, :] < (length - 3 * np.arange(rows))[:, None]
  batch["segment_ids"] = real.astype(np.int32)
  batch["positions"] = np.where(real, np.arange(length), 0).astype(np.int32)
  batch["input_ids"] = np.where(real, batch["input_ids"], 0)
  if "target_weights" in batch:
    batch["target_weights"] = np.where(real, batch["target_weights"], 0)
  return batch


def flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def training_runs(out: pathlib.Path, results: dict) -> None:
  """Each model on one device and on data=2 x context=4, from the same batches."""
  for kind, (name, extra) in MODELS.items():
    one = load_config(name, OVERRIDES + extra + ["mesh.data=1"])
    split = load_config(name, OVERRIDES + extra + CP_MESH)
    source, _ = batch_sources(one, load_corpus(one))
    packed = [source.batch(step) for step in range(STEPS)]
    for mesh_name, config, devices in (("one_device", one, jax.devices()[:1]),
                                       ("context4", split, None)):
      placement = mesh_rules(config.mesh, devices=devices)
      setup = setup_step(config, placement)
      for layout, batches in (("packed", packed), ("unpacked", [unpacked(b) for b in packed])):
        state = create_train_state(setup.model, setup.tx, placement, seed=config.train.seed,
                                   seq_len=config.train.seq_len)
        losses = []
        for batch in batches:
          state, metrics = setup.step(state, placement.shard_batch(batch,
                                                                   config.train.batch_size))
          losses.append(float(metrics["loss"]))
        results["losses"][f"{kind}-{layout}-{mesh_name}"] = losses
        np.savez(out / f"{kind}-{layout}-{mesh_name}.npz", **flat(state.params))
        print(f"{kind} {mesh_name} {layout}: {losses}", file=sys.stderr, flush=True)


def resume_runs(out: pathlib.Path) -> None:
  """data=2 x context=4 for 2 steps, resumed on data=8; and data=8 throughout."""
  name, extra = MODELS["causal"]
  base = OVERRIDES + extra + ["train.steps=4", "train.log_every=1", "train.checkpoint_every=2",
                              "train.eval_every=0"]
  config = lambda mesh: load_config(name, base + mesh)
  train(config(CP_MESH), out / "resumed", stop_after=2, async_checkpoints=False)
  train(config(["mesh.data=8"]), out / "resumed", async_checkpoints=False)
  train(config(["mesh.data=8"]), out / "whole", async_checkpoints=False)


def refusals(results: dict) -> None:
  for case, overrides in REFUSALS.items():
    out, err = io.StringIO(), io.StringIO()
    run_dir = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"cp-refused-{os.getpid()}-{case}"
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      code = cli_main(["train", "tiny-llama", "--run-dir", str(run_dir), "--set", *TINY,
                       *CP_MESH, *overrides])
    results["refusals"][case] = {"code": code, "stderr": err.getvalue(),
                                 "wrote": run_dir.exists()}


if __name__ == "__main__":
  out_dir = pathlib.Path(sys.argv[1])
  assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
  results = {"attention_errors": {}, "gradient_errors": {}, "padding_outputs": {},
             "losses": {}, "refusals": {}}
  refusals(results)
  attention_errors(results)
  training_runs(out_dir, results)
  resume_runs(out_dir)
  (out_dir / "results.json").write_text(json.dumps(results))
