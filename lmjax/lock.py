"""An exclusive lock on a directory that lmjax writes: a run directory, a conversion's output.

    DIR/.lmjax.lock   {"token", "pid", "host", "boot_id", "process_start", "started",
                       "heartbeat", "command"} (JSON)

One writer at a time: `lmjax train` (a new run or a resume), `convert hf-to-lmjax` into a run
directory, every export and `lmjax data` into their output (through lmjax.files.
staged_directory). Readers (generate, eval, export from a run) take no lock.

The lock is the file itself, created with O_CREAT|O_EXCL: create-if-absent, which local disks
and shared file systems (NFS, Lustre, GPFS; where `flock` is absent or advisory only) honour,
and which object storage offers as a conditional write (GCS `ifGenerationMatch=0`, S3
`If-None-Match: *`), so the same protocol carries over to a bucket. No `flock` is used. While
held, a daemon thread rewrites the file's `heartbeat` (unix seconds) every HEARTBEAT_SECONDS.

A lock whose holder is gone is stale, and broken with a warning naming the holder:
- on the same host (same hostname and boot id): its pid is not running, or runs a process that
  started at another time (a reused pid);
- on another host, or this host before a reboot: its heartbeat is older than STALE_SECONDS.
A live holder is refused with `DirectoryLocked` (a UserError, exit 2) naming its pid, host,
start time and command. Breaking renames the stale file aside first and checks it is the one
judged stale, so two processes breaking the same lock never remove a fresh one.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
import socket
import sys
import threading
import time
import uuid
from typing import Any

from lmjax.errors import UserError
from lmjax.storage import Path, as_path, create_exclusive, is_remote

log = logging.getLogger(__name__)

LOCK_FILE = ".lmjax.lock"
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 300.0  # a heartbeat this old on another host: its holder is gone


class DirectoryLocked(UserError):
  """Another live process holds the directory's lock (exit code 2, a user's situation)."""


def _read_text(path: str) -> str | None:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read().strip()
  except OSError:
    return None


def _boot_id() -> str | None:
  return _read_text("/proc/sys/kernel/random/boot_id")


def _process_start(pid: int) -> str | None:
  """The start time of process `pid` in clock ticks since boot (Linux), None if unknown."""
  stat = _read_text(f"/proc/{pid}/stat")
  if stat is None:
    return None
  fields = stat[stat.rfind(")") + 2:].split()  # after the command name, which may hold spaces
  return None if fields[0] == "Z" else fields[19]  # a zombie has ended: no start time to match


def _pid_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  stat = _read_text(f"/proc/{pid}/stat")
  return stat is None or stat[stat.rfind(")") + 2:][:1] != "Z"


def _command() -> str:
  """This process's command line as the user typed it (`lmjax train …`, also for -m lmjax)."""
  program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
  program = "lmjax" if program in ("__main__.py", "lmjax") else program
  return " ".join([program, *sys.argv[1:]])[:300]


def _holder_record(token: str) -> dict[str, Any]:
  now = time.time()
  return {"token": token, "pid": os.getpid(), "host": socket.gethostname(),
          "boot_id": _boot_id(), "process_start": _process_start(os.getpid()), "started": now,
          "heartbeat": now, "command": _command()}


def describe(holder: dict[str, Any]) -> str:
  """'pid 123 on host h, started 2026-01-02 03:04:05 UTC, heartbeat 4s ago (lmjax train …)'."""
  def when(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC") if isinstance(t, (int, float)) else "?"
  age = (f", heartbeat {time.time() - holder['heartbeat']:.0f}s ago"
         if isinstance(holder.get("heartbeat"), (int, float)) else "")
  command = f" ({holder['command']})" if holder.get("command") else ""
  return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
          f"{when(holder.get('started'))}{age}{command}")


def is_stale(holder: dict[str, Any], *, stale_seconds: float = STALE_SECONDS) -> bool:
  """Whether the process that wrote lock record `holder` is gone (see the module docstring)."""
  same_boot = (holder.get("host") == socket.gethostname()
               and holder.get("boot_id") == _boot_id())
  pid = holder.get("pid")
  if same_boot and isinstance(pid, int):
    if not _pid_running(pid):
      return True
    started = holder.get("process_start")
    return started is not None and _process_start(pid) not in (None, started)
  heartbeat = holder.get("heartbeat")
  return not isinstance(heartbeat, (int, float)) or time.time() - heartbeat > stale_seconds


class DirectoryLock:
  """The lock on `directory` (created, with its parents, when missing; removed on release when
  this lock created it and it is empty again). Use as a context manager, or acquire/release."""

  def __init__(self, directory: str | os.PathLike, *, what: str = "",
               heartbeat_seconds: float | None = None, stale_seconds: float | None = None):
    self.directory = as_path(directory)
    self.remote = is_remote(self.directory)
    self.file = self.directory / LOCK_FILE
    self.what = what or str(self.directory)
    # None: the module's settings, read now (a test may shorten them)
    self.heartbeat_seconds = HEARTBEAT_SECONDS if heartbeat_seconds is None else heartbeat_seconds
    self.stale_seconds = STALE_SECONDS if stale_seconds is None else stale_seconds
    self.token = uuid.uuid4().hex
    self._created: list[pathlib.Path] = []  # the directories acquire made, deepest first
    self._stop = threading.Event()
    self._lost = threading.Event()  # set when the heartbeat finds the file is no longer ours
    self._thread: threading.Thread | None = None
    self._io = threading.Lock()  # the heartbeat never writes while the file moves

  def __enter__(self) -> DirectoryLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> DirectoryLock:
    """Takes the lock, breaking a stale one; DirectoryLocked when a live process holds it."""
    if not self.remote and not self.directory.is_dir():  # a bucket has no directories to make
      absolute = self.directory.absolute()
      self._created = [p for p in (absolute, *absolute.parents) if not p.exists()]
      self.directory.mkdir(parents=True)  # FileExistsError if a file is there: the caller's
    try:
      for _ in range(5):  # each round either takes the lock or breaks a stale one
        if self._create():
          self._start_heartbeat()
          return self
        holder = self._read(self.file)
        if holder is None:  # released between our attempt and the read
          continue
        if not self._stale(holder):
          raise DirectoryLocked(
              f"{self.what} is in use by another lmjax process: {describe(holder)}. Wait for it "
              f"to finish or stop it. If it is gone (its host crashed) and no process writes "
              f"there, delete {self.file} and rerun.")
        self._break(holder)
      raise DirectoryLocked(f"{self.what}: could not take {self.file} (other processes keep "
                            f"taking it): rerun when they are done.")
    except BaseException:
      self._remove_created_directory()
      raise

  def _create(self) -> bool:
    return create_exclusive(self.file, json.dumps(_holder_record(self.token)))

  def _read(self, path: Path) -> dict[str, Any] | None:
    """The lock record at `path`; None when no file is there. A file that is not a record
    (half written, or damaged) reads as a holder known by its age only."""
    try:
      text = path.read_text(encoding="utf-8")
      mtime = path.stat().st_mtime if not self.remote else time.time()
    except FileNotFoundError:
      return None
    try:
      record = json.loads(text)
      if isinstance(record, dict):
        return record
    except ValueError:
      pass
    return {"heartbeat": mtime, "token": None, "command": f"unreadable lock file {path}"}

  def _stale(self, holder: dict[str, Any]) -> bool:
    return is_stale(holder, stale_seconds=self.stale_seconds)

  def _break(self, holder: dict[str, Any]) -> None:
    """Moves the stale lock aside; removes it if it is the one judged stale, else puts back
    the fresh lock it turned out to be (create-if-absent again, so nothing is overwritten).
    A bucket has no rename: there the file is read again and removed only if it still is the
    one judged stale (a fresh holder in the moment between could lose its lock: its heartbeat
    then reports it)."""
    if self.remote:
      again = self._read(self.file)
      if again is not None and again.get("token") == holder.get("token"):
        self.file.unlink(missing_ok=True)
        log.warning("%s: broke the stale lock of %s, which is no longer running.", self.what,
                    describe(holder))
      return
    aside = self.file.with_name(f"{LOCK_FILE}.stale-{uuid.uuid4().hex[:8]}")
    try:
      os.rename(self.file, aside)
    except FileNotFoundError:  # another process broke it first
      return
    moved = self._read(aside)
    if moved is not None and moved.get("token") == holder.get("token"):
      log.warning("%s: broke the stale lock of %s, which is no longer running.", self.what,
                  describe(holder))
    else:
      try:
        os.link(aside, self.file)
      except OSError:
        pass
    aside.unlink(missing_ok=True)

  def _start_heartbeat(self) -> None:
    self._thread = threading.Thread(target=self._beat, name="lmjax-lock-heartbeat", daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_seconds):
      with self._io:
        if self._stop.is_set():
          return
        if not self.holds():
          self._lost.set()  # the writer reads `lost` before its next write and stops there
          log.error("%s: this process lost its lock %s (another process broke or replaced it).",
                    self.what, self.file)
          return
        record = self._read(self.file) or {}
        record["heartbeat"] = time.time()
        try:
          if self.remote:  # an object is replaced whole (holds() just saw it there)
            self.file.write_text(json.dumps(record), encoding="utf-8")
          else:
            with open(self.file, "r+", encoding="utf-8") as f:  # never creates the file
              f.write(json.dumps(record))
              f.truncate()
        except Exception as e:  # noqa: BLE001 -- a disk's or a bucket client's error: warned
          log.warning("%s: could not refresh the lock's heartbeat (%s)", self.what, e)

  @property
  def lost(self) -> bool:
    """Whether the heartbeat found the lock taken from this process (by a process that judged
    it stale: e.g. this one was frozen past STALE_SECONDS). A writer checks it before writing,
    and stops: the directory is the other process's now."""
    return self._lost.is_set()

  def lost_error(self) -> UserError:
    """The refusal a writer raises once `lost`, naming the lock's new holder."""
    holder = self._read(self.file)
    now = describe(holder) if holder is not None else "no process (the lock file is gone)"
    return UserError(
        f"{self.what}: this process lost its lock to another process, which holds it now: "
        f"{now}. Stopped before writing again, so that two writers never mix one directory; "
        f"what was written before stays. Rerun once the other process is done.")

  def holds(self) -> bool:
    """Whether the lock file is this lock's."""
    record = self._read(self.file)
    return record is not None and record.get("token") == self.token

  def relocate(self, directory: pathlib.Path) -> None:
    """Moves the held lock file into `directory` (a staged directory about to be renamed over
    this one: the lock travels with it), and stops the heartbeat; `follow` then names where."""
    self._stop_heartbeat()
    os.rename(self.file, directory / LOCK_FILE)
    self.file = directory / LOCK_FILE

  def follow(self, directory: pathlib.Path) -> None:
    """The lock file is now in `directory`, which is no longer this lock's to remove."""
    self.directory, self.file = directory, directory / LOCK_FILE
    self._created = []

  def _stop_heartbeat(self) -> None:
    with self._io:
      self._stop.set()
    if self._thread is not None:
      self._thread.join()

  def release(self) -> None:
    """Removes the lock file (if it is still this lock's) and a directory this lock created
    that is empty again."""
    self._stop_heartbeat()
    if self.holds():
      self.file.unlink(missing_ok=True)
    self._remove_created_directory()

  def _remove_created_directory(self) -> None:
    for directory in self._created:
      try:
        directory.rmdir()
      except OSError:  # not empty: the run's files are there
        break
    self._created = []


__all__ = ["LOCK_FILE", "DirectoryLock", "DirectoryLocked", "describe", "is_stale"]
