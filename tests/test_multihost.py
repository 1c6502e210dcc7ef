"""Two JAX processes joined by `jax.distributed` (also as two slices of an ICI x DCN mesh) train
like one process with all the devices, on a bucket through a kill -9, and a run resumes on
another topology.

Every child runs `python -m lmjax train`, the command a pod worker runs, on 127.0.0.1 with
gloo collectives and fake CPU devices (see tests/processes.py); the bucket is the GCS emulator
(tests/gcs_emulator.py).
"""

import json
import time

import jax
import numpy as np

import lmjax
from lmjax import storage  # before gcsfs: it sets what gcsfs reads on import
from tests.conftest import TINY
from tests.gcs_emulator import BUCKET, client_env, emulator
from tests.processes import ROOT, children, cpu_env, free_port


# A BPE tokenizer on purpose: process 0 trains it and hands it to process 1.
RUN = TINY + ["data.tokenizer=bpe", "train.warmup_steps=1", "train.learning_rate=3e-3",
              "train.log_every=1", "train.eval_every=4", "train.checkpoint_every=4"]
MESH_2x2x2 = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
# The same mesh as two slices, each process one (fsdp and tensor inside a slice, data across).
TWO_SLICES = ["mesh.dcn_data=2", "mesh.data=1", "mesh.fsdp=2", "mesh.tensor=2"]
GLOO = {"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
DATA = ("README.md", "lmjax/storage.py")  # the rehearsal's data: some of this repository's text


def train_args(run_dir, *overrides):
  return ["-m", "lmjax", "train", "tiny-llama", "--run-dir", str(run_dir), "--set", *RUN,
          *overrides]


def start_pair(group, name, run_dir, *overrides, gcs=None):
  """Two processes (4 fake devices each) joined by jax.distributed on a free local port (and
  pointed at the GCS emulator at URL `gcs`)."""
  address = f"127.0.0.1:{free_port()}"
  for process_id in (0, 1):
    group.start(f"{name}{process_id}", train_args(
        run_dir, *overrides, f"distributed.coordinator_address={address}",
        "distributed.num_processes=2", f"distributed.process_id={process_id}",
        "distributed.initialization_timeout=60"),
        cpu_env(4, **GLOO, **(client_env(gcs) if gcs else {})))


def rows(run_dir):
  return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def kill_after_a_checkpoint(group, names, run_dir, timeout=180.0) -> list[dict]:
  """Kills (-9) children `names`, which train `run_dir`, once its step 4 is committed and two
  later steps are logged; returns the metrics rows they had logged."""
  deadline = time.monotonic() + timeout
  while not ((run_dir / "checkpoints" / "4" / "commit_success.txt").exists()
             and (run_dir / "metrics.jsonl").exists() and rows(run_dir)[-1]["step"] >= 6):
    for name in names:
      assert group.procs[name].poll() is None, group.log(name)
    assert time.monotonic() < deadline, group.log(names[0])
    time.sleep(0.05)
  for name in names:
    process = group.procs.pop(name)
    process.kill()
    process.wait(timeout=30)
  return rows(run_dir)


def test_a_pod_on_gcs_killed_and_resumed_trains_like_one_process_and_resumes_on_other_shapes(
    tmp_path):
  """The pod dress rehearsal: two processes as two slices (an ICI x DCN mesh), their run
  directory and data on a bucket (the GCS emulator), both killed with -9 after a checkpoint
  and restarted, end bit-equal to the same two processes trained without interruption (from
  local disk), and within 1e-6 of one process training the same 2x2x2 mesh. Then, as a pod
  that comes back in another shape, each run resumes on
  another topology: the pod's, through the bucket, on one process with 2 devices (fsdp=2); the
  single process's on 2 processes x 4 devices (one 2x2x2 mesh across both)."""
  data, single, whole = tmp_path / "data", tmp_path / "one_process", tmp_path / "two_processes"
  data.mkdir()
  with emulator(tmp_path) as url, children(tmp_path) as group:
    pair = storage.as_path(f"gs://{BUCKET}/pod")
    for i, name in enumerate(DATA):
      (data / f"{i}.md").write_bytes((ROOT / name).read_bytes())
      storage.as_path(f"gs://{BUCKET}/data/{i}.md").write_bytes((ROOT / name).read_bytes())
    on_gcs = ["data.source=text", f"data.paths=[gs://{BUCKET}/data/*.md]"]
    on_disk = ["data.source=text", f"data.paths=[{data}/*.md]"]
    # Phase 1: the pod (2 processes x 4 devices as two slices) and 1 process x 8 devices, the
    # same 2x2x2 mesh, 12 steps; the pod is killed once its step 4 is committed.
    start_pair(group, "process", pair, "train.steps=12", *TWO_SLICES, *on_gcs, gcs=url)
    group.start("reference", train_args(single, "train.steps=12", *MESH_2x2x2, *on_disk),
                cpu_env(8))
    before_kill = kill_after_a_checkpoint(group, ["process0", "process1"], pair)
    resumed_from = max(int(p.parent.name) for p in pair.glob("checkpoints/*/commit_success.txt"))
    assert resumed_from < 12  # killed mid-run
    start_pair(group, "restarted", pair, "train.steps=12", *TWO_SLICES, *on_gcs, gcs=url)
    # The same two slices, never killed (started now, they find the killed pair's programs in
    # the compilation cache).
    start_pair(group, "whole", whole, "train.steps=12", *TWO_SLICES, *on_disk)
    group.check(timeout=240)
    assert "resuming" in group.log("restarted0", tail=100_000)
    uninterrupted = rows(single)
    # Phase 2: another topology each, 2 steps more.
    group.start("resumed", train_args(pair, "train.steps=14", "mesh.dcn_data=1", "mesh.data=1",
                                      "mesh.fsdp=2", "mesh.tensor=1", *on_gcs),
                cpu_env(2, **client_env(url)))
    start_pair(group, "reference_resumed", single, "train.steps=14", *MESH_2x2x2, *on_disk)
    group.check(timeout=180)

    logged, expected = rows(pair), rows(single)
    assert [r["step"] for r in logged] == list(range(1, 15))  # one writer: one row per step
    # Killed and restarted, the pod logged what it logged before the kill, bit for bit: the
    # steps after its last committed checkpoint, computed again from it, included.
    assert before_kill[-1]["step"] > resumed_from  # steps computed twice, compared here
    computed = ("step", "loss", "grad_norm", "learning_rate", "eval_loss")  # not the timings
    assert [{k: r.get(k) for k in computed} for r in logged[:len(before_kill)]] == \
        [{k: r.get(k) for k in computed} for r in before_kill]
    # Killed -9 and restarted from the bucket, the pod trained as if never interrupted: every
    # logged number and every param at step 12, bit for bit.
    assert [{k: r.get(k) for k in computed} for r in logged[:12]] == \
        [{k: r.get(k) for k in computed} for r in rows(whole)]
    jax.tree.map(np.testing.assert_array_equal, lmjax.load_run(pair, step=12)[1],
                 lmjax.load_run(whole, step=12)[1])
    # Two slices (2 processes) and one process with the same 2x2x2 mesh: the same data in the
    # same order; within 1e-6, as the two meshes (built by create_hybrid_device_mesh and by
    # make_mesh) order the devices, hence the partial sums of the loss, differently (float32
    # addition is not associative: on this text one ulp now and then).
    for key in ("loss", "grad_norm"):
      np.testing.assert_allclose([r[key] for r in logged[:12]],
                                 [r[key] for r in uninterrupted], rtol=1e-6, err_msg=key)
    evals = [(r["step"], r["eval_loss"]) for r in logged if "eval_loss" in r]
    assert [s for s, _ in evals] == [4, 8, 12, 14]
    np.testing.assert_allclose([e for _, e in evals[:3]],
                               [r["eval_loss"] for r in uninterrupted if "eval_loss" in r],
                               rtol=1e-6)
    # On another topology the next loss agrees within 1e-6 too: a mesh of 2 devices adds the
    # loss's partial sums in another order than one of 8; the step after it also sums its
    # gradients in another order.
    np.testing.assert_allclose(logged[12]["loss"], expected[12]["loss"], rtol=1e-6)
    for key in ("loss", "grad_norm"):
      np.testing.assert_allclose([r[key] for r in logged], [r[key] for r in expected],
                                 rtol=1e-5, atol=1e-6, err_msg=key)
    assert (pair / "tokenizer" / "tokenizer.json").read_bytes() == \
        (single / "tokenizer" / "tokenizer.json").read_bytes()
    assert sorted(int(p.name) for p in (pair / "checkpoints").iterdir()) == [8, 12, 14]

    # The pod's checkpoint at step 12, from the bucket onto this test's single device.
    assert jax.device_count() == 1
    _, params = lmjax.load_run(pair, step=12)
    _, expected_params = lmjax.load_run(single, step=12)
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
