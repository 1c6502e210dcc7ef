"""`lmjax plot`: curves of real runs' metrics.jsonl drawn into PNG files; bad input refused."""

import json
import struct

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from lmjax.cli import main  # noqa: E402
from lmjax.cli.plot import (MIN_POINTS_TO_SMOOTH, read_metrics, series, smoothed,  # noqa: E402
                            solid_curve)


def png_size(path) -> tuple[int, int]:
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A trained tiny GPT, and a second run whose metrics.jsonl ends in a torn line."""
  from lmjax.config import load_config
  from lmjax.train.loop import train
  from tests.conftest import TINY
  trained = tmp_path_factory.mktemp("trained")
  train(load_config("tiny-gpt", TINY + ["train.steps=10", "train.log_every=2"]), trained)
  other = tmp_path_factory.mktemp("other")
  rows = [{"step": s, "loss": 6.0 / s, "eval_loss": None if s % 4 else 7.0 / s}
          for s in range(1, 21)]
  (other / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 21, "lo')
  return trained, other


def test_plot_draws_each_metric_of_each_run(runs, tmp_path, capsys):
  trained, other = runs
  out = tmp_path / "curves.png"
  assert main(["plot", str(trained), str(other), "--out", str(out)]) == 0
  assert f"wrote {out}" in capsys.readouterr().out
  one_panel = tmp_path / "loss.png"
  assert main(["plot", str(trained), str(other), "--out", str(one_panel), "--metric", "loss",
               "--log-scale"]) == 0
  (wide, high), (narrow, high_too) = png_size(out), png_size(one_panel)
  assert high == high_too and wide == pytest.approx(2 * narrow, rel=0.01)  # two panels, one
  assert series(read_metrics(trained), "loss")[0] == [2, 4, 6, 8, 10]  # train.log_every=2
  steps, values = series(read_metrics(other), "eval_loss")
  assert steps == [4, 8, 12, 16, 20] and values == [7.0 / s for s in steps]  # nulls skipped


def test_smoothing_is_tensorboards_debiased_moving_average():
  values = [4.0, 2.0, 3.0, 1.0]
  assert smoothed(values, 0.0) == values
  weight, average, expected = 0.6, 0.0, []
  for n, v in enumerate(values, 1):
    average = weight * average + (1 - weight) * v
    expected.append(average / (1 - weight ** n))
  np.testing.assert_allclose(smoothed(values, 0.6), expected)
  assert smoothed(values, 0.6)[0] == 4.0  # debiased: the first point is the first value


def test_a_curve_of_a_few_points_is_drawn_as_logged_not_smoothed():
  # Two points smoothed would end below the last value logged (0.375 * 4 + 0.625 * 2 = 2.75).
  assert solid_curve([4.0, 2.0], 0.6) == ([4.0, 2.0], False)
  few = [float(v) for v in range(MIN_POINTS_TO_SMOOTH - 1)]
  assert solid_curve(few, 0.9) == (few, False)
  many = [float(v % 3) for v in range(MIN_POINTS_TO_SMOOTH)]
  assert solid_curve(many, 0.6) == (smoothed(many, 0.6), True)
  assert solid_curve(many, 0.0) == (many, False)


@pytest.mark.parametrize("argv, message", [
    (["{empty}"], "has no metrics.jsonl"),
    (["{missing}"], "is not a directory"),
    (["{other}", "--metric", "accuracy"], "They have: eval_loss, loss"),
    (["{other}", "--smooth", "1"], "--smooth must be in [0, 1)"),
    (["{other}", "--out", "{tmp}/curves.svg"], "must name a .png"),
    (["{other}", "--out", "{tmp}/kept.png"], "exists"),
])
def test_plot_refuses_bad_input(runs, tmp_path, capsys, argv, message):
  (tmp_path / "empty").mkdir()
  (tmp_path / "kept.png").write_bytes(b"mine")
  names = {"empty": tmp_path / "empty", "missing": tmp_path / "missing", "other": runs[1],
           "tmp": tmp_path}
  code = main(["plot", *[a.format(**names) for a in argv]])
  err = capsys.readouterr().err
  assert code == 2 and message in err and "Traceback" not in err
  assert (tmp_path / "kept.png").read_bytes() == b"mine"
  assert not (tmp_path / "curves.svg").exists()
