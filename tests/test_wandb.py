"""Weights & Biases in offline mode: what a training run logs, read back from the run file wandb
writes (LevelDB-style log records of wandb's protobuf `Record`s); a W&B that cannot start."""

import json
import pathlib

import pytest

pytest.importorskip("wandb")

from lmjax.config import load_config  # noqa: E402
from lmjax.errors import UserError  # noqa: E402
from lmjax.train.loop import train  # noqa: E402
from tests.conftest import TINY  # noqa: E402
from tests.wandb_logs import logged  # noqa: E402


def metrics_rows(run_dir: pathlib.Path) -> dict[int, dict]:
  rows = {}
  for line in (run_dir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    rows.setdefault(row.pop("step"), {}).update(
        {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
  return rows


WANDB = ["logging.wandb.project=lmjax-tests", "logging.wandb.mode=offline"]


def test_offline_wandb_logs_the_config_and_every_metric_of_a_resumed_run(tmp_path):
  run_dir = tmp_path / "my-run"
  common = TINY + WANDB + ["train.log_every=2", "train.eval_every=4", "train.checkpoint_every=4"]
  train(load_config("tiny-gpt", common + ["train.steps=4"]), run_dir)
  train(load_config("tiny-gpt", common + ["train.steps=8"]), run_dir)  # resumes at step 4
  runs, history = logged(run_dir)
  run_id = (run_dir / "wandb_run_id").read_text().strip()
  assert len(runs) == 2 and {r.run_id for r in runs} == {run_id}  # one W&B run, resumed
  assert {r.display_name for r in runs} == {"my-run"} and runs[0].project == "lmjax-tests"
  config = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
            for i in runs[0].config.update}
  assert config["model"]["embed_dim"] == 32 and config["train"]["steps"] == 4
  rows = metrics_rows(run_dir)
  assert sorted(history) == sorted(rows) == [2, 4, 6, 8]
  for step, row in rows.items():
    assert history[step] == pytest.approx(row)
  assert "eval_loss" in history[8] and "loss" in history[8]


def test_a_wandb_that_cannot_start_leaves_the_run_to_local_logging(tmp_path, monkeypatch,
                                                                   caplog):
  monkeypatch.delenv("WANDB_API_KEY", raising=False)
  monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "no-login"))  # no saved API key
  monkeypatch.setenv("HOME", str(tmp_path))
  run_dir = tmp_path / "run"
  with caplog.at_level("WARNING", logger="lmjax"):
    train(load_config("tiny-gpt", TINY + ["train.steps=4", "train.log_every=2",
                                          "logging.wandb.project=p",
                                          "logging.wandb.mode=online"]), run_dir)
  assert "Weights & Biases did not start" in caplog.text
  assert sorted(metrics_rows(run_dir)) == [2, 4]
  assert not (run_dir / "wandb_run_id").exists()


def test_wandb_settings_are_checked():
  with pytest.raises(UserError, match="logging.wandb.mode='offlin' is not one of online, offline"):
    load_config("tiny-gpt", ["logging.wandb.mode=offlin"])
  with pytest.raises(UserError, match="unknown config key logging.wandb.projct"):
    load_config("tiny-gpt", ["logging.wandb.projct=p"])
