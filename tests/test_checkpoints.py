"""Checkpoints that survive kill -9, signals, damaged files and NaNs, and restore on other meshes.

Process-level behaviour (kills, signals, exit codes, fake device counts) runs the real
`python -m lmjax` in children (tests/processes.py; the 8-device child runs its commands one
after the other through the same entry point); the rest calls that entry point in-process,
which is the same code without paying JAX's start-up again.
"""

import json
import random
import re
import shutil
import signal
import time

import jax
import numpy as np
import pytest

import lmjax
from lmjax.cli import main
from tests.conftest import TINY
from tests.helpers import assert_resumed_as_uninterrupted
from tests.processes import children, cpu_env


RUN = TINY + ["train.log_every=1", "train.checkpoint_every=3", "train.eval_every=0"]


def train_argv(run_dir, *overrides, config="tiny-gpt"):
  """`lmjax train` of a tiny run: the arguments after `lmjax` (for `main`, in-process)."""
  return ["train", config, "--run-dir", str(run_dir), "--set", *RUN, *overrides]


def train_args(run_dir, *overrides, config="tiny-gpt"):
  """The same command for a child."""
  return ["-m", "lmjax", *train_argv(run_dir, *overrides, config=config)]


def rows(run_dir):
  return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def wait_for_progress(group, name, step=1, timeout=120.0) -> bool:
  """True once child `name` has logged training step `step` or a later one; False if it exited
  first."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    logged = re.findall(r"^step (\d+)/", group.log(name, tail=100_000), re.MULTILINE)
    if logged and int(logged[-1]) >= step:
      return True
    if group.procs[name].poll() is not None:
      return False
    time.sleep(0.01)
  raise AssertionError(f"{name} logged no step {step} within {timeout}s:\n{group.log(name)}")


def array_files(step_dir):
  """The files holding a step's array data (OCDBT's `d/` data files)."""
  return [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """A run trained to step 24 in this process (steps 18, 21 and 24 kept): tests read or copy it,
  never change it. Trained before the kill test's children start, which then find its compiled
  step in the persistent cache instead of compiling it too."""
  run = tmp_path_factory.mktemp("uninterrupted") / "run"
  assert main(train_argv(run, "train.steps=24")) == 0
  return run


def test_resume_after_repeated_kill_9_matches_an_uninterrupted_run(uninterrupted, tmp_path,
                                                                  capsys):
  whole, killed = uninterrupted, tmp_path / "killed"
  steps, delays = "train.steps=24", random.Random(0)
  with children(tmp_path) as group:
    # A save every 3rd step, each started once the previous one is committed (lmjax's
    # Checkpointer waits for it), after the step's metrics are logged: a child that has logged
    # step 7 (or 14) has committed step 3 (or 9) and may be writing step 6 (or 12). It is killed
    # at a random point after that step.
    for name, kill_at in (("killed0", 7), ("killed1", 14)):
      group.start(name, train_args(killed, steps), cpu_env(1))
      assert wait_for_progress(group, name, step=kill_at), group.log(name)
      time.sleep(delays.uniform(0.0, 0.1))
      proc = group.procs.pop(name)
      assert proc.poll() is None, f"{name} ended before the kill:\n{group.log(name)}"
      proc.kill()
      proc.wait(timeout=30)
  capsys.readouterr()
  assert main(train_argv(killed, steps)) == 0  # the same command, rerun, finishes the run
  logs = [group.log("killed1", tail=100_000), capsys.readouterr().err]
  assert all("resuming" in log for log in logs), logs
  assert_resumed_as_uninterrupted(whole, killed, rows(whole), rows(killed), 24)


def test_sigterm_saves_the_current_step_and_exits_0(tmp_path):
  with children(tmp_path) as group:
    group.start("run", train_args(tmp_path / "run", "train.steps=5000"), cpu_env(1))
    assert wait_for_progress(group, "run")
    time.sleep(0.3)
    group.procs["run"].send_signal(signal.SIGTERM)
    codes = group.wait(timeout=60)
  log = group.log("run")
  assert codes["run"] == 0, log
  saved = re.search(r"stopped by SIGTERM: saved step (\d+)", log)
  assert saved, log
  step = int(saved.group(1))
  assert (tmp_path / "run" / "checkpoints" / str(step) / "_CHECKPOINT_METADATA").is_file()
  assert rows(tmp_path / "run")[-1]["step"] == step
  _, params = lmjax.load_run(tmp_path / "run")  # the saved step restores
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_a_second_sigterm_exits_at_once(tmp_path):
  with children(tmp_path) as group:
    group.start("run", train_args(tmp_path / "run", "train.steps=5000"), cpu_env(1))
    assert wait_for_progress(group, "run")
    group.procs["run"].send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30  # two signals sent at once arrive as one: wait in between
    while "SIGTERM received" not in group.log("run") and time.monotonic() < deadline:
      time.sleep(0.01)
    group.procs["run"].send_signal(signal.SIGTERM)
    codes = group.wait(timeout=60)
  assert codes["run"] == 128 + signal.SIGTERM, group.log("run")
  assert "second SIGTERM: exiting now" in group.log("run")


def test_a_truncated_newest_checkpoint_is_skipped_with_a_message(uninterrupted, tmp_path, capsys):
  run = shutil.copytree(uninterrupted, tmp_path / "run")
  # Every array data file of step 24 cut in half: its params and its optimizer state are damaged
  # (loading reads only the params, resuming everything; both must fall back).
  for victim in array_files(run / "checkpoints" / "24"):
    victim.write_bytes(victim.read_bytes()[:victim.stat().st_size // 2])
  capsys.readouterr()

  assert main(["checkpoints", str(run), "--verify"]) == 1  # a step is not restorable
  table = capsys.readouterr().out.splitlines()
  assert table[0].split() == ["step", "bytes", "data_position", "status"]
  listed = {int(line.split()[0]): line.split(maxsplit=3) for line in table[1:]}
  assert sorted(listed) == [18, 21, 24]
  assert all(int(size) > 0 and int(pos) == step for step, (_, size, pos, _) in listed.items())
  assert listed[21][3] == "restorable (verified)" and "NOT RESTORABLE" in listed[24][3]

  _, _, loaded_step = lmjax.run.load_run_at(run)  # loading falls back too
  assert loaded_step == 21
  assert "skipping checkpoint step 24" in capsys.readouterr().err

  assert main(train_argv(run, "train.steps=27")) == 0
  err = capsys.readouterr().err
  assert "skipping checkpoint step 24" in err and "resuming" in err and "from step 21" in err
  assert (run / "corrupt_checkpoints" / "24" / victim.relative_to(run / "checkpoints" / "24")
          ).is_file()  # moved aside, never deleted
  assert [r["step"] for r in rows(run)] == list(range(1, 28))


def test_a_nan_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
  run = tmp_path / "run"
  code = main(train_argv(run, "train.steps=9", "train.debug_nan_at_step=5"))
  err = capsys.readouterr().err
  assert code == 3, err
  assert "step 5: the loss is nan" in err and "params/" in err
  assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == [3]
  assert max(r["step"] for r in rows(run)) == 4


def test_skip_step_discards_a_nan_update_and_counts_it(tmp_path, capsys):
  run = tmp_path / "run"
  code = main(train_argv(run, "train.steps=9", "train.debug_nan_at_step=5",
                          "train.nan_policy=skip_step"))
  assert code == 0, capsys.readouterr().err
  skipped = {r["step"]: r["skipped_steps"] for r in rows(run)}
  assert skipped == {s: int(s >= 5) for s in range(1, 10)}
  _, params = lmjax.load_run(run)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


# What three children with 8 devices did, in one (each costs seconds of start-up): `lmjax
# train` the fsdp=8 run to step 3, copy it for the other meshes, then run each resume, its log
# after a line "== NAME".
_SAVE_COPY_RESUME = """
import json, shutil, sys
from lmjax.cli import main
save, saved, copies, resumes = json.loads(sys.argv[1])
if main(save) != 0:
  sys.exit(1)
for copy in copies:
  shutil.copytree(saved, copy)
for name, argv in resumes:
  print(f"== {name}", file=sys.stderr, flush=True)
  if main(argv) != 0:
    sys.exit(1)
"""


def test_a_checkpoint_saved_with_fsdp_on_8_devices_resumes_on_a_2x4_mesh_and_on_1_device(tmp_path,
                                                                                       capsys):
  saved, data2_tensor4, one_device = (tmp_path / name for name in
                                      ("fsdp8", "data2_tensor4", "one_device"))
  fsdp8 = ["mesh.data=1", "mesh.fsdp=8", "mesh.tensor=1"]
  plan = [train_argv(saved, "train.steps=3", *fsdp8), str(saved),
          [str(data2_tensor4), str(one_device)],
          [("fsdp8", train_argv(saved, "train.steps=6", *fsdp8)),
           ("data2_tensor4", train_argv(data2_tensor4, "train.steps=6", "mesh.data=2",
                                        "mesh.fsdp=1", "mesh.tensor=4"))]]
  with children(tmp_path) as group:
    group.start("child", ["-c", _SAVE_COPY_RESUME, json.dumps(plan)], cpu_env(8))
    group.check(timeout=300)
  log = group.log("child", tail=100_000)
  assert "== data2_tensor4\n" in log, log
  logs = {"data2_tensor4": log.split("== data2_tensor4\n")[1]}
  # One device is this process's: the same command, in-process.
  capsys.readouterr()
  assert main(train_argv(one_device, "train.steps=6", "mesh.data=1", "mesh.fsdp=1")) == 0
  logs["one_device"] = capsys.readouterr().err
  expected = [r["loss"] for r in rows(saved)]
  assert len(expected) == 6
  for name in ("data2_tensor4", "one_device"):
    assert "resuming" in logs[name], logs[name]
    np.testing.assert_allclose([r["loss"] for r in rows(tmp_path / name)], expected,
                               rtol=1e-5, err_msg=name)
