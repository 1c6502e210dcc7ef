"""Checkpoints that survive kill -9, signals, damaged files and NaNs, and restore on other meshes.

Process-level behaviour (kills, signals, exit codes, fake device counts) runs the real
`python -m lmjax` in children (tests/processes.py); the rest calls the same CLI entry point
in-process, which is the same code without paying JAX's start-up again.
"""

import json
import random
import re
import shutil
import signal
import time

import jax
import numpy as np

import lmjax
from lmjax.cli import main
from tests.conftest import TINY
from tests.helpers import assert_resumed_as_uninterrupted
from tests.processes import children, cpu_env


RUN = TINY + ["train.log_every=1", "train.checkpoint_every=3", "train.eval_every=0"]


def train_args(run_dir, *overrides, config="tiny-gpt"):
  return ["-m", "lmjax", "train", config, "--run-dir", str(run_dir), "--set", *RUN, *overrides]


def rows(run_dir):
  return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def wait_for_progress(group, name, timeout=120.0) -> bool:
  """True once child `name` has logged a training step; False if it exited first."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if re.search(r"^step \d+/", group.log(name, tail=100_000), re.MULTILINE):
      return True
    if group.procs[name].poll() is not None:
      return False
    time.sleep(0.05)
  raise AssertionError(f"{name} logged no step within {timeout}s:\n{group.log(name)}")


def array_files(step_dir):
  """The files holding a step's array data (OCDBT's `d/` data files)."""
  return [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]


def test_resume_after_repeated_kill_9_matches_an_uninterrupted_run(tmp_path):
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  steps, delays = "train.steps=90", random.Random(0)
  kills_while_running = 0
  with children(tmp_path) as group:
    group.start("whole", train_args(whole, steps), cpu_env(1))
    for attempt in range(3):
      name = f"killed{attempt}"
      group.start(name, train_args(killed, steps), cpu_env(1))
      if wait_for_progress(group, name):
        time.sleep(delays.uniform(0.8, 2.0))  # the first save (at step 3) takes ~1s
      proc = group.procs.pop(name)
      kills_while_running += proc.poll() is None
      proc.kill()
      proc.wait(timeout=30)
    group.start("finish", train_args(killed, steps), cpu_env(1))
    group.check(timeout=240)
  assert kills_while_running >= 2, "the kills came too late to interrupt the run"
  logs = [(tmp_path / f"{name}.log").read_text() for name in ("killed1", "killed2", "finish")]
  assert sum("resuming" in log for log in logs) >= 2, logs
  assert_resumed_as_uninterrupted(whole, killed, rows(whole), rows(killed), 90)


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


def test_a_truncated_newest_checkpoint_is_skipped_with_a_message(tmp_path, capsys):
  run = tmp_path / "run"
  assert main(["train", "tiny-gpt", "--run-dir", str(run), "--set", *RUN, "train.steps=9"]) == 0
  # Every array data file of step 9 cut in half: its params and its optimizer state are damaged
  # (loading reads only the params, resuming everything; both must fall back).
  for victim in array_files(run / "checkpoints" / "9"):
    victim.write_bytes(victim.read_bytes()[:victim.stat().st_size // 2])
  capsys.readouterr()

  assert main(["checkpoints", str(run), "--verify"]) == 1  # a step is not restorable
  table = capsys.readouterr().out.splitlines()
  assert table[0].split() == ["step", "bytes", "data_position", "status"]
  listed = {int(line.split()[0]): line.split(maxsplit=3) for line in table[1:]}
  assert sorted(listed) == [3, 6, 9]
  assert all(int(size) > 0 and int(pos) == step for step, (_, size, pos, _) in listed.items())
  assert listed[6][3] == "restorable (verified)" and "NOT RESTORABLE" in listed[9][3]

  _, _, loaded_step = lmjax.run.load_run_at(run)  # loading falls back too
  assert loaded_step == 6
  assert "skipping checkpoint step 9" in capsys.readouterr().err

  assert main(["train", "tiny-gpt", "--run-dir", str(run), "--set", *RUN, "train.steps=12"]) == 0
  err = capsys.readouterr().err
  assert "skipping checkpoint step 9" in err and "resuming" in err and "from step 6" in err
  assert (run / "corrupt_checkpoints" / "9" / victim.relative_to(run / "checkpoints" / "9")
          ).is_file()  # moved aside, never deleted
  assert [r["step"] for r in rows(run)] == list(range(1, 13))


def test_a_nan_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
  run = tmp_path / "run"
  code = main(["train", "tiny-gpt", "--run-dir", str(run), "--set", *RUN, "train.steps=9",
               "train.debug_nan_at_step=5"])
  err = capsys.readouterr().err
  assert code == 3, err
  assert "step 5: the loss is nan" in err and "params/" in err
  assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == [3]
  assert max(r["step"] for r in rows(run)) == 4


def test_skip_step_discards_a_nan_update_and_counts_it(tmp_path, capsys):
  run = tmp_path / "run"
  code = main(["train", "tiny-gpt", "--run-dir", str(run), "--set", *RUN, "train.steps=9",
               "train.debug_nan_at_step=5", "train.nan_policy=skip_step"])
  assert code == 0, capsys.readouterr().err
  skipped = {r["step"]: r["skipped_steps"] for r in rows(run)}
  assert skipped == {s: int(s >= 5) for s in range(1, 10)}
  _, params = lmjax.load_run(run)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_a_checkpoint_saved_with_fsdp_on_8_devices_resumes_on_a_2x4_mesh_and_on_1_device(tmp_path,
                                                                                       capsys):
  saved = tmp_path / "fsdp8"
  fsdp8 = ["mesh.data=1", "mesh.fsdp=8", "mesh.tensor=1"]
  with children(tmp_path) as group:
    group.start("save", train_args(saved, "train.steps=3", *fsdp8), cpu_env(8))
    group.check(timeout=180)
    for name in ("data2_tensor4", "one_device"):
      shutil.copytree(saved, tmp_path / name)
    group.start("fsdp8", train_args(saved, "train.steps=6", *fsdp8), cpu_env(8))
    group.start("data2_tensor4", train_args(tmp_path / "data2_tensor4", "train.steps=6",
                                            "mesh.data=2", "mesh.fsdp=1", "mesh.tensor=4"),
                cpu_env(8))
    # One device is this process's: the same command, in-process, while the children run.
    capsys.readouterr()
    assert main(train_args(tmp_path / "one_device", "train.steps=6", "mesh.data=1",
                           "mesh.fsdp=1")[2:]) == 0
    logs = {"one_device": capsys.readouterr().err}
    group.check(timeout=240)
  logs["data2_tensor4"] = group.log("data2_tensor4")
  expected = [r["loss"] for r in rows(saved)]
  assert len(expected) == 6
  for name in ("data2_tensor4", "one_device"):
    assert "resuming" in logs[name], logs[name]
    np.testing.assert_allclose([r["loss"] for r in rows(tmp_path / name)], expected,
                               rtol=1e-5, err_msg=name)
