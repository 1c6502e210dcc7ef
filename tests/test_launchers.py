"""The pod launchers in train/: what they would run, and their refusals."""

import os
import pathlib
import shlex
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent


def launch_tpu(*args, dry_run=True):
  env = {**os.environ, **({"DRY_RUN": "1"} if dry_run else {})}
  return subprocess.run(["bash", str(ROOT / "train" / "launch_tpu.sh"), *args], env=env,
                        capture_output=True, text=True, timeout=30)


def test_the_tpu_launcher_runs_one_command_on_every_worker():
  result = launch_tpu("my-tpu", "us-central2-b", "configs/gpt2-small.yaml", "/mnt/runs/a b",
                      "--set", "mesh.fsdp=-1")
  assert result.returncode == 0, result.stderr
  command = shlex.split(result.stdout)
  assert command[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  assert "--worker=all" in command and "--zone=us-central2-b" in command
  remote = shlex.split(next(c for c in command if c.startswith("--command="))[len("--command="):])
  assert remote[remote.index("train/train.py") + 1] == "configs/gpt2-small.yaml"
  assert remote[remote.index("--run-dir") + 1] == "/mnt/runs/a b"  # quoted for the remote shell
  assert remote[remote.index("--set") + 1] == "mesh.fsdp=-1"


def test_the_tpu_launcher_without_its_arguments_says_how_to_call_it():
  result = launch_tpu("my-tpu")
  assert result.returncode == 2
  assert "launch_tpu.sh TPU_NAME ZONE CONFIG RUN_DIR" in result.stderr


def test_the_slurm_script_parses_and_says_how_to_submit_it():
  script = ROOT / "train" / "slurm.sbatch"
  assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
  result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
  assert result.returncode != 0 and "usage: sbatch train/slurm.sbatch CONFIG RUN_DIR" in \
      result.stderr
