"""Training on one host: learning, exact resume, accumulation, evaluation and loading."""

import json

import jax
import numpy as np
import pytest

import lmjax
from lmjax.config import load_config
from lmjax.train.evaluate import evaluate_run
from lmjax.train.loop import train
from tests.conftest import TINY


def rows(run_dir):
  return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# A brisk rate: the loss falls by more than a nat in 40 steps.
LEARNS = ["train.steps=40", "train.learning_rate=3e-3"]


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
  """name -> a run of that preset trained with LEARNS, trained on first use: the resume test
  stops and resumes tiny-gpt's and compares it with this one."""
  runs = {}

  def get(name):
    if name not in runs:
      runs[name] = tmp_path_factory.mktemp(name)
      train(load_config(name, TINY + LEARNS), runs[name])
    return runs[name]
  return get


def assert_the_loss_fell_and_the_run_is_complete(run_dir):
  """Every metrics row has its fields, the loss fell more than a nat, the last row has the
  held-out loss, and the run wrote its config, tokenizer and TensorBoard events."""
  logged = rows(run_dir)
  assert logged[-1]["loss"] < logged[0]["loss"] - 1.0
  for row in logged:
    assert {"step", "loss", "learning_rate", "grad_norm", "tokens_per_second", "mfu",
            "elapsed_seconds"} <= row.keys()
  assert "eval_loss" in logged[-1]
  assert (run_dir / "config.yaml").is_file() and (run_dir / "tokenizer" / "tokenizer.json").is_file()
  assert list((run_dir / "tensorboard").iterdir())


# tiny-bert's loss falls in test_mlm_training_raises_held_out_accuracy's run.
@pytest.mark.parametrize("name", ["tiny-gpt", "tiny-llama"])
def test_loss_falls_well_below_its_start(learned, name):
  assert_the_loss_fell_and_the_run_is_complete(learned(name))


def test_resume_from_latest_matches_an_uninterrupted_run(tmp_path, learned):
  whole, parts = learned("tiny-gpt"), tmp_path / "parts"
  first = train(load_config("tiny-gpt", TINY + LEARNS), parts, stop_after=7)
  again = train(load_config("tiny-gpt", TINY + LEARNS), parts)
  assert (first.start_step, first.final_step, again.start_step) == (0, 7, 7)
  _, params_whole = lmjax.load_run(whole)
  _, params_parts = lmjax.load_run(parts)
  jax.tree.map(np.testing.assert_array_equal, params_whole, params_parts)
  assert [r["loss"] for r in rows(whole)] == [r["loss"] for r in rows(parts)]


def test_gradient_accumulation_gives_the_same_update(tmp_path, tiny):
  base = tiny + ["train.steps=3", "train.checkpoint_every=3"]
  train(load_config("tiny-llama", base), tmp_path / "one")
  train(load_config("tiny-llama", base + ["train.grad_accum_steps=4"]), tmp_path / "four")
  _, a = lmjax.load_run(tmp_path / "one")
  _, b = lmjax.load_run(tmp_path / "four")
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=2e-6, rtol=1e-4), a, b)


def test_mlm_training_raises_held_out_accuracy(tmp_path, tiny):
  # MLM on bytes sits on a unigram plateau for a while: give one layer a little width, a brisk
  # rate and 120 steps (masked accuracy about 0.25 -> 0.29 on 8 held-out batches; two layers
  # take 150 steps and twice the time per step to rise as far).
  overrides = tiny + ["model.num_layers=1", "model.embed_dim=64", "model.mlp_dim=128",
                      "train.seq_len=64", "train.batch_size=16", "train.steps=120",
                      "train.eval_every=40", "train.eval_batches=8", "train.learning_rate=3e-3"]
  train(load_config("tiny-bert", overrides), tmp_path)
  assert_the_loss_fell_and_the_run_is_complete(tmp_path)  # tiny-bert's case of the loss test
  evals = [r for r in rows(tmp_path) if "eval_accuracy" in r]
  assert [r["step"] for r in evals] == [40, 80, 120]
  assert evals[-1]["eval_accuracy"] > evals[0]["eval_accuracy"] + 0.02
  assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
  # `lmjax eval` on the final checkpoint reproduces the loop's own evaluation.
  final = evaluate_run("tiny-bert", tmp_path, step=None, overrides=overrides)
  assert final["step"] == 120
  assert final["eval_loss"] == pytest.approx(evals[-1]["eval_loss"], rel=1e-5)


def test_the_progress_line_shows_a_classifiers_held_out_accuracy(tmp_path, capsys):
  """Without a terminal each logged step is a line: a classifier's shows its eval accuracy and
  macro-F1 as it trains; a language model's its eval loss only."""
  from lmjax.train.metrics import MetricsWriter
  writer = MetricsWriter(tmp_path, total_steps=10, start_step=0)
  writer.progress(5, {"loss": 0.5, "eval_loss": 0.4, "eval_accuracy": 0.875,
                      "eval_macro_f1": 0.8712, "tokens_per_second": 1000.0})
  writer.progress(10, {"loss": 0.5, "eval_loss": 0.4, "eval_accuracy": 0.3})
  writer.close()
  classifier, language_model = capsys.readouterr().err.strip().splitlines()
  assert "eval_loss 0.4  eval_acc 0.875  eval_f1 0.8712  tok/s 1000" in classifier
  assert "eval_acc" not in language_model and "eval_loss 0.4" in language_model
