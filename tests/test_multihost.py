"""Two JAX processes joined by `jax.distributed` (also as two slices of an ICI x DCN mesh) train
like one process with all the devices, and a run resumes on another topology.

Every child runs `python -m lmjax train`, the command a pod worker runs, on 127.0.0.1 with
gloo collectives and fake CPU devices (see tests/processes.py).
"""

import json
import time

import jax
import numpy as np

import lmjax
from tests.conftest import TINY
from tests.processes import children, cpu_env, free_port


# A BPE tokenizer on purpose: process 0 trains it and hands it to process 1.
RUN = TINY + ["data.tokenizer=bpe", "train.warmup_steps=1", "train.learning_rate=3e-3",
              "train.log_every=1", "train.eval_every=4", "train.checkpoint_every=4"]
MESH_2x2x2 = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
# The same mesh as two slices, each process one (fsdp and tensor inside a slice, data across).
TWO_SLICES = ["mesh.dcn_data=2", "mesh.data=1", "mesh.fsdp=2", "mesh.tensor=2"]
GLOO = {"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}


def train_args(run_dir, *overrides):
  return ["-m", "lmjax", "train", "tiny-llama", "--run-dir", str(run_dir), "--set", *RUN,
          *overrides]


def start_pair(group, name, run_dir, *overrides):
  """Two processes (4 fake devices each) joined by jax.distributed on a free local port."""
  address = f"127.0.0.1:{free_port()}"
  for process_id in (0, 1):
    group.start(f"{name}{process_id}", train_args(
        run_dir, *overrides, f"distributed.coordinator_address={address}",
        "distributed.num_processes=2", f"distributed.process_id={process_id}",
        "distributed.initialization_timeout=60"), cpu_env(4, **GLOO))


def rows(run_dir):
  return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_slices_train_like_one_process_and_their_checkpoint_restores_on_other_meshes(
    tmp_path):
  pair, single = tmp_path / "two_processes", tmp_path / "one_process"
  with children(tmp_path) as group:
    # Phase 1: 2 processes x 4 devices as two slices (an ICI x DCN mesh) and 1 process x 8
    # devices, the same 2x2x2 mesh, 4 steps.
    start_pair(group, "process", pair, "train.steps=4", *TWO_SLICES)
    group.start("reference", train_args(single, "train.steps=4", *MESH_2x2x2), cpu_env(8))
    group.check(timeout=240)
    # Phase 2, resuming on another topology, as a pod that comes back in another shape: the
    # pair's checkpoint (2 processes, 8 devices) on one process with 2 devices (fsdp=2), and
    # the single process's (8 devices) on 2 processes x 4 devices (one 2x2x2 mesh across both);
    # each runs on to step 6.
    group.start("resumed", train_args(pair, "train.steps=6", "mesh.dcn_data=1", "mesh.data=1",
                                      "mesh.fsdp=2", "mesh.tensor=1"), cpu_env(2))
    start_pair(group, "reference_resumed", single, "train.steps=6", *MESH_2x2x2)
    group.check(timeout=180)

  logged, expected = rows(pair), rows(single)
  assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]  # one writer: one row per step
  # The same data in the same order, not bit-exact: meshes of 2, 4 and 8 devices sum the
  # gradients and the loss's partial sums in different orders (float32 is not associative).
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose([r[key] for r in logged], [r[key] for r in expected],
                               rtol=1e-5, atol=1e-6, err_msg=key)
  evals = [(r["step"], r["eval_loss"]) for r in logged if "eval_loss" in r]
  assert [s for s, _ in evals] == [4, 6]
  np.testing.assert_allclose([e for _, e in evals],
                             [r["eval_loss"] for r in expected if "eval_loss" in r], rtol=1e-5)
  assert (pair / "tokenizer" / "tokenizer.json").read_bytes() == \
      (single / "tokenizer" / "tokenizer.json").read_bytes()
  assert len(list((pair / "tensorboard").iterdir())) == 2  # one event file per invocation
  assert sorted(int(p.name) for p in (pair / "checkpoints").iterdir()) == [4, 6]

  # The 2-process checkpoint at step 4 restores onto this test's single device.
  assert jax.device_count() == 1
  _, params = lmjax.load_run(pair, step=4)
  _, expected_params = lmjax.load_run(single, step=4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params, expected_params)


def test_a_process_that_cannot_reach_the_coordinator_fails_naming_the_address(tmp_path):
  address = f"127.0.0.1:{free_port()}"  # nothing listens there
  started = time.monotonic()
  with children(tmp_path) as group:
    group.start("orphan", train_args(
        tmp_path / "run", f"distributed.coordinator_address={address}",
        "distributed.num_processes=2", "distributed.process_id=1",
        "distributed.initialization_timeout=3"), cpu_env(1))
    codes = group.wait(timeout=90)
  log = (tmp_path / "orphan.log").read_text()
  assert codes["orphan"] == 2, log
  assert time.monotonic() - started < 60  # the 3 s timeout, plus starting Python and JAX
  assert f"could not reach the coordinator at distributed.coordinator_address={address}" in log
  assert "Traceback" not in log and not (tmp_path / "run").exists()


def test_a_tpu_pod_worker_joins_its_slice_without_distributed_keys(tmp_path):
  """On a TPU VM of a multi-host slice (TPU_WORKER_HOSTNAMES), the job is joined as
  distributed.auto does; here no TPU answers, so that attempt fails with one clear message."""
  with children(tmp_path) as group:
    group.start("worker", train_args(tmp_path / "run", "distributed.initialization_timeout=5"),
                cpu_env(1, TPU_WORKER_HOSTNAMES="10.0.0.2,10.0.0.3"))
    codes = group.wait(timeout=90)
  log = (tmp_path / "worker.log").read_text()
  assert codes["worker"] == 2, log
  assert "one of 2 TPU pod workers" in log
  assert "could not join the distributed job through the coordinator found in the environment" \
      in log
  assert "Traceback" not in log and not (tmp_path / "run").exists()


def test_a_locked_run_directory_stops_every_process_of_a_job(tmp_path):
  """Process 0 (the writer) finds the run directory held by another live process: it and
  process 1, which takes no lock, both exit 2 with the refusal, before any collective hangs."""
  from lmjax.lock import DirectoryLock
  run_dir = tmp_path / "run"
  with DirectoryLock(run_dir), children(tmp_path) as group:
    start_pair(group, "process", run_dir, "train.steps=4", *TWO_SLICES)
    codes = group.wait(timeout=180)
  for name in ("process0", "process1"):
    assert codes[name] == 2, (name, group.log(name))
    assert f"run directory {run_dir} is in use by another lmjax process" in group.log(name)
    assert "Traceback" not in group.log(name)
  assert not run_dir.exists()  # the holder released it; nothing else was written
