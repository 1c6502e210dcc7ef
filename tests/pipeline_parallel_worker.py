"""Runs in a subprocess with 8 fake CPU devices (tests/test_pipeline_parallel.py starts it).

Everything that needs the devices happens here, in one process (JAX starts once):

  * each model (causal with alternating sliding windows, ModernBERT's MLM with per-layer
    rotary bases and layer 0's norm) trains a few steps on one device and on pipeline meshes,
    on packed rows (several documents each) and on unpacked ones (one document, padded),
    saving per-step losses and the final params;
  * `lmjax train` runs a pipelined run to the end, and one that stops halfway and resumes
    on a mesh without stages;
  * `lmjax train` on configs that must be refused, recording exit code and stderr.

Usage: python -m tests.pipeline_parallel_worker OUT_DIR. Writes OUT_DIR/results.json,
OUT_DIR/<run>.npz and the run directories OUT_DIR/runs/*.
"""

import contextlib
import io
import json
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lmjax.cli import main as cli_main  # noqa: E402
from lmjax.config import load_config  # noqa: E402
from lmjax.data.spec import Objective  # noqa: E402
from lmjax.sharding import mesh_rules  # noqa: E402
from lmjax.train.setup import setup_step  # noqa: E402
from lmjax.train.state import create_train_state  # noqa: E402
from tests.conftest import TINY  # noqa: E402

STEPS = 3
BASE = TINY + ["model.num_layers=4", "train.warmup_steps=1", "train.learning_rate=3e-3",
               "train.batch_size=16", "model.remat=none"]
# Causal: Llama with Gemma 2's alternation of local (window 9) and global layers. MLM:
# ModernBERT, its local layers with their own RoPE base, layer 0 without its attention norm.
MODELS = {"causal": ("tiny-llama", ["model.sliding_window=9", "model.sliding_layers=[0,2]"]),
          "mlm": ("tiny-bert", ["model.preset=tiny-modernbert", "model.sliding_window=9"])}
# mesh name -> (sizes, devices used, micro-batches)
MESHES = {
    "one_device": (dict(data=1), 1, 1),
    "stage2_data2_fsdp2": (dict(data=2, fsdp=2, stage=2), 8, 2),
    "stage4_tensor2": (dict(data=1, tensor=2, stage=4), 8, 4),
}
MODEL_MESHES = {"causal": ("stage2_data2_fsdp2",), "mlm": ("stage4_tensor2",)}
PACKINGS = ("packed", "unpacked")

# The resumed runs train the causal model on its pipeline mesh (whose step is compiled once:
# the equivalence runs fill the worker's compilation cache).
RESUME = BASE + MODELS["causal"][1] + ["train.steps=4", "train.log_every=1",
                                       "train.checkpoint_every=2", "train.eval_every=0"]
PIPELINED = ["mesh.stage=2", "mesh.data=2", "mesh.fsdp=2", "train.microbatches=2"]
FLAT = ["mesh.stage=1", "mesh.data=8", "mesh.fsdp=1", "train.microbatches=1"]

# (name, config, overrides) that `lmjax train` must refuse before compiling.
BAD_INPUTS = {
    "stages_do_not_divide_layers": ("tiny-llama", ["mesh.stage=8", "mesh.data=1"]),
    "unrolled_layers": ("tiny-llama", ["mesh.stage=2", "mesh.data=4",
                                       "model.scan_layers=false"]),
    "microbatches_do_not_divide_rows": ("tiny-llama", ["mesh.stage=2", "mesh.data=4",
                                                       "train.microbatches=8"]),
    "microbatches_without_stages": ("tiny-llama", ["mesh.data=8", "train.microbatches=2"]),
    "experts": ("tiny-mixtral", ["mesh.stage=2", "mesh.data=4"]),
}


def batch_rows(objective: Objective, packing: str, step: int, *, rows: int, length: int,
               vocab: int) -> dict[str, np.ndarray]:
  """A batch: packed rows hold three documents each, unpacked ones one document and padding."""
  rng = np.random.default_rng(1000 * step + (packing == "packed"))
  ids = rng.integers(3, vocab, (rows, length)).astype(np.int32)
  segments = np.zeros((rows, length), np.int32)
  positions = np.zeros((rows, length), np.int32)
  for r in range(rows):
    if packing == "packed":
      cuts = np.sort(rng.choice(np.arange(4, length - 4), 2, replace=False))
      bounds = [0, *cuts, length - int(rng.integers(0, 4))]
    else:
      bounds = [0, int(rng.integers(length // 2, length + 1))]
    for doc, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:]), 1):
      segments[r, start:stop], positions[r, start:stop] = doc, np.arange(stop - start)
  ids[segments == 0] = 0
  batch = {"input_ids": ids, "segment_ids": segments, "positions": positions}
  if objective is Objective.MASKED_LM:
    chosen = (rng.random((rows, length)) < 0.3) & (segments != 0)
    batch.update(targets=ids.copy(), target_weights=chosen.astype(np.float32))
    batch["input_ids"] = np.where(chosen, 1, ids).astype(np.int32)
  return batch


def flat(tree):
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def equivalence_runs(out: pathlib.Path, results: dict, kind: str) -> None:
  name, extra = MODELS[kind]
  for mesh_name in ("one_device", *MODEL_MESHES[kind]):
    sizes, devices, micro = MESHES[mesh_name]
    config = load_config(name, BASE + extra + [f"mesh.{k}={v}" for k, v in sizes.items()]
                         + [f"train.microbatches={micro}"])
    placement = mesh_rules(config.mesh, devices=jax.devices()[:devices])
    setup = setup_step(config, placement)
    assert (setup.model.pipeline is None) == (mesh_name == "one_device")
    if mesh_name == "one_device":  # the same initial state everywhere, initialised once
      initial = jax.device_get(create_train_state(setup.model, setup.tx, placement,
                                                  seed=config.train.seed,
                                                  seq_len=config.train.seq_len))
    for packing in PACKINGS:
      state = jax.device_put(initial, setup.shardings)
      losses = []
      for step in range(STEPS):
        rows = batch_rows(setup.objective, packing, step, rows=config.train.batch_size,
                          length=config.train.seq_len, vocab=config.model.vocab_size)
        state, metrics = setup.step(state, placement.shard_batch(rows, config.train.batch_size))
        losses.append(float(metrics["loss"]))
      key = f"{kind}-{packing}-{mesh_name}"
      results["losses"][key] = losses
      np.savez(out / f"{key}.npz", **flat(state.params))
      print(f"{key}: {losses}", file=sys.stderr, flush=True)


def cli(*argv) -> dict:
  """`lmjax *argv` in this process: exit code, stdout and stderr."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli_main([str(a) for a in argv])
  return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def resume_runs(out: pathlib.Path, results: dict) -> None:
  """A pipelined run uninterrupted, and one stopped at step 2 and resumed without stages."""
  runs = out / "runs"
  train = lambda run, *overrides: cli("train", "tiny-llama", "--run-dir", runs / run, "--set",
                                      *RESUME, *overrides)
  results["runs"]["whole"] = train("whole", *PIPELINED)
  results["runs"]["first_half"] = train("resumed", *PIPELINED, "train.steps=2")
  results["runs"]["second_half"] = train("resumed", *FLAT)
  results["runs"]["compile_only"] = cli("train", "tiny-llama", "--compile-only", "--set",
                                        *RESUME, *PIPELINED)


def bad_inputs(out: pathlib.Path, results: dict) -> None:
  for case, (name, overrides) in BAD_INPUTS.items():
    run_dir = out / "refused" / case
    result = cli("train", name, "--run-dir", run_dir, "--set", *BASE, *overrides)
    results["bad_inputs"][case] = {**result, "wrote": run_dir.exists()}


def main(out_dir: pathlib.Path) -> None:
  assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
  # Runs of one config (the halves of a resumed run, its compile-only report) compile alike:
  # once, with a cache of this process's own.
  jax.config.update("jax_compilation_cache_dir", str(out_dir / "xla_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  results = {"losses": {}, "runs": {}, "bad_inputs": {}}
  bad_inputs(out_dir, results)
  for kind in MODELS:
    equivalence_runs(out_dir, results, kind)
  resume_runs(out_dir, results)
  (out_dir / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1]))
