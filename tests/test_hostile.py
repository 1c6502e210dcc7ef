"""The `lmjax` command under hostile inputs and faults: real tmp directories, a real size-limited
file system and real read-only mounts where the machine allows (root may mount), else a simulated
OSError at the write. Every case checks the exit code, one clear message and no traceback, and
that nothing already on disk changed.

Faults during training and each command's refusal of a damaged checkpoint run as a user runs
them, in real child processes with deadlines (the exit code and stderr of the process itself).
Refusals decided before any work starts (the run directory, the config, the resume policy, the
weights format) and the rerun after a fault call the same entry point, `lmjax.cli.main`, in this
process: the same code without paying the start-up of Python, JAX and PyTorch again for every
case. Tests that need a trained run start from a copy of one trained once (the session's
`trained_gpt`, this module's `twenty_steps`).
"""

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from lmjax.cli import main
from tests.conftest import TINY
from tests.helpers import tree_digest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEADLINE = 240  # seconds; a hang (the failure mode these tests guard against) fails the test

# Runs `lmjax` with a fault injected at orbax's CheckpointManager.save from its Nth call on:
# "enospc" raises what a full disk raises (for machines where no small file system can be
# mounted); "readonly" makes the checkpoints directory read-only first (remounting the bind
# mount the test made, as root; chmod otherwise), so that the real save fails mid-run.
_FAULTY_SAVE = """
import errno, os, subprocess, sys
import orbax.checkpoint as ocp
fault, fail_from, calls = sys.argv.pop(1), int(sys.argv.pop(1)), [0]
real_save = ocp.CheckpointManager.save
def save(self, step, *args, **kwargs):
  calls[0] += 1
  if calls[0] >= fail_from and fault == "enospc":
    raise OSError(errno.ENOSPC, "No space left on device", str(self.directory))
  if calls[0] == fail_from and fault == "readonly":
    if os.geteuid() == 0:
      subprocess.run(["mount", "-o", "remount,ro,bind", str(self.directory)], check=True)
    else:
      os.chmod(self.directory, 0o555)
  return real_save(self, step, *args, **kwargs)
ocp.CheckpointManager.save = save
from lmjax.cli import main
sys.exit(main(sys.argv[1:]))
"""


def lmjax(*argv, timeout=DEADLINE, prefix=()):
  """`python -m lmjax ARGV` in a child process; (exit code, stdout, stderr)."""
  start = time.monotonic()
  result = subprocess.run([sys.executable, *prefix, *(["-m", "lmjax"] if not prefix else []),
                           *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
  result.seconds = time.monotonic() - start
  return result


def train(run_dir, *overrides, flags=(), prefix=()):
  return lmjax("train", "tiny-gpt", "--run-dir", run_dir, *flags, "--set", *TINY, *overrides,
               prefix=prefix)


def lmjax_here(capsys, *argv):
  """`lmjax ARGV` through its entry point in this process: (exit code, stdout, stderr) in the
  shape `lmjax` gives them. An exception escaping `main` fails the test with its traceback."""
  capsys.readouterr()
  code = main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return subprocess.CompletedProcess(argv, code, out, err)


def train_here(capsys, run_dir, *overrides, flags=()):
  return lmjax_here(capsys, "train", "tiny-gpt", "--run-dir", run_dir, *flags, "--set", *TINY,
                    *overrides)


def assert_refused(result, code, *phrases):
  """Exit `code`, the message on stderr naming every phrase, no traceback."""
  assert result.returncode == code, result.stderr[-3000:]
  assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
  for phrase in phrases:
    assert phrase in result.stderr, result.stderr[-3000:]


def step_digests(run_dir):
  checkpoints = pathlib.Path(run_dir) / "checkpoints"
  return {p.name: tree_digest(p) for p in checkpoints.iterdir() if p.name.isdigit()}


# -- mounts (root only) ----------------------------------------------------------------------


def _mount(*args) -> bool:
  if os.geteuid() != 0 or not shutil.which("mount"):
    return False
  return subprocess.run(["mount", *args], capture_output=True, timeout=30).returncode == 0


@contextlib.contextmanager
def small_file_system(path: pathlib.Path, size: str):
  """A tmpfs of `size` at `path`, or None where this machine cannot mount one."""
  path.mkdir(parents=True, exist_ok=True)
  mounted = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
  try:
    yield path if mounted else None
  finally:
    if mounted:
      subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@contextlib.contextmanager
def bind_mounted(path: pathlib.Path):
  """`path` bind-mounted on itself as root (so that a child can remount it read-only); yields
  whether that worked, or True for a non-root user (who can chmod instead)."""
  if os.geteuid() != 0:
    yield True
    path.chmod(0o755)
    return
  mounted = _mount("--bind", str(path), str(path))
  try:
    yield mounted
  finally:
    if mounted:
      subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@contextlib.contextmanager
def read_only(path: pathlib.Path):
  """`path` made read-only: a read-only bind mount as root, chmod otherwise; yields whether
  writes to it now fail."""
  if os.geteuid() != 0:
    mode = path.stat().st_mode
    path.chmod(0o555)
    try:
      yield True
    finally:
      path.chmod(mode)
    return
  with bind_mounted(path) as mounted:
    yield mounted and _mount("-o", "remount,ro,bind", str(path))


def fill(directory: pathlib.Path, leave: int) -> pathlib.Path:
  """Writes a file in `directory` until its file system has about `leave` bytes free."""
  filler = directory / "filler"
  free = shutil.disk_usage(directory).free - leave
  with open(filler, "wb") as f:
    with contextlib.suppress(OSError):
      f.write(b"\0" * max(free, 0))
  return filler


# -- checkpoint writes the disk refuses ------------------------------------------------------


@pytest.fixture(scope="module")
def twenty_steps(tmp_path_factory):
  """A run trained to step 20, with steps 10 and 20 saved: tests copy it, never change it."""
  run = tmp_path_factory.mktemp("twenty") / "run"
  assert main(["train", "tiny-gpt", "--run-dir", str(run), "--set", *TINY, "train.steps=20"]) == 0
  return run


def test_a_full_disk_stops_training_at_the_failed_save_and_a_rerun_resumes(twenty_steps, tmp_path,
                                                                          capsys):
  with small_file_system(tmp_path / "fs", "16m") as fs:
    run = (fs or tmp_path) / "run"
    shutil.copytree(twenty_steps, run)  # the setting; the faults run in children
    before = step_digests(run)
    if fs is not None:  # room for config.yaml and the metrics, not for a checkpoint
      filler = fill(fs, leave=64 * 1024)
      result = train(run, "train.steps=40")
    else:
      result = train(run, "train.steps=40", prefix=("-c", _FAULTY_SAVE, "enospc", "1"))
    assert_refused(result, 4, "could not write checkpoint step 30", "No space left on device",
                   "steps 10, 20 are intact", "rerun the same command")
    assert step_digests(run) == before
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 30  # it stopped there, rather than train on unsaved
    if fs is not None:
      filler.unlink()
    resumed = train_here(capsys, run, "train.steps=40")  # a rerun is no fault: in-process
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr and "from step 20" in resumed.stderr
    assert sorted(map(int, step_digests(run))) == [20, 30, 40]


def test_a_checkpoints_directory_turning_read_only_ends_promptly_naming_step_and_cause(
    trained_gpt, tmp_path):
  run = shutil.copytree(trained_gpt, tmp_path / "run")
  before = step_digests(run)
  with bind_mounted(run / "checkpoints") as can_turn_read_only:
    fault = "readonly" if can_turn_read_only else "enospc"
    result = train(run, "train.steps=30", prefix=("-c", _FAULTY_SAVE, fault, "1"))
  # Orbax's commit threads used to keep the process alive for ten minutes after this failure.
  assert result.seconds < DEADLINE / 2
  assert_refused(result, 4, "could not write checkpoint step 20", "step 10 is intact")
  assert any(cause in result.stderr for cause in
             ("Read-only file system", "Permission denied", "No space left on device"))
  assert step_digests(run) == before


def test_the_orbax_internals_that_release_a_failed_saves_threads_are_still_there():
  """lmjax.run.orbax_errors.release_orbax_threads works around Orbax having no public way to
  end the commit threads of a save that failed at once (they keep the process alive for 10
  minutes): this fails as soon as an Orbax upgrade moves what it uses."""
  from lmjax.run.orbax_errors import orbax_signal_internals
  thread_class, client, signal_key = orbax_signal_internals()
  assert callable(getattr(thread_class, "cancel", None)) and callable(signal_key)
  assert callable(getattr(client, "key_value_set", None))


def test_an_unwritable_checkpoints_directory_is_refused_before_training(trained_gpt, tmp_path,
                                                                        capsys):
  run = shutil.copytree(trained_gpt, tmp_path / "run")
  before = tree_digest(run)
  with read_only(run / "checkpoints") as refused:
    if not refused:
      pytest.skip("cannot make a directory read-only on this machine (root without mount)")
    result = train_here(capsys, run, "train.steps=20")
  assert_refused(result, 2, "checkpoints is not writable")
  assert tree_digest(run) == before


# -- the run directory -----------------------------------------------------------------------


@pytest.mark.parametrize("make, phrase", [
    (lambda d: (d.write_text("not a directory"), d)[1], "is a file, not a directory"),
    (lambda d: (d.mkdir(), (d / "notes.txt").write_text("mine"), d)[2],
     "is not empty and is not an lmjax run directory"),
    (lambda d: (d.write_text("x"), d / "run")[1], "is a file, not a directory"),
])
def test_run_directory_mistakes_are_refused_and_touch_nothing(tmp_path, capsys, make, phrase):
  run = make(tmp_path / "target")
  before = tree_digest(tmp_path)
  assert_refused(train_here(capsys, run, "train.steps=2"), 2, phrase)
  assert tree_digest(tmp_path) == before


def test_an_unwritable_run_directory_is_refused_before_anything_runs(tmp_path, capsys):
  parent = tmp_path / "parent"
  parent.mkdir()
  with read_only(parent) as refused:
    if not refused:
      pytest.skip("cannot make a directory read-only on this machine (root without mount)")
    assert_refused(train_here(capsys, parent / "run", "train.steps=2"), 2, "is not writable",
                   str(parent))
  assert not (parent / "run").exists()


def test_a_failed_start_leaves_nothing_and_the_corrected_retry_runs(tmp_path, capsys):
  pickled = tmp_path / "pickled"
  pickled.mkdir()
  (pickled / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle: never loaded
  run = tmp_path / "run"
  result = train_here(capsys, run, "train.steps=2", f"model.init_from={pickled}")
  assert_refused(result, 2, "pickled PyTorch weights", "lmjax convert hf-to-lmjax")
  assert "--allow-pickle`" in result.stderr  # named as hf-to-lmjax's flag, not train's
  assert not run.exists()
  assert_refused(train_here(capsys, run, "train.steps=2", "data.source=text",
                            f"data.paths=[{tmp_path}/nothing/*.txt]"), 2, "nothing/*.txt")
  assert not run.exists()
  assert train_here(capsys, run, "train.steps=2").returncode == 0


def test_generate_on_pickled_weights_names_a_flag_that_exists(tmp_path, capsys):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
  (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
  result = lmjax_here(capsys, "generate", "--hf", tmp_path, "--prompt", "x")
  assert_refused(result, 2, "pickled PyTorch weights", "lmjax convert hf-to-lmjax")
  assert "--allow-pickle`" in result.stderr  # hf-to-lmjax's flag; generate has none


def test_a_config_that_is_not_utf8_is_refused_by_name(tmp_path, capsys):
  config = tmp_path / "latin1.yaml"
  config.write_bytes("train:\n  steps: 3  # r\xe9sum\xe9\n".encode("latin-1"))
  assert_refused(lmjax_here(capsys, "train", config, "--run-dir", tmp_path / "run"), 2,
                 str(config), "UTF-8")


# -- the resume policy -----------------------------------------------------------------------


def test_resume_applies_schedule_changes_and_refuses_trajectory_changes(trained_gpt, tmp_path,
                                                                         capsys):
  run = shutil.copytree(trained_gpt, tmp_path / "run")
  before = tree_digest(run)
  refused = train_here(capsys, run, "train.steps=20", "train.learning_rate=0.01", "train.seed=7",
                       "train.batch_size=4")
  assert_refused(refused, 2, "train.learning_rate: 0.003 -> 0.01", "train.seed: 0 -> 7",
                 "train.batch_size: 8 -> 4", "--allow-config-change")
  assert tree_digest(run) == before  # config.yaml and everything else untouched
  assert_refused(train_here(capsys, run, "train.steps=20", "data.tokenizer=bpe",
                            flags=("--allow-config-change",)), 2, "another tokenizer")
  assert_refused(train_here(capsys, run, "train.steps=20", "model.num_layers=3"), 2,
                 "different model")
  assert tree_digest(run) == before

  schedule = train_here(capsys, run, "train.steps=15", "train.log_every=3")
  assert schedule.returncode == 0, schedule.stderr[-3000:]
  allowed = train_here(capsys, run, "train.steps=20", "train.log_every=3",
                       "train.learning_rate=0.01", flags=("--allow-config-change",))
  assert allowed.returncode == 0, allowed.stderr[-3000:]
  history = [json.loads(line) for line in (run / "config_history.jsonl").read_text().splitlines()]
  assert [h["resumed_from_step"] for h in history] == [10, 15]
  assert history[0]["changes"] == {"train.steps": [10, 15], "train.log_every": [5, 3]}
  assert not history[0]["allow_config_change"]
  assert history[1]["changes"]["train.learning_rate"] == [0.003, 0.01]
  assert history[1]["allow_config_change"]
  assert "learning_rate: 0.01" in (run / "config.yaml").read_text()


# -- damaged checkpoints named by the user ---------------------------------------------------


@pytest.fixture(scope="module")
def damaged_run(twenty_steps, tmp_path_factory):
  """A run with steps 10 and 20 whose step 20 has its array files truncated."""
  run = shutil.copytree(twenty_steps, tmp_path_factory.mktemp("damaged") / "run")
  for data in (run / "checkpoints" / "20" / "state").rglob("d/*"):  # params and optimizer
    with open(data, "r+b") as f:
      f.truncate(data.stat().st_size // 2)
  return run


@pytest.mark.parametrize("command", [
    ["generate", "--run-dir", "{run}", "--step", "20", "--prompt", "def", "--max-new-tokens", "4"],
    ["eval", "tiny-gpt", "--run-dir", "{run}", "--step", "20", "--set", *TINY],
    ["convert", "lmjax-to-hf", "{run}", "{out}", "--step", "20"],
])
def test_a_damaged_step_named_by_the_user_is_explained(damaged_run, tmp_path, command):
  before = tree_digest(damaged_run)
  argv = [a.format(run=damaged_run, out=tmp_path / "hf") for a in command]
  assert_refused(lmjax(*argv), 2, "checkpoint step 20", "is damaged", "look intact: 10")
  assert tree_digest(damaged_run) == before and not (tmp_path / "hf").exists()


@pytest.mark.parametrize("verify", [False, True])
def test_checkpoints_listing_exits_non_zero_naming_the_damaged_step(damaged_run, verify):
  result = lmjax("checkpoints", damaged_run, *(["--verify"] if verify else []))
  assert_refused(result, 1, "step(s) 20 cannot be restored")
  rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
  assert "NOT RESTORABLE" in rows["20"] and "NOT RESTORABLE" not in rows["10"]
  if not verify:  # the cheap check compares sizes with those recorded at the write
    assert "changed since written" in rows["20"]


def test_convert_verify_refuses_pickled_weights(damaged_run, tmp_path, capsys):
  (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
  (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
  assert_refused(lmjax_here(capsys, "convert", "verify", tmp_path, damaged_run), 2,
                 "pickled PyTorch weights")


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_jsonl_is_strict_json_when_a_loss_is_nan(tmp_path, capsys):
  run = tmp_path / "run"
  result = train_here(capsys, run, "train.steps=5", "train.nan_policy=skip_step",
                      "train.debug_nan_at_step=5")
  assert result.returncode == 0, result.stderr[-3000:]

  def no_constants(name):
    raise AssertionError(f"metrics.jsonl holds a bare {name}")
  rows = [json.loads(line, parse_constant=no_constants)
          for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 5 and rows[-1]["loss"] is None and rows[-1]["skipped_steps"] == 1



# -- sizes that cannot fit -----------------------------------------------------------------------


def test_a_model_whose_train_state_cannot_fit_is_refused_naming_the_size_and_the_knobs(
    tmp_path, capsys):
  from tests.helpers import run_cli
  run = tmp_path / "run"
  code, _, err = run_cli(capsys, "train", "tiny-gpt", "--run-dir", run, "--set", *TINY,
                         "model.embed_dim=100000000")
  assert code == 2 and "Traceback" not in err, err
  assert "the train state (params, optimizer state and gradients) needs at least" in err
  assert "EiB per device, more than the" in err and "model.embed_dim" in err
  assert not run.exists()


@pytest.mark.parametrize("batch_size", ["1000000000000", "1e400"])
def test_a_batch_whose_activations_cannot_fit_is_refused_before_any_row_is_placed(
    tmp_path, capsys, batch_size):
  from tests.helpers import run_cli
  run = tmp_path / "run"
  code, _, err = run_cli(capsys, "train", "tiny-gpt", "--run-dir", run, "--set", *TINY,
                         f"train.batch_size={batch_size}")
  assert code == 2 and "Traceback" not in err, err
  assert "one micro-batch's activations (the residual stream kept at every layer" in err
  assert "per device, more than the" in err and "train.grad_accum_steps" in err
  assert not run.exists()


def test_generation_is_bounded_by_the_context_and_the_kv_cache_by_memory():
  import dataclasses
  from lmjax.config import load_config
  from lmjax.errors import UserError
  from lmjax.infer import generate
  from lmjax.model import Transformer
  config = load_config("tiny-llama", TINY).model  # RoPE: no learned positions to run out of
  with pytest.raises(UserError, match=r"max_new_tokens=1000000000 is more than this model's "
                                      r"context \(model.max_seq_len=64 positions\): lower "
                                      r"--max-new-tokens to at most 64"):
    generate(Transformer(config), None, [[1, 2]], max_new_tokens=10**9)
  long = Transformer(dataclasses.replace(config, max_seq_len=2**22))
  with pytest.raises(UserError, match=r"the KV cache of 1024 sequence\(s\) of \d+ \+ 4194304 tokens "
                                      r"needs at least .* TiB per device.*lower --max-new-tokens"):
    generate(long, None, [[1, 2]] * 1024, max_new_tokens=2**22)


def test_a_held_out_batch_that_cannot_fit_is_refused_before_the_checkpoint_loads(
    trained_gpt, capsys):
  from tests.helpers import run_cli
  code, out, err = run_cli(capsys, "eval", "tiny-gpt", "--run-dir", trained_gpt, "--set", *TINY,
                           "train.batch_size=1000000000000")
  assert code == 2 and "Traceback" not in err and not out, err
  assert "the params and one held-out batch's activations" in err
  assert "per device, more than the" in err and "train.batch_size" in err


def test_a_file_this_user_may_not_read_is_a_user_error_not_a_refused_write(tmp_path):
  """Exit 4 is for writes the storage refuses; a config this user may not read is a path to
  fix: exit 2. Root reads everything, so as root the child runs without the capabilities that
  override file permissions (util-linux's setpriv), as any other user would."""
  import shutil
  import subprocess
  import sys

  from tests.processes import ROOT, cpu_env
  config = tmp_path / "secret.yaml"
  config.write_text("model:\n  preset: tiny-gpt\n")
  config.chmod(0)
  command = [sys.executable, "-m", "lmjax", "train", str(config), "--run-dir",
             str(tmp_path / "run")]
  if os.geteuid() == 0:
    assert shutil.which("setpriv"), "util-linux's setpriv runs this test as root"
    drop = "-dac_override,-dac_read_search"
    command = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", *command]
  result = subprocess.run(command, cwd=ROOT, env=cpu_env(1), capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 2, result.stderr
  assert f"Permission denied: '{config}': this user may not read it" in result.stderr
  assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
