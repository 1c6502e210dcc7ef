"""One writer per directory (lmjax.lock): a second writer is refused naming the holder, a dead
holder's lock is broken with a message, and the lock is the file create-if-absent makes."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from lmjax.files import staged_directory
from lmjax.lock import LOCK_FILE, DirectoryLock, DirectoryLocked, _boot_id
from tests.conftest import TINY
from tests.helpers import run_cli
from tests.processes import ROOT, cpu_env


def test_a_second_writer_is_refused_naming_the_holder_until_it_releases(tmp_path):
  directory = tmp_path / "new" / "run"
  with DirectoryLock(directory) as first:
    record = json.loads((directory / LOCK_FILE).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert record["token"] == first.token and record["started"] <= record["heartbeat"]
    with pytest.raises(DirectoryLocked, match=f"in use by another lmjax process: pid "
                                              f"{os.getpid()} on host {socket.gethostname()}"):
      DirectoryLock(directory).acquire()
  assert not (tmp_path / "new").exists()  # what the lock created, it removed
  with DirectoryLock(directory):
    pass


def test_the_heartbeat_is_refreshed_while_the_lock_is_held(tmp_path):
  with DirectoryLock(tmp_path, heartbeat_seconds=0.05):
    time.sleep(0.3)
    record = json.loads((tmp_path / LOCK_FILE).read_text())
  assert record["heartbeat"] - record["started"] >= 0.1
  assert not (tmp_path / LOCK_FILE).exists() and tmp_path.is_dir()  # not ours to remove


@pytest.fixture
def warnings_logged(caplog):
  """What lmjax logs at WARNING and up (the `lmjax` command stops its logger propagating)."""
  logger = logging.getLogger("lmjax")
  logger.addHandler(caplog.handler)
  with caplog.at_level(logging.WARNING, logger="lmjax"):
    yield caplog
  logger.removeHandler(caplog.handler)


def _write_lock(directory, **fields):
  record = {"token": "theirs", "pid": 1, "host": "elsewhere", "boot_id": None,
            "process_start": None, "started": time.time(), "heartbeat": time.time(),
            "command": "lmjax train x", **fields}
  (directory / LOCK_FILE).write_text(json.dumps(record))


@pytest.mark.parametrize("fields, stale", [
    ({}, False),                                              # another host, heartbeat fresh
    ({"heartbeat": time.time() - 3600}, True),               # another host, heartbeat stopped
    ({"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid()}, False),
    ({"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
      "process_start": "1"}, True),                           # our pid, reused by another process
    ({"host": socket.gethostname(), "boot_id": "before-a-reboot", "pid": os.getpid(),
      "heartbeat": time.time() - 3600}, True),
])
def test_a_lock_is_broken_only_when_its_holder_is_gone(tmp_path, warnings_logged, fields,
                                                       stale):
  _write_lock(tmp_path, **fields)
  if not stale:
    with pytest.raises(DirectoryLocked, match="Wait for it to finish or stop it"):
      DirectoryLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == "theirs"
    return
  with DirectoryLock(tmp_path) as lock:
    assert lock.holds()
  assert "broke the stale lock of pid" in warnings_logged.text
  assert os.listdir(tmp_path) == []  # the stale file is gone too


def test_an_unreadable_lock_file_counts_as_held_until_it_is_old(tmp_path):
  (tmp_path / LOCK_FILE).write_text("{half a rec")
  with pytest.raises(DirectoryLocked, match="unreadable lock file"):
    DirectoryLock(tmp_path).acquire()
  os.utime(tmp_path / LOCK_FILE, (time.time() - 3600,) * 2)
  with DirectoryLock(tmp_path):
    pass


def test_a_staged_output_is_locked_while_written_and_the_lock_leaves_with_it(tmp_path):
  out = tmp_path / "export"
  with staged_directory(out) as staging:
    (staging / "weights").write_text("w")
    with pytest.raises(DirectoryLocked):
      with staged_directory(out):
        pass
  assert sorted(os.listdir(out)) == ["weights"]
  assert sorted(os.listdir(tmp_path)) == ["export"]  # no staging or lock left behind


def test_a_live_trainer_refuses_a_second_and_its_lock_is_broken_after_kill_9(
    tmp_path, capsys, warnings_logged):
  """Real processes: `lmjax train` holds the run directory; a second `lmjax train` on it exits
  2 naming the first; after the first is killed (SIGKILL: no cleanup ran), its lock is stale
  and the next writer breaks it with a message."""
  run_dir = tmp_path / "run"
  log = open(tmp_path / "holder.log", "w")
  holder = subprocess.Popen(
      [sys.executable, "-m", "lmjax", "train", "tiny-gpt", "--run-dir", str(run_dir), "--set",
       *TINY, "train.steps=100000"], cwd=ROOT, stdout=log,
      # killed mid-run: it must not be writing the compilation cache the suite shares
      env=cpu_env(1, JAX_ENABLE_COMPILATION_CACHE="false"),
      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 120
    while not (run_dir / LOCK_FILE).exists():
      assert holder.poll() is None, (tmp_path / "holder.log").read_text()
      assert time.monotonic() < deadline, "the trainer never took its lock"
      time.sleep(0.1)
    code, _, err = run_cli(capsys, "train", "tiny-gpt", "--run-dir", run_dir, "--set", *TINY)
    assert code == 2, err
    assert f"run directory {run_dir} is in use by another lmjax process: pid {holder.pid}" in err
    assert "lmjax train tiny-gpt" in err and "Traceback" not in err
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    log.close()
  assert (run_dir / LOCK_FILE).exists()  # SIGKILL: nothing removed it
  from lmjax.run import RunDir
  RunDir(run_dir).lock().release()
  assert (f"broke the stale lock of pid {holder.pid} on host {socket.gethostname()}"
          in warnings_logged.text)
  assert not (run_dir / LOCK_FILE).exists()



def test_a_trainer_whose_lock_is_taken_stops_before_writing_again(tmp_path, monkeypatch):
  """Another process judged this trainer stale (frozen past STALE_SECONDS, say) and took its
  run directory: at its next heartbeat the trainer finds the lock no longer its own, and stops
  at the next step with a message naming the new holder, writing no further row or
  checkpoint; the lock stays the new holder's."""
  import threading

  import lmjax.lock
  from lmjax.config import load_config
  from lmjax.errors import UserError
  from lmjax.train.loop import train
  from tests.helpers import rows
  monkeypatch.setattr(lmjax.lock, "HEARTBEAT_SECONDS", 0.05)
  run_dir = tmp_path / "run"
  taken = threading.Event()

  def take_over():  # what a second process's _break + create does, once step 10 is saved
    while not (run_dir / "checkpoints" / "10").is_dir():
      time.sleep(0.01)
    _write_lock(run_dir, command="lmjax train (the other one)")
    taken.set()

  thief = threading.Thread(target=take_over, daemon=True)
  thief.start()
  with pytest.raises(UserError, match="lost its lock to another process, which holds it now: "
                                      "pid 1 on host elsewhere"):
    train(load_config("tiny-gpt", TINY + ["train.steps=2000", "train.log_every=1",
                                          "train.checkpoint_every=10"]), run_dir)
  thief.join(timeout=10)
  assert taken.is_set()
  assert json.loads((run_dir / LOCK_FILE).read_text())["token"] == "theirs"
  written = max(r["step"] for r in rows(run_dir))
  saved = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
  assert written < 1000 and saved[-1] <= written  # stopped within a few steps of the taking
