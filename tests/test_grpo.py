"""GRPO: the loss against trl's GRPOTrainer code on the same completions, log-probs and
advantages, the group advantages against trl's formula, rewards that fail (named, or skipped
and counted), refusals at the command line, and a toy run whose mean reward rises and that
resumes exactly."""

import collections
import json
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.config import load_config
from lmjax.config_objectives import GrpoConfig, RewardErrors
from lmjax.errors import UserError
from lmjax.objectives import grpo_sums
from lmjax.train.rewards import group_advantages, resolve_rewards, score
from lmjax.train.rollout import completion_rows, prompt_order
from tests.conftest import TINY
from tests.helpers import rows as metrics_rows
from tests.helpers import run_cli

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")


# Reward functions the tests name by import path (tests.test_grpo:...).

def letters(prompt, completion, row):
  """The toy's reward: the share of the completion's characters that are letters a-z."""
  return sum("a" <= c <= "z" for c in completion) / max(len(completion), 1)


def raises(prompt, completion, row):
  raise KeyError("score")


def not_a_number(prompt, completion, row):
  return float("nan")


def text(prompt, completion, row):
  return "good"


# --- the loss against trl's GRPOTrainer._compute_loss ------------------------------------------

def _trl_grpo_loss(values: dict, *, loss_type: str, beta: float, epsilon: float,
                   epsilon_high: float, old: bool):
  """trl 1.16's GRPOTrainer._compute_loss on completion-only tensors [batch, len]: its model
  forward (`_get_per_token_logps_and_entropies`) hands back our log-probs, which require grad;
  everything after it is trl's code. Returns (loss, logps tensor, trl's logged metrics)."""
  from trl.trainer.grpo_trainer import GRPOTrainer
  logps = torch.tensor(values["logps"], requires_grad=True)
  mask = torch.tensor(values["mask"])
  inputs = {"prompt_ids": torch.zeros((len(mask), 2), dtype=torch.long),
            "prompt_mask": torch.ones((len(mask), 2), dtype=torch.long),
            "completion_ids": torch.zeros(mask.shape, dtype=torch.long), "completion_mask": mask,
            "advantages": torch.tensor(values["advantages"]),
            "ref_per_token_logps": torch.tensor(values["ref_logps"])}
  if old:
    inputs["old_per_token_logps"] = torch.tensor(values["old_logps"])
  inputs["num_items_in_batch"] = mask.sum()  # dapo's divisor: the generation batch's tokens
  metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}
  me = types.SimpleNamespace(
      _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
      top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
      beta=beta, loss_type=loss_type, epsilon_low=epsilon, epsilon_high=epsilon_high,
      args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None,
                                 steps_per_generation=1), max_completion_length=MAX_NEW_TOKENS,
      use_vllm=False, vllm_importance_sampling_correction=False, _entropy_bonus_enabled=False,
      aux_loss_enabled=False, current_gradient_accumulation_steps=1, _metrics=metrics,
      model=types.SimpleNamespace(training=True),
      accelerator=types.SimpleNamespace(reduce=lambda x, reduction: x, gather=lambda x: x,
                                        num_processes=1))
  loss = GRPOTrainer._compute_loss(me, None, inputs)
  return loss, logps, {k: v[-1] for k, v in metrics["train"].items()}


MAX_NEW_TOKENS = 9  # dr_grpo's divisor (the completions below are up to 7 tokens long)


@pytest.mark.parametrize("loss_type, beta, old", [
    ("grpo", 0.0, False), ("grpo", 0.04, True), ("bnpo", 0.1, True), ("dapo", 0.1, True),
    ("dr_grpo", 0.0, False), ("dr_grpo", 0.04, True)],
    ids=["grpo-on-policy", "grpo-kl-old", "bnpo-kl-old", "dapo-kl-old", "dr_grpo-on-policy",
         "dr_grpo-kl-old"])
def test_the_grpo_loss_its_gradient_and_metrics_match_trl(loss_type, beta, old):
  rng = np.random.default_rng(0)
  batch, length = 6, 7
  logps = -rng.uniform(0.1, 3, (batch, length))
  values = {"logps": logps, "old_logps": logps + rng.normal(0, 0.3, logps.shape),
            "ref_logps": logps + rng.normal(0, 0.5, logps.shape),
            "advantages": rng.normal(0, 1, batch),
            "mask": (np.arange(length)[None] < rng.integers(1, length + 1, (batch, 1)))}
  values = {k: np.asarray(v, np.float32) for k, v in values.items()}
  from lmjax.train.setup import preference_settings
  settings = preference_settings(load_config("tiny-gpt", TINY + [
      "train.objective=grpo", "train.grpo.rewards=[format]", "model.lora.rank=4",
      f"train.grpo.loss_type={loss_type}", f"train.grpo.beta={beta}", "train.grpo.epsilon=0.2",
      "train.grpo.epsilon_high=0.28", f"train.grpo.max_new_tokens={MAX_NEW_TOKENS}",
      f"train.grpo.num_iterations={2 if old else 1}"]))

  def ours(x):
    sums, extra = grpo_sums(x, jnp.asarray(values["old_logps"]), jnp.asarray(values["ref_logps"]),
                            jnp.asarray(values["advantages"]), jnp.asarray(values["mask"]),
                            settings)
    return sums.loss / sums.weight, extra

  (loss, extra), grad = jax.value_and_grad(ours, has_aux=True)(jnp.asarray(values["logps"]))
  expected, theirs, logged = _trl_grpo_loss(values, loss_type=loss_type, beta=beta, epsilon=0.2,
                                            epsilon_high=0.28, old=old)
  expected.backward()
  np.testing.assert_allclose(loss, expected.item(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grad, theirs.grad.numpy(), rtol=1e-4, atol=1e-6)
  tokens = float(extra["completion_tokens"])
  np.testing.assert_allclose(float(extra["clipped"]) / tokens, logged["clip_ratio/region_mean"],
                             rtol=1e-5, atol=1e-7)
  if beta:
    np.testing.assert_allclose(float(extra["kl"]) / tokens, logged["kl"], rtol=1e-4)
  if old:
    assert logged["clip_ratio/region_mean"] > 0  # the ratios reach the clipping


def test_group_advantages_are_trls_sum_then_normalize():
  from trl.trainer.utils import nanstd
  rng = np.random.default_rng(1)
  scores = rng.uniform(0, 1, (12, 2))
  scores[3, 0] = np.nan                # one function left one completion unscored
  scores[7] = np.nan                   # no function scored this one
  weights = [1.0, 0.5]
  totals, advantages = group_advantages(scores, weights, 4, scale=True)
  # trl's GRPOTrainer._generate_and_score_completions, sum_then_normalize with scale "group":
  rewards = (torch.tensor(scores) * torch.tensor(weights)).nansum(dim=1)
  rewards[torch.isnan(torch.tensor(scores)).all(dim=1)] = torch.nan
  mean = torch.nanmean(rewards.view(-1, 4), dim=1).repeat_interleave(4)
  std = nanstd(rewards.view(-1, 4), dim=1).repeat_interleave(4)
  expected = torch.nan_to_num((rewards - mean) / (std + 1e-4), nan=0.0)
  np.testing.assert_allclose(advantages, expected.numpy(), rtol=1e-6)
  assert advantages[7] == 0 and np.isnan(totals[7])


# --- rows, order and rewards ------------------------------------------------------------------

def test_a_completion_row_is_its_prompt_then_the_completion_in_the_loss_mask():
  rows = completion_rows([[5, 6, 7]], [[9, 2]], 8)
  assert rows["input_ids"][0].tolist() == [5, 6, 7, 9, 2, 0, 0, 0]
  assert rows["segment_ids"][0].tolist() == [1] * 5 + [0] * 3
  assert rows["loss_mask"][0].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]


def test_rounds_take_every_prompt_once_an_epoch_in_an_order_fixed_by_the_seed():
  taken = np.concatenate([prompt_order(3, r, 4, 10) for r in range(5)])  # two epochs
  assert sorted(taken[:10]) == list(range(10)) and sorted(taken[10:20]) == list(range(10))
  assert prompt_order(3, 2, 4, 10).tolist() == prompt_order(3, 2, 4, 10).tolist()
  assert prompt_order(4, 0, 4, 10).tolist() != prompt_order(3, 0, 4, 10).tolist()


def test_built_in_rewards_score_the_format_and_the_exact_answer():
  format_, exact = resolve_rewards(GrpoConfig(rewards=("format", "exact_answer"),
                                              format_regex=r"<a>\d+</a>"))
  assert format_.fn("q", "<a>12</a>", {}) == 1.0 and format_.fn("q", "<a>12</a>!", {}) == 0.0
  assert exact.fn("q", " 4\n", {"answer": 4}) == 1.0 and exact.fn("q", "5", {"answer": 4}) == 0.0


@pytest.mark.parametrize("name, message", [
    ("raises", "the reward 'tests.test_grpo:raises' raised KeyError: 'score' (scoring a "
               "completion of the prompt at p.jsonl:1)"),
    ("not_a_number", "the reward 'tests.test_grpo:not_a_number' returned nan"),
    ("text", "the reward 'tests.test_grpo:text' returned str 'good' for a completion of the "
             "prompt at p.jsonl:1; a reward must return a float"),
])
def test_a_reward_that_fails_is_named_or_skipped_and_counted(name, message):
  rewards = resolve_rewards(GrpoConfig(rewards=(f"tests.test_grpo:{name}", "format")))
  args = (["q", "q"], ["x", "<answer>1</answer>"], [{}, {}], ["p.jsonl:1", "p.jsonl:2"])
  with pytest.raises(UserError, match="reward_errors: skip") as e:
    score(rewards, *args, errors=RewardErrors.STOP)
  assert message in str(e.value)
  scores, skipped = score(rewards, *args, errors=RewardErrors.SKIP)
  assert skipped == 2 and np.isnan(scores[:, 0]).all() and scores[:, 1].tolist() == [0.0, 1.0]


# --- the command line -------------------------------------------------------------------------

def _prompts(path, count=32, seed=0):
  """Prompts of a few letters b-h (their rows carry an answer, unused by the toy's reward)."""
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for _ in range(count):
      word = "".join(rng.choice(list("bcdefgh"), rng.integers(2, 6)))
      f.write(json.dumps({"prompt": f"{word}:", "answer": "a"}) + "\n")
  return path


TOY = [*TINY, "train.objective=grpo", "data.source=jsonl", "train.seq_len=24",
       "train.batch_size=16", "train.grpo.num_generations=4", "train.grpo.max_new_tokens=8",
       "train.learning_rate=2e-2", "train.min_learning_rate_ratio=1", "train.warmup_steps=2", "train.log_every=2",
       "train.checkpoint_every=4", "train.steps=24", "train.grpo.num_iterations=2",
       "train.grpo.rewards=[tests.test_grpo:letters]"]


@pytest.mark.parametrize("change, message", [
    (["train.grpo.rewards=[no_such_module:f]"],
     "train.grpo.rewards: cannot import 'no_such_module' for the reward 'no_such_module:f'"),
    (["train.grpo.rewards=[tests.test_grpo:nothing]"],
     "module 'tests.test_grpo' has no 'nothing' for the reward 'tests.test_grpo:nothing'"),
    (["train.grpo.rewards=[letters]"], "is neither a built-in reward (format, exact_answer) "
                                          "nor an import path module:function"),
    (["train.grpo.beta=0.04", "train.preference.reference=adapters_off"],
     "train.preference.reference=adapters_off takes the reference as the LoRA base with the "
     "adapters off, and this config has no LoRA"),
    (["train.steps=25"], "train.steps=25 must be a multiple of train.grpo.num_iterations=2"),
    (["train.batch_size=18"], "train.batch_size=18 counts completions: it must be a multiple "
                              "of train.grpo.num_generations=4"),
])
def test_grpo_config_mistakes_exit_2_and_say_what_to_do(tmp_path, capsys, change, message):
  data = _prompts(tmp_path / "prompts.jsonl", 4)
  code, _, err = run_cli(capsys, "train", "tiny-gpt", "--run-dir", tmp_path / "run", "--set",
                         *TOY, f"data.paths=[{data}]", *change)
  assert code == 2 and message in err and "Traceback" not in err, err
  assert not (tmp_path / "run").exists()


def test_a_reward_that_raises_mid_run_exits_2_naming_it(tmp_path, capsys):
  data = _prompts(tmp_path / "prompts.jsonl", 4)
  code, _, err = run_cli(capsys, "train", "tiny-gpt", "--run-dir", tmp_path / "run", "--set",
                         *TOY, f"data.paths=[{data}]", "train.grpo.rewards=[tests.test_grpo:raises]")
  assert code == 2 and "Traceback" not in err, err
  assert "the reward 'tests.test_grpo:raises' raised KeyError" in err
  assert "train.grpo.reward_errors: skip" in err


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
  """The toy GRPO run uninterrupted, and the same run stopped after step 9 (inside a round: it
  goes on to the round's end, 10) and resumed to step 14: their metrics.jsonl rows. Both
  evaluate on 8 held-out prompts every 10 steps."""
  from lmjax.infer import generate
  from lmjax.train.loop import train
  tmp = tmp_path_factory.mktemp("grpo_toy")
  config = load_config("tiny-gpt", TOY + [f"data.paths=[{_prompts(tmp / 'prompts.jsonl')}]",
                                          f"data.eval_paths=[{_prompts(tmp / 'held.jsonl', 8, 1)}]"])
  whole = train(config, tmp / "whole", sampler=generate)
  first = train(config, tmp / "resumed", stop_after=9, sampler=generate)
  second = train(config, tmp / "resumed", stop_after=14, sampler=generate)
  assert (whole.final_step, first.final_step, second.start_step) == (24, 10, 10)
  return metrics_rows(tmp / "whole"), metrics_rows(tmp / "resumed")


def test_the_toy_grpo_run_learns_its_reward_and_logs_the_grpo_metrics(toy_runs):
  rows, _ = toy_runs
  assert [r["step"] for r in rows] == list(range(2, 25, 2))
  for row in rows:
    assert {"reward_mean", "reward_std", "reward_letters_mean", "reward_letters_std",
            "kl", "clip_fraction", "completion_length", "reward_errors"} <= set(row)
    assert 1 <= row["completion_length"] <= 8 and row["reward_errors"] == 0
  # A random tiny model samples one of 26 letters in 288 bytes (about 0.1 of its characters).
  # Rewarded for letters, it writes mostly letters by step 24 (seed 0: 0.15 -> 0.77).
  first = np.mean([r["reward_mean"] for r in rows[:3]])
  last = np.mean([r["reward_mean"] for r in rows[-3:]])
  assert first < 0.2 and last > first + 0.3, (first, last)
  assert any(r["clip_fraction"] > 0 for r in rows)  # the second step of a round is off policy


def test_a_resumed_grpo_run_samples_and_trains_as_the_uninterrupted_one(toy_runs):
  whole, resumed = toy_runs
  pick = lambda rows: [(r["step"], r["reward_mean"], r["loss"]) for r in rows]
  assert [r["step"] for r in resumed] == list(range(2, 15, 2))
  for got, expected in zip(pick(resumed), pick(whole)):
    assert got[0] == expected[0]
    assert math.isclose(got[1], expected[1], rel_tol=1e-6, abs_tol=1e-9), (got, expected)
    assert math.isclose(got[2], expected[2], rel_tol=1e-4, abs_tol=1e-7), (got, expected)



def test_full_fine_tuning_grpo_pays_its_kl_to_a_frozen_copy_and_resumes_exactly(tmp_path):
  """beta > 0 without LoRA: the reference is a frozen copy of the initial params (rebuilt on
  resume), so the KL starts at 0 (the policy is its reference) and grows as the policy moves."""
  from lmjax.infer import generate
  from lmjax.train.loop import train
  config = load_config("tiny-gpt", TOY + [f"data.paths=[{_prompts(tmp_path / 'p.jsonl')}]",
                                          "train.steps=8", "train.grpo.beta=0.04",
                                          "train.log_every=1"])
  train(config, tmp_path / "whole", sampler=generate)
  train(config, tmp_path / "resumed", stop_after=4, sampler=generate)
  train(config, tmp_path / "resumed", sampler=generate)
  whole, resumed = metrics_rows(tmp_path / "whole"), metrics_rows(tmp_path / "resumed")
  assert whole[0]["kl"] == 0.0 and whole[-1]["kl"] > 0, [r["kl"] for r in whole]
  pick = lambda rows: [(r["step"], r["kl"], r["loss"]) for r in rows]
  assert [r[0] for r in pick(resumed)] == list(range(1, 9))
  for got, expected in zip(pick(resumed), pick(whole)):
    assert math.isclose(got[1], expected[1], rel_tol=1e-4, abs_tol=1e-7), (got, expected)
    assert math.isclose(got[2], expected[2], rel_tol=1e-4, abs_tol=1e-7), (got, expected)


def test_the_toy_grpo_run_logs_the_held_out_prompts_rewards(toy_runs):
  whole, resumed = toy_runs
  evals = {r["step"]: r for r in whole if "eval_reward_mean" in r}
  assert sorted(evals) == [10, 20, 24]
  for row in evals.values():
    assert {"eval_reward_letters_mean", "eval_completion_length", "eval_reward_errors"} <= set(row)
    assert "eval_reward_std" not in row
  # Greedy completions of prompts never trained on: letters once the run has learnt (seed 0:
  # 0.0 at step 10, 1.0 at steps 20 and 24).
  assert evals[10]["eval_reward_mean"] < 0.5 < evals[24]["eval_reward_mean"], evals
  assert [r for r in resumed if r["step"] == 10][0]["eval_reward_mean"] == \
      evals[10]["eval_reward_mean"]
