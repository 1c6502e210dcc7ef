"""Child processes for tests that need fake devices or several JAX processes.

XLA fixes the number of fake CPU devices when JAX starts, so such tests run their JAX work in
children started here: every child has a deadline, writes its output to a log file (no pipe
to fill up and block it), and is killed when the test ends, however it ends.
"""

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

# XLA's CPU flags for every JAX process of the suite (tests/conftest.py sets them for pytest's
# own processes): compiling dominates these tiny models' tests, and both flags cut compile time
# without changing what any test compares (both sides of every comparison run with them).
# Level 0 skips LLVM's optimisation passes; the legacy fusion emitters compile about twice as
# fast as the MLIR ones on these models (the programs run a little slower, which tiny models do
# not notice).
XLA_CPU_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def cpu_env(num_devices: int, **extra: str) -> dict[str, str]:
  """The environment of a JAX child with `num_devices` fake CPU devices.

  XLA's compile-time flags are the suite's (XLA_CPU_FLAGS): they cost most of the compile
  time of these tiny models and change no result the tests compare (both sides of every
  comparison run with the same flags).
  """
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices} {XLA_CPU_FLAGS}",
             TF_CPP_MIN_LOG_LEVEL="2")  # keep XLA's partitioner warnings out of the logs
  env.update(extra)
  return env


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on right now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Children:
  """Started processes, each logging to `<log_dir>/<name>.log`."""

  def __init__(self, log_dir: pathlib.Path):
    self.log_dir = log_dir
    self.procs: dict[str, subprocess.Popen] = {}

  def start(self, name: str, args: list[str], env: dict[str, str]) -> None:
    log = open(self.log_dir / f"{name}.log", "w")
    self.procs[name] = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()

  def log(self, name: str, tail: int = 4000) -> str:
    return (self.log_dir / f"{name}.log").read_text(errors="replace")[-tail:]

  def wait(self, timeout: float) -> dict[str, int]:
    """Exit codes of all children; AssertionError with their logs if any outlives `timeout`."""
    deadline = time.monotonic() + timeout
    codes = {}
    for name, proc in self.procs.items():
      try:
        codes[name] = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        raise AssertionError(f"{name} still running after {timeout}s:\n{self.log(name)}") from None
    return codes

  def check(self, timeout: float) -> None:
    """Waits for all children and fails the test, with the log, on any non-zero exit."""
    for name, code in self.wait(timeout).items():
      assert code == 0, f"{name} exited with {code}:\n{self.log(name)}"

  def kill_all(self) -> None:
    for proc in self.procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)
    self.procs.clear()


@contextlib.contextmanager
def children(log_dir: pathlib.Path):
  """Yields a `Children`; whatever happens, every child it started is killed on exit."""
  group = Children(log_dir)
  try:
    yield group
  finally:
    group.kill_all()
