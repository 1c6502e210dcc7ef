"""The learning-rate schedule: optax's warmup + cosine, with its numbers as runtime values of the
train step, so runs that differ only in length, warmup or peak share one compiled step."""

import json

import numpy as np
import optax
import pytest

from lmjax.config import load_config
from lmjax.sharding import mesh_rules
from lmjax.train.compile import abstract_batch
from lmjax.train.loop import train
from lmjax.train.optimizer import learning_rate_at, schedule_values
from lmjax.train.setup import setup_step


@pytest.mark.parametrize("steps,warmup,lr,floor", [
    (20, 5, 3e-3, 0.1), (7, 0, 1e-3, 0.0), (3, 10, 0.05, 0.5), (1, 1, 1e-2, 0.1),
    (1000, 37, 2e-4, 0.01), (10, 3, 0.0, 0.1)])
def test_schedule_is_optaxs_warmup_cosine_decay(steps, warmup, lr, floor):
  config = load_config("tiny-gpt", [f"train.steps={steps}", f"train.warmup_steps={warmup}",
                                    f"train.learning_rate={lr}",
                                    f"train.min_learning_rate_ratio={floor}"]).train
  w = min(warmup, max(steps - 1, 0))
  reference = optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup_steps=w, decay_steps=max(steps, w + 1), end_value=lr * floor)
  counts = np.arange(steps + 3)
  ours = np.array([learning_rate_at(c, schedule_values(config)) for c in counts])
  np.testing.assert_allclose(ours, [reference(c) for c in counts], rtol=1e-6, atol=1e-12)


def test_the_logged_learning_rate_follows_the_schedule(tmp_path, tiny):
  config = load_config("tiny-gpt", tiny + ["train.steps=12", "train.warmup_steps=4",
                                           "train.log_every=1", "train.eval_every=0"])
  train(config, tmp_path)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  reference = optax.warmup_cosine_decay_schedule(
      0.0, config.train.learning_rate, warmup_steps=4, decay_steps=12,
      end_value=config.train.learning_rate * config.train.min_learning_rate_ratio)
  logged = {r["step"]: r["learning_rate"] for r in rows if "learning_rate" in r}
  assert sorted(logged) == list(range(1, 13))
  np.testing.assert_allclose([logged[s] for s in sorted(logged)],
                             [reference(s - 1) for s in sorted(logged)], rtol=1e-6)


def test_runs_differing_only_in_schedule_share_one_compiled_step(tiny):
  """The step's program does not depend on train.steps, warmup or learning rate: its lowered
  text is the same, so XLA's persistent cache serves the next run's compile."""
  def lowered(extra):
    config = load_config("tiny-gpt", tiny + extra)
    setup = setup_step(config, mesh_rules(config.mesh))
    return setup.step_fn.lower(setup.abstract_state, abstract_batch(config, setup.placement),
                               setup.hyper).as_text()
  first = lowered(["train.steps=20", "train.warmup_steps=5", "train.learning_rate=3e-3"])
  assert first == lowered(["train.steps=300", "train.warmup_steps=0", "train.learning_rate=1e-4"])
  assert first != lowered(["train.steps=20", "train.weight_decay=0.5"])  # a constant still
