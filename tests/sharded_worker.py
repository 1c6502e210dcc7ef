"""Runs in a subprocess with 8 fake CPU devices (tests/test_sharding.py starts it).

XLA reads `--xla_force_host_platform_device_count` once, when JAX starts, so everything that
needs 8 devices happens here, in one process, to pay JAX's start-up once:

  * trains each (model, scan) for a few steps on one device and on every mesh in MESHES,
    saving per-step losses and the final params (and, on fsdp=8, every state shard's shape);
    the Mixture-of-Experts model (both dispatches) on the expert x fsdp meshes of MOE_MESHES;
  * compiles the step with `--compile-only` on two meshes;
  * runs `lmjax train` on configs that must be refused, recording exit code and stderr.

Usage: python -m tests.sharded_worker OUT_DIR PART [PART ...]
PART: causal | mlm | lora | moe (equivalence runs of that model), compile, bad_inputs. Writes
OUT_DIR/<parts>.json and OUT_DIR/<run>.npz.
"""

import contextlib
import io
import json
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lmjax.cli import main as cli_main  # noqa: E402
from lmjax.config import load_config  # noqa: E402
from lmjax.sharding import mesh_rules  # noqa: E402
from lmjax.train.compile import compile_train_step  # noqa: E402
from lmjax.train.inputs import TrainBatches, batch_sources, load_corpus  # noqa: E402
from lmjax.train.setup import setup_step  # noqa: E402
from lmjax.train.state import create_train_state  # noqa: E402
from tests.conftest import TINY  # noqa: E402

STEPS = 3
MODELS = {"causal": "tiny-llama", "mlm": "tiny-bert", "lora": "tiny-llama",
          "moe_dropless": "tiny-mixtral", "moe_capacity": "tiny-mixtral",
          "modernbert": "tiny-bert"}
# LoRA adapters on every projection, scanned layers only: the adapters carry the kernels'
# logical axes, so every mesh must give the same losses and params as one device.
# The MoE model: 4 experts, 2 per token; the capacity dispatch with buffers small enough to drop
# tokens (the drops are per sequence, so they are the same on every mesh).
# ModernBERT on tiny-bert's MLM recipe: one local layer (window 9, its own RoPE base) and one
# global, and layer 0's unused attention norm, which must stay put on every mesh.
KIND_OVERRIDES = {"lora": ["model.lora.rank=4"],
                  "modernbert": ["model.preset=tiny-modernbert", "model.sliding_layers=[1]",
                                 "model.sliding_window=9"],
                  "moe_dropless": ["model.moe.aux_loss_coef=0.1", "model.remat=none"],
                  "moe_capacity": ["model.moe.aux_loss_coef=0.1", "model.moe.capacity_factor=1.0",
                                   "model.remat=none"]}
KIND_SCANS = {"mlm": (True,), "lora": (True,), "moe_dropless": (True,), "moe_capacity": (True,),
              "modernbert": (True,)}
MESHES = {"data8": dict(data=8), "fsdp8": dict(data=1, fsdp=8),
          "tensor2_fsdp4": dict(data=1, fsdp=4, tensor=2),
          "data2_fsdp2_tensor2": dict(data=2, fsdp=2, tensor=2)}
# The scanned causal model trains on every mesh but plain data parallelism (which every other
# sharded test crosses: the classifier's, the pipeline's and context parallelism's data=8
# resumes, the two-process runs); the MLM model on fsdp=8 (its shards are counted) and
# tensor=2 x fsdp=4; the unrolled layout (the same rules, per-layer names) of the causal model
# on fsdp=8; LoRA on fsdp=8 (its shards are counted) and tensor=2 x fsdp=4; ModernBERT on
# tensor=2 x fsdp=4, which crosses both axes its params are split over.
KIND_MESHES = {"mlm": ("fsdp8", "tensor2_fsdp4"), "modernbert": ("tensor2_fsdp4",),
               "lora": ("fsdp8", "tensor2_fsdp4")}
UNROLLED_MESHES = ("fsdp8",)


def meshes_of(kind: str, scan: bool) -> tuple[str, ...]:
  """The MESHES (or MOE_MESHES) a model kind trains on with scanned or unrolled layers."""
  if kind.startswith("moe"):
    return tuple(MOE_MESHES)
  if kind in KIND_MESHES:
    return KIND_MESHES[kind]
  if not scan:
    return UNROLLED_MESHES
  return tuple(m for m in MESHES if m != "data8")  # data8: the compile-only comparison
MOE_MESHES = {"expert4_fsdp2": dict(data=1, fsdp=2, expert=4)}
OVERRIDES = TINY + ["train.warmup_steps=1", "train.learning_rate=3e-3", "train.batch_size=16"]

# (name, config, overrides) that `lmjax train` must refuse before compiling.
BAD_INPUTS = {
    "mesh_size": ("tiny-gpt", ["mesh.data=4"]),
    "heads": ("tiny-gpt", ["mesh.data=1", "mesh.tensor=8"]),
    "kv_heads": ("tiny-llama", ["mesh.data=2", "mesh.tensor=4"]),
    "vocab": ("tiny-gpt", ["mesh.data=4", "mesh.tensor=2", "model.vocab_size=289"]),
    "mlp": ("tiny-gpt", ["mesh.data=2", "mesh.tensor=4", "model.mlp_dim=66"]),
    "embed": ("tiny-gpt", ["mesh.data=1", "mesh.fsdp=8", "model.embed_dim=36"]),
    "batch": ("tiny-gpt", ["mesh.data=8", "train.batch_size=12"]),
    "micro_batch": ("tiny-gpt", ["mesh.data=8", "train.batch_size=16", "train.grad_accum_steps=4"]),
    "experts": ("tiny-mixtral", ["mesh.data=1", "mesh.expert=8"]),
}


def train_steps(config, placement, corpus):
  """Losses of STEPS steps and the final state, with the loop's own pieces (no run directory)."""
  setup = setup_step(config, placement)
  train_source, _ = batch_sources(config, corpus)
  batches = TrainBatches(train_source, placement, num_steps=STEPS, start=0, workers=0,
                         state=None)
  state = create_train_state(setup.model, setup.tx, placement, seed=config.train.seed,
                             seq_len=config.train.seq_len)
  losses = []
  for step in range(STEPS):
    state, metrics = setup.step(state, next(batches))
    losses.append(float(metrics["loss"]))
  return losses, state


def flat(tree):
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def shard_shapes(tree):
  """{path: {"shape": global shape, "shards": the shape held by each device}}."""
  return {jax.tree_util.keystr(path): {
              "shape": list(leaf.shape),
              "shards": [list(s.data.shape) for s in leaf.addressable_shards]}
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0] if leaf.ndim}


def equivalence_runs(out: pathlib.Path, results: dict, kind: str) -> None:
  name, corpus = MODELS[kind], None
  for scan in KIND_SCANS.get(kind, (True, False)):
    base = OVERRIDES + KIND_OVERRIDES.get(kind, []) + [f"model.scan_layers={str(scan).lower()}"]
    config = load_config(name, base + ["mesh.data=1"])
    corpus = corpus or load_corpus(config)
    one = mesh_rules(config.mesh, devices=jax.devices()[:1])
    runs = {"one_device": (config, one)}
    for mesh_name in meshes_of(kind, scan):
      sizes = (MOE_MESHES if kind.startswith("moe") else MESHES)[mesh_name]
      sharded = load_config(name, base + [f"mesh.{k}={v}" for k, v in sizes.items()])
      runs[mesh_name] = (sharded, mesh_rules(sharded.mesh))
    for mesh_name, (run_config, placement) in runs.items():
      losses, state = train_steps(run_config, placement, corpus)
      key = (f"{kind}-{mesh_name}" if kind.startswith("moe")
             else f"{kind}-scan{int(scan)}-{mesh_name}")
      results["losses"][key] = losses
      np.savez(out / f"{key}.npz", **flat(state.params))
      if mesh_name == "fsdp8" or kind.startswith("moe"):
        results["fsdp_shards"][key] = {"params": shard_shapes(state.params),
                                       "opt_state": shard_shapes(state.opt_state)}
      print(f"{key}: {losses}", file=sys.stderr, flush=True)


def compile_reports(results: dict) -> None:
  for mesh_name in ("data8", "fsdp8"):
    overrides = OVERRIDES + [f"mesh.{k}={v}" for k, v in MESHES[mesh_name].items()]
    report = compile_train_step(load_config("tiny-llama", overrides))
    results["compile"][mesh_name] = {"memory": report.memory,
                                     "xla_flops_per_device": report.xla_flops_per_device}


def bad_inputs(results: dict) -> None:
  with tempfile.TemporaryDirectory() as tmp:
    for case, (name, overrides) in BAD_INPUTS.items():
      run_dir = pathlib.Path(tmp) / case
      out, err = io.StringIO(), io.StringIO()
      with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["train", name, "--run-dir", str(run_dir), "--set", *TINY, *overrides])
      results["bad_inputs"][case] = {"code": code, "stderr": err.getvalue(),
                                     "wrote": run_dir.exists()}


if __name__ == "__main__":
  out_dir, parts = pathlib.Path(sys.argv[1]), sys.argv[2:]
  assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
  results = {"losses": {}, "fsdp_shards": {}, "compile": {}, "bad_inputs": {}}
  for part in parts:
    if part == "moe":
      for kind in ("moe_dropless", "moe_capacity"):
        equivalence_runs(out_dir, results, kind)
    elif part in MODELS:
      equivalence_runs(out_dir, results, part)
    elif part == "compile":
      compile_reports(results)
    else:
      bad_inputs(results)
  (out_dir / f"{'-'.join(parts)}.json").write_text(json.dumps(results))
