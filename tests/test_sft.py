"""Instruction tuning: rendering, the loss mask (checked against hand-computed ones), packing of
whole examples, the masked loss, bad rows, and a run that learns to answer through --chat."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.cli import main
from lmjax.config import load_config
from lmjax.data.tokenize.chat import DEFAULT_TEMPLATE, ChatTemplate, load_template, segments
from lmjax.data.config import BadRecords, DataConfig
from lmjax.data.examples.sft import pack_examples, tokenize_examples
from lmjax.data.sources.documents import ReadStats
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.objectives import cross_entropy_sums, objective_loss, sft_targets
from lmjax.data.spec import Objective
from tests.conftest import TINY

BYTES = Tokenizer.byte_level()


def test_a_pair_trains_on_the_completion_and_the_eos_only():
  (ids, mask), = tokenize_examples([({"prompt": "ab", "completion": "cd"}, "x:1")], BYTES,
                                   ChatTemplate(DEFAULT_TEMPLATE), DataConfig(), ReadStats())
  assert ids == BYTES.encode("abcd") + [BYTES.eos_id]
  assert mask == [0, 0, 1, 1, 1]


def test_a_chat_trains_on_the_assistant_text_not_its_header():
  chat = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                       {"role": "assistant", "content": "A"}]}
  assert segments(chat, ChatTemplate(DEFAULT_TEMPLATE), where="x:1") == [
      ("<|im_start|>system\nS<|im_end|>\n", False), ("<|im_start|>user\nU<|im_end|>\n", False),
      ("<|im_start|>assistant\n", False), ("A<|im_end|>\n", True)]


def test_a_tokenizer_config_template_is_used(tmp_path):
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": (
      "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
      "{% if add_generation_prompt %}[assistant]{% endif %}")}))
  template = ChatTemplate(load_template(str(tmp_path)))
  chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
  assert segments(chat, template, where="x:1") == [("[user]hi", False), ("[assistant]", False),
                                                   ("yo", True)]


@pytest.mark.parametrize("file, content, message", [
    ("chat.jinja", " \n", "is empty: a template renders the messages"),
    ("tokenizer_config.json", json.dumps({"chat_template": [{"name": "tool_use",
                                                              "template": "x"}]}),
     "has chat templates named 'tool_use' but none named 'default'"),
    ("tokenizer_config.json", "{not json", "is not valid JSON"),
    ("tokenizer_config.json", json.dumps({"chat_template": ""}), "holds no chat template"),
    ("tokenizer_config.json", json.dumps({"model_max_length": 8}), "holds no chat template"),
    ("", None, "data.chat_template is an empty string"),  # would be read as "."
])
def test_a_chat_template_that_cannot_mean_what_it_says_is_refused(tmp_path, file, content,
                                                                  message):
  if content is not None:
    (tmp_path / file).write_text(content)
  with pytest.raises(UserError, match=message):
    load_template(str(tmp_path / file) if file else file)


def test_instruction_rows_whose_answers_seq_len_cuts_away_are_refused_not_trained_at_loss_0():
  from lmjax.data.examples.sft import load_sft
  rows = [({"prompt": "a long question " * 4, "completion": "yes"}, f"d.jsonl:{i}")
          for i in range(4)]
  with pytest.raises(UserError, match=r"train.seq_len=32 cuts away the answer of every training "
                                      r"instruction example \(the shortest prompt is 64 tokens"):
    load_sft(DataConfig(), rows, ReadStats(), BYTES, seq_len=32, template_source=None)
  train, held_out, cut = load_sft(DataConfig(), rows, ReadStats(), BYTES, seq_len=80,
                                  template_source=None)
  assert train.arrays["loss_mask"].sum() > 0 and cut == 0


def test_sft_targets_count_only_predictions_of_answer_tokens():
  # Two examples packed in a row, then padding: segments 1 1 1 1 | 2 2 2 | 0.
  input_ids = jnp.array([[5, 6, 7, 8, 9, 10, 11, 0]])
  segment_ids = jnp.array([[1, 1, 1, 1, 2, 2, 2, 0]])
  loss_mask = jnp.array([[0, 0, 1, 1, 0, 1, 1, 0]])
  targets, weights = sft_targets(input_ids, segment_ids, loss_mask)
  # Position t predicts token t+1: counted when both are in one example and t+1 is an answer.
  assert weights.astype(int).tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]
  assert targets.tolist()[0][:7] == [6, 7, 8, 9, 10, 11, 0]


def test_the_sft_loss_is_the_cross_entropy_of_the_masked_positions():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.standard_normal((1, 8, 16)), jnp.float32)
  batch = {"input_ids": jnp.array([[1, 2, 3, 4, 5, 6, 7, 0]]),
           "segment_ids": jnp.array([[1, 1, 1, 1, 2, 2, 2, 0]]),
           "loss_mask": jnp.array([[0, 0, 1, 1, 0, 1, 1, 0]])}
  sums = objective_loss(Objective.SFT, logits, batch)
  log_p = np.asarray(logits) - np.log(np.exp(np.asarray(logits)).sum(-1, keepdims=True))
  expected = -sum(log_p[0, t, batch["input_ids"][0, t + 1]] for t in (1, 2, 4, 5))
  np.testing.assert_allclose(float(sums.loss), expected, rtol=1e-5)
  assert float(sums.weight) == 4
  full = cross_entropy_sums(logits[:, :-1], batch["input_ids"][:, 1:], jnp.ones((1, 7)))
  assert float(full.weight) == 7  # the mask is what removed the other three


def test_examples_are_packed_whole_and_long_ones_cut():
  examples = [([1] * 5, [0, 0, 1, 1, 1]), ([2] * 4, [0, 1, 1, 1]), ([3] * 6, [0] * 3 + [1] * 3),
              ([4] * 12, [1] * 12)]
  rows, cut = pack_examples(examples, seq_len=10)
  assert cut == 1
  assert rows["segment_ids"].tolist() == [[1] * 5 + [2] * 4 + [0], [1] * 6 + [0] * 4,
                                          [1] * 10]
  assert rows["positions"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0]
  assert rows["loss_mask"][0].tolist() == [0, 0, 1, 1, 1, 0, 1, 1, 1, 0]


@pytest.mark.parametrize("row, message", [
    ({"messages": [{"role": "wizard", "content": "x"}]}, "message 0 has role 'wizard'"),
    ({"messages": [{"role": "user", "content": "x"}]}, "has no assistant message"),
    ({"text": "x"}, "needs string fields prompt and completion"),
    ({"prompt": "x", "completion": " "}, "the completion is empty"),
])
def test_bad_rows_are_named(row, message):
  with pytest.raises(UserError) as info:
    tokenize_examples([(row, "data.jsonl:7")], BYTES, ChatTemplate(DEFAULT_TEMPLATE),
                      DataConfig(), ReadStats())
  assert "data.jsonl:7" in str(info.value) and message in str(info.value)
  stats = ReadStats()
  assert tokenize_examples([(row, "data.jsonl:7")], BYTES, ChatTemplate(DEFAULT_TEMPLATE),
                           DataConfig(bad_records=BadRecords.SKIP), stats) == []
  assert stats.skipped == 1


@pytest.mark.parametrize("source, message", [
    ("{% for i in range(10**9) %}x{% endfor %}", "failed to render it: OverflowError: Range too big"),
    ("{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}",
     "renders more than 1,000,000 characters for it"),
    ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
     "ran for more than 0.3 s on it"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recurses without end"),
])
def test_a_template_that_would_render_without_end_is_stopped_and_named(monkeypatch, source,
                                                                      message):
  from lmjax.data.tokenize import render_limits
  if "ran for more than" in message:  # the others must stop on their own, well before 10 s
    monkeypatch.setattr(render_limits, "RENDER_SECONDS", 0.3)
  with pytest.raises(UserError, match=f"data.jsonl:4: the chat template {message}"):
    ChatTemplate(source).render([{"role": "user", "content": "hi"}], where="data.jsonl:4")


@pytest.mark.parametrize("source", [
    "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% for i in range(99999) %}{% endfor %}{{ f(n) if n < 10**9 }}{% endmacro %}"
    "{{ f(0) }}",
])
def test_the_time_limit_holds_off_the_main_thread(monkeypatch, source):
  """A server renders on worker threads, where no signal reaches: the sandbox's own checks
  stop the render there too."""
  import concurrent.futures
  import time

  from lmjax.data.tokenize import render_limits
  monkeypatch.setattr(render_limits, "RENDER_SECONDS", 0.3)
  render = lambda: ChatTemplate(source).render([{"role": "user", "content": "hi"}], where="req")
  start = time.monotonic()
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    with pytest.raises(UserError, match="req: the chat template ran for more than 0.3 s on it"):
      pool.submit(render).result(timeout=30)
  assert time.monotonic() - start < 5


def test_a_template_that_fails_names_the_row():
  template = ChatTemplate("{{ raise_exception('no system messages here') }}")
  with pytest.raises(UserError, match="data.jsonl:2: the chat template failed.*no system"):
    segments({"messages": [{"role": "assistant", "content": "a"}]}, template,
             where="data.jsonl:2")


@pytest.mark.parametrize("name, objective, message", [
    ("tiny-bert", "sft", "train.objective=sft tunes a causal LM; this model's head is masked_lm"),
    ("tiny-gpt", "masked_lm", "train.objective=masked_lm needs model.head=masked_lm"),
])
def test_an_objective_the_head_cannot_train_is_refused(name, objective, message):
  from lmjax.train.setup import objective_of
  with pytest.raises(UserError, match=message):
    objective_of(load_config(name, [f"train.objective={objective}"]))


def test_named_objectives_equal_the_ones_the_heads_imply():
  from lmjax.train.setup import objective_of
  for name, objective in [("tiny-gpt", "causal_lm"), ("tiny-bert", "masked_lm")]:
    assert objective_of(load_config(name, [f"train.objective={objective}"])) == \
        objective_of(load_config(name))


def test_a_run_learns_to_answer_and_chat_generation_uses_the_template(tmp_path, capsys):
  rows = []
  for i in range(64):
    question = f"question {i}?"
    rows.append({"messages": [{"role": "user", "content": question},
                              {"role": "assistant", "content": "OK"}]} if i % 2 else
                {"prompt": f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
                 "completion": "OK<|im_end|>\n"})
  data = tmp_path / "data.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in rows))
  run = tmp_path / "run"
  assert main(["train", "tiny-gpt", "--run-dir", str(run), "--set", *TINY, "train.steps=40",
               "train.seq_len=64", "train.objective=sft", "data.source=jsonl",
               f"data.paths=[{data}]", "train.learning_rate=1e-2"]) == 0
  logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert logged[-1]["loss"] < 0.5 * logged[0]["loss"]
  capsys.readouterr()
  assert main(["generate", "--run-dir", str(run), "--chat", "--prompt", "question 99?",
               "--temperature", "0", "--max-new-tokens", "2"]) == 0
  assert capsys.readouterr().out.strip() == "OK"


def test_the_chunked_sft_loss_equals_the_whole_one():
  from lmjax.objectives import chunked_objective_loss
  rng = np.random.default_rng(1)
  hidden = jnp.asarray(rng.standard_normal((2, 8, 4)), jnp.float32)
  projection = jnp.asarray(rng.standard_normal((4, 16)), jnp.float32)
  batch = {"input_ids": jnp.asarray(rng.integers(0, 16, (2, 8))),
           "segment_ids": jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]] * 2),
           "loss_mask": jnp.array([[0, 1, 1, 0, 0, 1, 1, 0]] * 2)}
  whole = objective_loss(Objective.SFT, hidden @ projection, batch)
  chunked = chunked_objective_loss(Objective.SFT, hidden, lambda h: h @ projection, batch, 3)
  np.testing.assert_allclose(float(chunked.loss), float(whole.loss), rtol=1e-5)
  assert float(chunked.weight) == float(whole.weight) == 8  # t = 0, 1, 4, 5 of each row


def test_data_prepare_refuses_instruction_data(tmp_path, capsys):
  assert main(["data", "prepare", "lora", str(tmp_path / "out")]) == 2
  assert "instruction tuning" in capsys.readouterr().err and not (tmp_path / "out").exists()
