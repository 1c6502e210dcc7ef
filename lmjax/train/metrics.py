"""Where metrics go: metrics.jsonl, TensorBoard events, Weights & Biases (when configured) and a
live progress bar; MFU.

Only process 0 writes. MFU divides achieved model FLOPs by the device's published dense peak
for the compute dtype; devices missing from the table report `mfu: null` rather than a guess.
metrics.jsonl is strict JSON: a non-finite value (a NaN loss, say) is written as null.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Any, Mapping

import jax
import tqdm

from lmjax.config import WandbConfig
from lmjax.storage import REMOTE_SCHEMES, open_append
from lmjax.train.wandb_logger import WandbLogger

# How the progress line names its fields.
_SHORT = {"tokens_per_second": "tok/s", "eval_accuracy": "eval_acc", "eval_macro_f1": "eval_f1"}

# Dense peak FLOP/s per chip by compute dtype, from the vendors' spec sheets. Keys are matched
# as substrings of `device.device_kind`, most specific first.
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bfloat16": 989e12, "float32": 67e12}),
    ("H100", {"bfloat16": 989e12, "float32": 67e12}),
    ("A100", {"bfloat16": 312e12, "float32": 19.5e12}),
    ("L4", {"bfloat16": 121e12, "float32": 30.3e12}),
    ("TPU v6", {"bfloat16": 918e12}),
    ("TPU v5p", {"bfloat16": 459e12}),
    ("TPU v5 lite", {"bfloat16": 197e12}),
    ("TPU v5e", {"bfloat16": 197e12}),
    ("TPU v4", {"bfloat16": 275e12}),
)


def peak_flops_per_device(device_kind: str, dtype: str) -> float | None:
  """The device's dense peak for `dtype`, or None when it is not in the table."""
  for key, peaks in PEAK_FLOPS:
    if key.lower() in device_kind.lower():
      return peaks.get(dtype)
  return None


def model_flops_utilization(flops_per_token: float, tokens_per_second: float, *, dtype: str,
                            devices=None) -> float | None:
  """Achieved / peak FLOP/s over all devices, or None when the peak is unknown."""
  devices = list(devices if devices is not None else jax.devices())
  peak = peak_flops_per_device(devices[0].device_kind, dtype)
  if peak is None:
    return None
  return flops_per_token * tokens_per_second / (peak * len(devices))


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch where torch is not loaded yet.

  tensorboardX imports torch only to recognise torch tensors among the values it is given
  (`try: import torch except ImportError`); lmjax logs floats, and importing torch costs every
  training process seconds of start-up. A `None` in sys.modules makes that one import fail as if
  torch were absent (Python's documented way); torch stays importable afterwards."""
  if "torch" in sys.modules or "tensorboardX" in sys.modules:
    from tensorboardX import SummaryWriter
  else:
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
      from tensorboardX import SummaryWriter
    finally:
      del sys.modules["torch"]
  _write_events_through_storage()
  return SummaryWriter


class _BucketEvents:
  """tensorboardX's writer factory for gs:// and s3:// event files, through lmjax.storage
  (the same clients, emulators and credentials as the rest of the run). Its own gs:// writer
  uploads again when garbage-collected, which blocks a process's exit for minutes once the
  server is gone."""

  def open(self, path: str):
    return open_append(path, binary=True)

  def directory_check(self, path: str) -> None:  # a bucket has no directories to make
    pass


def _write_events_through_storage() -> None:
  from tensorboardX import record_writer  # imported by _summary_writer_class already
  for scheme in REMOTE_SCHEMES:
    record_writer.register_writer_factory(scheme, _BucketEvents())


class MetricsWriter:
  """Appends rows to metrics.jsonl and TensorBoard, and drives a tqdm bar, on process 0."""

  def __init__(self, run_dir: pathlib.Path, *, total_steps: int, start_step: int,
               enabled: bool = True, wandb: WandbConfig | None = None,
               config: Mapping[str, Any] | None = None):
    self.enabled = enabled
    if not enabled:
      return
    self._wandb = WandbLogger(wandb or WandbConfig(), run_dir, config or {})
    self._run_dir, self._jsonl, self._tensorboard = run_dir, None, None  # opened at the first row
    self._start_step, self._t0 = start_step, time.monotonic()
    self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                          file=sys.stderr, mininterval=1.0, disable=None)

  def write(self, row: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    if self._jsonl is None:
      SummaryWriter = _summary_writer_class()  # imported only by the writing process
      self._jsonl = open_append(self._run_dir / "metrics.jsonl")
      self._tensorboard = SummaryWriter(str(self._run_dir / "tensorboard"))
    self._jsonl.write(json.dumps(_json_safe(row), allow_nan=False) + "\n")
    self._jsonl.flush()
    for key, value in row.items():
      if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
        self._tensorboard.add_scalar(key, value, row["step"])
      elif isinstance(value, list) and value and isinstance(value[0], list):  # a matrix
        self._tensorboard.add_text(key, _markdown_table(value), row["step"])
    self._tensorboard.flush()
    self._wandb.log(_json_safe(row))

  def progress(self, step: int, row: Mapping[str, Any]) -> None:
    """Advances the bar to `step`; without a terminal, prints one line per logged step."""
    if not self.enabled:
      return
    # A classifier's held-out accuracy and macro-F1 too (an LM's token accuracy says little).
    keys = ("loss", "eval_loss", *(("eval_accuracy", "eval_macro_f1") if "eval_macro_f1" in row
                                   else ()), "tokens_per_second")
    shown = {k: row[k] for k in keys if row.get(k) is not None}
    postfix = {_SHORT.get(k, k): f"{v:.4g}" for k, v in shown.items()}
    if self._bar.disable:
      done = step - self._start_step
      eta = (self._bar.total - step) * (time.monotonic() - self._t0) / max(done, 1)
      fields = "  ".join(f"{k} {v}" for k, v in postfix.items())
      print(f"step {step}/{self._bar.total}  {fields}  eta {eta:.0f}s", file=sys.stderr, flush=True)
      return
    self._bar.update(step - self._bar.n)
    self._bar.set_postfix(postfix, refresh=False)

  def close(self) -> None:
    if not self.enabled:
      return
    self._bar.close()
    self._wandb.close()
    if self._jsonl is not None:
      self._tensorboard.close()
      self._jsonl.close()


def _json_safe(value: Any) -> Any:
  """`value` with NaN and infinities as null: JSON has no such numbers (a bare NaN in
  metrics.jsonl breaks strict readers such as jq or JavaScript)."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def _markdown_table(matrix: list[list]) -> str:
  """A confusion matrix as TensorBoard's text plugin renders it: rows true, columns predicted."""
  header = "| true \\ predicted | " + " | ".join(str(j) for j in range(len(matrix[0]))) + " |"
  rule = "|" + "---|" * (len(matrix[0]) + 1)
  rows = [f"| {i} | " + " | ".join(str(v) for v in row) + " |" for i, row in enumerate(matrix)]
  return "\n".join([header, rule, *rows])


def truncate_metrics_after(path: pathlib.Path, step: int) -> None:
  """Drops rows logged after `step`, so a resumed run does not log those steps twice."""
  if not path.exists():
    return
  def keep(line: str) -> bool:
    try:
      return json.loads(line).get("step", 0) <= step
    except ValueError:  # a row torn by a crash mid-write
      return False
  kept = [line for line in path.read_text(encoding="utf-8").splitlines() if keep(line)]
  path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
