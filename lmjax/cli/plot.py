"""`lmjax plot`: the curves of one or more runs, from their metrics.jsonl, as a PNG.

    lmjax plot runs/a runs/b --metric loss,eval_loss --out curves.png [--smooth 0.6] [--log-scale]

One panel per metric, against the step; each run is a colour, named by its directory, drawn raw
(faint) and smoothed (an exponential moving average with TensorBoard's debiasing, `--smooth`
its weight); a curve of fewer than MIN_POINTS_TO_SMOOTH points is drawn as logged, its points
marked. A torn last line (a run killed mid-write) is skipped; a run or metric without any
value is an error naming what there is.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pathlib
import tempfile
from collections.abc import Sequence

from lmjax.errors import UserError
from lmjax.extras import require
from lmjax.run import RunDir
from lmjax.storage import Path, as_path, is_remote

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("loss", "eval_loss")
# A curve of fewer points is drawn as logged, each point marked, whatever `--smooth` says: a
# moving average over a handful of points shows mostly its own lag (with two points, the last
# one drawn is not the last value logged), not a trend.
MIN_POINTS_TO_SMOOTH = 10


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
  """The rows of a run's metrics.jsonl, in order (lines that are not JSON objects skipped)."""
  run = RunDir(run_dir)
  path = run.metrics_file
  if not path.is_file():
    what = "is not a directory" if not run.path.is_dir() else "has no metrics.jsonl"
    raise UserError(f"{run_dir} {what}: plot the run directory of `lmjax train` once it has "
                    f"logged a step.")
  rows, bad = [], 0
  for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
    try:
      row = json.loads(line)
    except ValueError:
      bad += 1
      continue
    if isinstance(row, dict) and isinstance(row.get("step"), int):
      rows.append(row)
    else:
      bad += 1
  if bad:
    log.warning("%s: skipped %d line(s) of metrics.jsonl that are not metric rows", run_dir, bad)
  return rows


def series(rows: Sequence[dict], metric: str) -> tuple[list[int], list[float]]:
  """(steps, values) of `metric` where it is a finite number."""
  points = [(r["step"], float(r[metric])) for r in rows
            if isinstance(r.get(metric), (int, float)) and not isinstance(r.get(metric), bool)
            and math.isfinite(r[metric])]
  return [s for s, _ in points], [v for _, v in points]


def smoothed(values: Sequence[float], weight: float) -> list[float]:
  """TensorBoard's smoothing: an exponential moving average, debiased at the start."""
  out, average = [], 0.0
  for n, value in enumerate(values, 1):
    average = weight * average + (1 - weight) * value
    out.append(average / (1 - weight ** n) if weight else value)
  return out


def solid_curve(values: Sequence[float], weight: float) -> tuple[list[float], bool]:
  """The curve drawn solid, and whether it is smoothed (the raw one is then drawn faint)."""
  if weight and len(values) >= MIN_POINTS_TO_SMOOTH:
    return smoothed(values, weight), True
  return list(values), False


def _names(run_dirs: Sequence[str]) -> list[str]:
  """Each run's directory name, or its whole path where two names are the same."""
  names = [(as_path(d) if is_remote(d) else pathlib.Path(d).resolve()).name or str(d)
           for d in run_dirs]
  return [str(d) if names.count(n) > 1 else n for d, n in zip(run_dirs, names)]


def plot_runs(run_dirs: Sequence[str], out: str | os.PathLike, *,
              metrics: Sequence[str] | None = None, smooth: float = 0.6, log_scale: bool = False,
              overwrite: bool = False) -> Path:
  """Draws the runs' curves (module docstring) into the PNG `out` (local, or gs://, s3://);
  returns its path."""
  out = as_path(out)
  if not run_dirs:
    raise UserError("give one or more run directories to plot.")
  if not 0.0 <= smooth < 1.0:
    raise UserError(f"--smooth must be in [0, 1) (0: raw, 0.9: heavily smoothed), got {smooth}.")
  if out.suffix.lower() != ".png":
    raise UserError(f"--out {out} must name a .png file.")
  if out.exists() and not overwrite:
    raise UserError(f"--out {out} exists: choose a new file, or pass --overwrite to replace it.")
  runs = {name: read_metrics(d) for name, d in zip(_names(run_dirs), run_dirs)}
  available = sorted({k for rows in runs.values() for r in rows for k, v in r.items()
                      if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)})
  wanted = list(metrics) if metrics else [m for m in DEFAULT_METRICS if m in available]
  missing = [m for m in wanted if m not in available]
  if missing or not wanted:
    raise UserError(f"--metric {','.join(missing or wanted) or '(none)'}: the runs log no such "
                    f"metric. They have: {', '.join(available) or 'none'}.")
  matplotlib = require("matplotlib", extra="plot", needed_for="`lmjax plot`")
  matplotlib.use("Agg")
  from matplotlib import pyplot  # noqa: PLC0415 -- after choosing the backend

  figure, axes = pyplot.subplots(1, len(wanted), figsize=(5.5 * len(wanted), 4), squeeze=False)
  colours = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
  for axis, metric in zip(axes[0], wanted):
    for n, (name, rows) in enumerate(runs.items()):
      steps, values = series(rows, metric)
      if not steps:
        continue
      colour = colours[n % len(colours)]
      curve, is_smoothed = solid_curve(values, smooth)
      if is_smoothed:
        axis.plot(steps, values, color=colour, alpha=0.25, linewidth=1)
      axis.plot(steps, curve, color=colour, label=name, linewidth=1.8,
                marker=None if is_smoothed else "o", markersize=3)
    axis.set_title(metric)
    axis.set_xlabel("step")
    if log_scale:
      axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend()
  figure.tight_layout()
  try:
    _save(figure, out)
  finally:
    pyplot.close(figure)
  return out


def _save(figure, out) -> None:
  """Writes the figure to `out` whole or not at all: locally through a temporary file renamed
  onto it; on a bucket rendered in memory (a PNG of a few hundred kB) and uploaded in one write,
  which an object store makes whole or nothing."""
  if is_remote(out):
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=110)
    out.write_bytes(image.getvalue())
    return
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".png", delete=False) as f:
    temporary = pathlib.Path(f.name)
  try:
    figure.savefig(temporary, dpi=110)
    os.replace(temporary, out)
  finally:
    temporary.unlink(missing_ok=True)
