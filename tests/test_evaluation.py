"""Evaluation: continuation log-likelihoods, perplexity in sliding windows, `lmjax score`, and
lm-evaluation-harness on local tasks, all against PyTorch `transformers` on the same weights.

The models are tiny random `transformers` models with a BPE tokenizer trained here; the harness
tasks are YAML files written by the tests over local JSON Lines files (nothing is downloaded).
"""

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from lmjax.cli import main  # noqa: E402
from lmjax.convert import from_hf  # noqa: E402
from lmjax.data.sources.documents import builtin_corpus  # noqa: E402
from lmjax.data.tokenize.tokenizer import Tokenizer  # noqa: E402
from lmjax.errors import UserError  # noqa: E402
from lmjax.infer import continuation_log_likelihoods  # noqa: E402
from lmjax.infer import perplexity  # noqa: E402
from lmjax.infer.perplexity import window_requests  # noqa: E402
from tests.processes import cpu_env  # noqa: E402
from tests.helpers import run_cli  # noqa: E402
from tests.hf_models import build_hf  # noqa: E402

TOL = dict(atol=1e-4, rtol=1e-4)
CONTEXT = 48  # the GPT-2's n_positions: documents below run past it


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
  """A tiny random GPT-2 with a real BPE tokenizer (with BOS and EOS), saved as HF saves it."""
  directory = tmp_path_factory.mktemp("hf-gpt2")
  tokenizer = Tokenizer.train_bpe(builtin_corpus()[:30], vocab_size=300)
  tokenizer.save(directory)
  config = transformers.GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2,
                                   n_head=4, n_positions=CONTEXT, initializer_range=0.3,
                                   eos_token_id=tokenizer.eos_id, bos_token_id=tokenizer.eos_id)
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(config).eval()
  model.save_pretrained(directory)
  return directory, model, tokenizer


def torch_log_probs(hf_model, ids: list[int]) -> np.ndarray:
  """log p(ids[t] | ids[:t]) for t >= 1, by PyTorch: float64 [len - 1]."""
  with torch.no_grad():
    logits = hf_model(torch.tensor([ids[:-1]])).logits[0].double()
  log_probs = torch.log_softmax(logits, dim=-1)
  return log_probs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()


def torch_sliding_nll(hf_model, ids: list[int], *, max_length: int, stride: int) -> float:
  """The negative log-likelihood of ids[1:] by PyTorch, predicted `stride` tokens at a time, each
  chunk from a window of the `max_length` tokens before its last target (so each chunk after the
  first has `max_length - stride` tokens of context at least, as in HF's perplexity guide, which
  however leaves each window's first token unpredicted)."""
  nll = 0.0
  for begin in range(1, len(ids), stride):
    end = min(begin + stride, len(ids))
    window = ids[max(0, end - 1 - max_length):end]
    with torch.no_grad():
      logits = hf_model(torch.tensor([window[:-1]])).logits[0, -(end - begin):].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    nll -= float(log_probs[torch.arange(end - begin), torch.tensor(ids[begin:end])].sum())
  return nll


# -- token level -----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 5, 47, 48, 49, 100, 143])
def test_windows_with_the_full_stride_are_the_harness_rolling_windows(length):
  tokens = list(range(3, 3 + length))
  ours = window_requests(tokens, prefix=1, max_length=8, stride=8)
  theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 1, 8, 1)]
  assert [(list(c), list(t)) for c, t in theirs] == ours


@pytest.mark.parametrize("stride", [1, 3, 8])
def test_windows_predict_every_token_once_with_max_length_minus_stride_context(stride):
  tokens = list(range(5, 45))
  requests = window_requests(tokens, prefix=None, max_length=8, stride=stride)
  predicted = [t for _, continuation in requests for t in continuation]
  assert predicted == tokens[1:]  # without a prefix the first token has nothing to follow
  for n, (context, continuation) in enumerate(requests):
    assert context[-1] == tokens[tokens.index(continuation[0]) - 1]
    assert len(context) + len(continuation) <= 8 + 1
    assert len(context) >= min(8 - stride, tokens.index(continuation[0]))  # all there is


@pytest.mark.parametrize("name", ["gpt2_lm", "llama", "qwen2"])
def test_continuation_log_likelihoods_match_transformers(name, tmp_path):
  hf_model = build_hf(name)
  hf_model.save_pretrained(tmp_path)
  model, params = from_hf(tmp_path)
  vocab, context = model.config.vocab_size, 24
  rng = np.random.default_rng(0)
  requests = [(rng.integers(0, vocab, n).tolist(), rng.integers(0, vocab, m).tolist())
              for n, m in [(1, 1), (5, 3), (17, 1), (2, 20), (30, 4), (9, 9), (3, 24)]]
  # the greedy continuation of one context, which must come out as greedy
  prompt = rng.integers(0, vocab, 6).tolist()
  with torch.no_grad():
    greedy = hf_model.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False,
                               pad_token_id=0)[0, 6:].tolist()
  requests.append((prompt, greedy))
  got = continuation_log_likelihoods(model, params, requests, max_length=context, batch_size=3)
  for (ctx, cont), (log_p, is_greedy) in zip(requests, got):
    whole = (ctx + cont)[-(context + 1):]
    with torch.no_grad():
      logits = hf_model(torch.tensor([whole[:-1]])).logits[0, -len(cont):].double()
    expected = torch.log_softmax(logits, -1)[torch.arange(len(cont)), torch.tensor(cont)].sum()
    np.testing.assert_allclose(log_p, float(expected), **TOL)
    assert is_greedy == bool((logits.argmax(-1) == torch.tensor(cont)).all())
  assert got[-1][1] and not all(g for _, g in got[:-1])


def test_continuation_log_likelihoods_refuse_what_they_cannot_score(hf_gpt2):
  model, params = from_hf(hf_gpt2[0])
  with pytest.raises(UserError, match="empty context"):
    continuation_log_likelihoods(model, params, [([], [5])])
  with pytest.raises(UserError, match="more than max_length=8"):
    continuation_log_likelihoods(model, params, [([1], list(range(9)))], max_length=8)
  with pytest.raises(UserError, match="token id 300"):
    continuation_log_likelihoods(model, params, [([1], [300])])


# -- perplexity and score --------------------------------------------------------------------


DOCUMENTS = [text[:400] for text in builtin_corpus()[40:44]] + ["Short one.", "naïve café ✓"]


@pytest.mark.parametrize("stride", [None, 16])
def test_eval_data_gives_the_sliding_window_perplexity_of_transformers(hf_gpt2, tmp_path, capsys,
                                                                       stride):
  directory, hf_model, tokenizer = hf_gpt2
  data = tmp_path / "docs.jsonl"
  data.write_text("".join(json.dumps({"body": d}) + "\n" for d in DOCUMENTS))
  code, out, err = run_cli(capsys, "eval", "--hf", directory, "--data", data, "--field", "body",
                           *(["--stride", stride] if stride else []))
  assert code == 0, err
  report = json.loads(out)
  nll, tokens = 0.0, 0
  for text in DOCUMENTS:  # documents follow the BOS token, as in the harness
    ids = [tokenizer.bos_id] + tokenizer.encode(text)
    assert len(ids) > CONTEXT or text in DOCUMENTS[-2:]
    nll += torch_sliding_nll(hf_model, ids, max_length=CONTEXT, stride=stride or CONTEXT)
    tokens += len(ids) - 1
  num_bytes = sum(len(t.encode()) for t in DOCUMENTS)
  assert report["tokens"] == tokens and report["bytes"] == num_bytes
  assert report["documents"] == len(DOCUMENTS)
  assert report["stride"] == (stride or CONTEXT) and report["max_length"] == CONTEXT
  np.testing.assert_allclose(report["loss"], nll / tokens, **TOL)
  np.testing.assert_allclose(report["perplexity"], math.exp(nll / tokens), **TOL)
  np.testing.assert_allclose(report["bits_per_byte"], nll / math.log(2) / num_bytes, **TOL)


def test_documents_are_scored_a_few_windows_at_a_time_as_they_are_read(hf_gpt2, monkeypatch):
  """score_texts reads its documents as an iterator and scores the windows in passes of at
  most _REQUESTS_PER_PASS (plus one document's), with each document's totals as in one pass."""
  directory, _, tokenizer = hf_gpt2
  model, params = from_hf(directory)
  whole = perplexity.score_texts(model, params, tokenizer, DOCUMENTS, stride=16)
  passes, read = [], []
  scorer = perplexity.continuation_log_likelihoods

  def recording(model, params, requests, **kwargs):
    passes.append((len(requests), len(read)))
    return scorer(model, params, requests, **kwargs)

  def documents():
    for text in DOCUMENTS:
      read.append(text)
      yield text
  monkeypatch.setattr(perplexity, "_REQUESTS_PER_PASS", 3)
  monkeypatch.setattr(perplexity, "continuation_log_likelihoods", recording)
  streamed = perplexity.score_texts(model, params, tokenizer, documents(), stride=16)
  most = max(len(perplexity.window_requests(tokenizer.encode(t), prefix=tokenizer.bos_id,
                                            max_length=CONTEXT, stride=16)) for t in DOCUMENTS)
  assert len(passes) > 1 and passes[0][1] < len(DOCUMENTS)  # began before the last was read
  assert all(size < 3 + most for size, _ in passes)
  assert [(s.tokens, s.bytes) for s in streamed] == [(s.tokens, s.bytes) for s in whole]
  np.testing.assert_allclose([s.log_likelihood for s in streamed],
                             [s.log_likelihood for s in whole], rtol=1e-5)


def test_a_smaller_stride_gives_more_context_and_a_plain_text_file_is_one_document(
    hf_gpt2, tmp_path, capsys):
  directory, hf_model, tokenizer = hf_gpt2
  text = " ".join(builtin_corpus()[50:52])[:1500]
  (tmp_path / "book.txt").write_text(text)
  reports = {}
  for stride in (48, 8):
    code, out, err = run_cli(capsys, "eval", "--hf", directory, "--data", tmp_path / "book.txt",
                             "--stride", stride)
    assert code == 0, err
    reports[stride] = json.loads(out)
  ids = [tokenizer.bos_id] + tokenizer.encode(text)
  assert reports[8]["documents"] == 1 and reports[8]["tokens"] == len(ids) - 1
  np.testing.assert_allclose(reports[8]["loss"] * reports[8]["tokens"],
                             torch_sliding_nll(hf_model, ids, max_length=CONTEXT, stride=8), **TOL)
  assert reports[8]["loss"] != reports[48]["loss"]


def test_score_writes_each_documents_log_likelihood(hf_gpt2, tmp_path, capsys):
  directory, hf_model, tokenizer = hf_gpt2
  source = tmp_path / "in.jsonl"
  source.write_text("".join(json.dumps({"id": n, "text": d}) + "\n\n"
                            for n, d in enumerate(DOCUMENTS)))
  out_file = tmp_path / "scores.jsonl"
  code, out, err = run_cli(capsys, "score", source, "--hf", directory, "--output", out_file)
  assert code == 0, err
  assert "documents" in err and out == ""
  rows = [json.loads(line) for line in out_file.read_text().splitlines()]
  assert [r["id"] for r in rows] == list(range(len(DOCUMENTS)))
  for row, text in zip(rows, DOCUMENTS):
    ids = [tokenizer.bos_id] + tokenizer.encode(text)
    assert row["text"] == text and row["tokens"] == len(ids) - 1
    assert row["bytes"] == len(text.encode())
    nll = torch_sliding_nll(hf_model, ids, max_length=CONTEXT, stride=CONTEXT)
    np.testing.assert_allclose(row["log_likelihood"], -nll, **TOL)
    np.testing.assert_allclose(row["bits_per_byte"], nll / math.log(2) / row["bytes"], **TOL)
  # to stdout, the same numbers
  code, out, _ = run_cli(capsys, "score", source, "--hf", directory)
  assert [json.loads(line) for line in out.splitlines()] == rows


@pytest.mark.parametrize("content, flags, message", [
    (None, [], "does not exist"),
    ("", [], "holds no records"),
    ('{"text": "a"}\nnot json\n', [], "line 2 is not valid JSON"),
    ('{"text": "a"}\n{"body": "b"}\n', [], "line 2 has no string field 'text'"),
    ('{"text": "a"}\n', ["--stride", "0"], "--stride 0 must be between 1"),
    ('{"text": "a"}\n', ["--stride", "60"], "--stride 60 must be between 1"),
    ('{"text": "a"}\n', ["--max-length", "49"], "--max-length 49 must be between 1"),
    ('{"text": "a"}\n', ["--step", "3"], "drop --step"),
])
def test_score_refuses_bad_input_and_writes_nothing(hf_gpt2, tmp_path, capsys, content, flags,
                                                    message):
  source = tmp_path / "in.jsonl"
  if content is not None:
    source.write_text(content)
  code, out, err = run_cli(capsys, "score", source, "--hf", hf_gpt2[0],
                           "--output", tmp_path / "out.jsonl", *flags)
  assert code == 2 and message in err and "Traceback" not in err
  assert not (tmp_path / "out.jsonl").exists()


def test_score_never_overwrites_and_eval_needs_documents(hf_gpt2, tmp_path, capsys):
  (tmp_path / "in.jsonl").write_text('{"text": "a b c"}\n')
  (tmp_path / "out.jsonl").write_text("keep me\n")
  code, _, err = run_cli(capsys, "score", tmp_path / "in.jsonl", "--hf", hf_gpt2[0],
                         "--output", tmp_path / "out.jsonl")
  assert code == 2 and "exists" in err and (tmp_path / "out.jsonl").read_text() == "keep me\n"
  code, _, err = run_cli(capsys, "eval", "--hf", hf_gpt2[0])
  assert code == 2 and "--data is missing" in err
  code, _, err = run_cli(capsys, "eval", "--hf", hf_gpt2[0], "--data", tmp_path / "a.txt",
                         tmp_path / "b.jsonl")
  assert code == 2 and "mixes kinds" in err


def test_perplexity_and_the_harness_refuse_a_masked_lm(tmp_path, capsys):
  build_hf("bert_mlm").save_pretrained(tmp_path)
  Tokenizer.byte_level().save(tmp_path)
  (tmp_path / "a.txt").write_text("some text")
  code, _, err = run_cli(capsys, "eval", "--hf", tmp_path, "--data", tmp_path / "a.txt")
  assert code == 2 and "need a causal language model" in err and "masked_lm" in err
  code, _, err = run_cli(capsys, "eval-harness", "--hf", tmp_path, "--tasks", "arc_easy")
  assert code == 2 and "need a causal language model" in err


# -- lm-evaluation-harness -------------------------------------------------------------------

QUESTIONS = [
    {"question": "The opposite of hot is", "choices": ["cold", "warm", "blue"], "answer": 0},
    {"question": "A list in Python is", "choices": ["mutable", "a tuple", "immutable"],
     "answer": 0},
    {"question": "Two plus two makes", "choices": ["three", "four", "five", "six"], "answer": 1},
    {"question": "The sky is", "choices": ["green", "loud", "blue"], "answer": 2},
    {"question": "Functions are defined with", "choices": ["def", "class", "import"],
     "answer": 0},
    {"question": "Water freezes at zero", "choices": ["degrees", "metres"], "answer": 0},
]


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
  """Three local tasks: multiple choice, rolling perplexity and generation."""
  directory = tmp_path_factory.mktemp("tasks")
  (directory / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
  (directory / "documents.jsonl").write_text(
      "".join(json.dumps({"page": d}) + "\n" for d in DOCUMENTS))
  common = f"""
      dataset_path: json
      dataset_kwargs:
        data_files:
          test: {directory}/{{file}}
      test_split: test
      metadata:
        version: 1.0
  """
  (directory / "choice.yaml").write_text(textwrap.dedent("""
      task: lmjax_choice
      output_type: multiple_choice
      doc_to_text: "Question: {{question}}\\nAnswer:"
      doc_to_choice: "{{choices}}"
      doc_to_target: answer
      metric_list:
        - metric: acc
          aggregation: mean
          higher_is_better: true
  """) + textwrap.dedent(common).format(file="questions.jsonl"))
  (directory / "rolling.yaml").write_text(textwrap.dedent("""
      task: lmjax_rolling
      output_type: loglikelihood_rolling
      doc_to_text: ""
      doc_to_target: "{{page}}"
      metric_list:
        - metric: word_perplexity
        - metric: byte_perplexity
        - metric: bits_per_byte
  """) + textwrap.dedent(common).format(file="documents.jsonl"))
  (directory / "until.yaml").write_text(textwrap.dedent("""
      task: lmjax_until
      output_type: generate_until
      doc_to_text: "{{question}}"
      doc_to_target: "{{choices[answer]}}"
      generation_kwargs:
        until: ["e"]
        max_gen_toks: 12
        do_sample: false
      metric_list:
        - metric: exact_match
          aggregation: mean
          higher_is_better: true
  """) + textwrap.dedent(common).format(file="questions.jsonl"))
  return directory


def harness_results(capsys, directory, tasks_dir, tmp_path, tasks, *flags):
  out_file = tmp_path / f"results-{tasks}.json"
  code, out, err = run_cli(capsys, "eval-harness", "--hf", directory, "--tasks", tasks,
                           "--include-path", tasks_dir, "--output", out_file, *flags)
  assert code == 0, err
  assert "|" in out  # the harness' table
  return json.loads(out_file.read_text())["results"]


def test_harness_multiple_choice_accuracy_is_the_one_computed_by_hand(hf_gpt2, tasks_dir,
                                                                      tmp_path, capsys):
  directory, hf_model, tokenizer = hf_gpt2
  results = harness_results(capsys, directory, tasks_dir, tmp_path, "lmjax_choice")
  right = 0
  for q in QUESTIONS:  # the harness' encoding: "Answer:" then " choice", as one sequence
    context = tokenizer.encode(f"Question: {q['question']}\nAnswer:")
    scores = []
    for choice in q["choices"]:
      whole = tokenizer.encode(f"Question: {q['question']}\nAnswer: {choice}")
      scores.append(torch_log_probs(hf_model, whole)[len(context) - 1:].sum())
    right += int(np.argmax(scores)) == q["answer"]
  assert results["lmjax_choice"]["acc,none"] == pytest.approx(right / len(QUESTIONS))


def test_the_harness_runs_quietly_outside_a_git_repository(hf_gpt2, tasks_dir, tmp_path, capfd,
                                                          monkeypatch):
  """lm-eval's `git describe` (for metadata lmjax does not keep) would print git's "fatal: not a
  git repository" on the terminal: captured here at the file descriptor."""
  monkeypatch.chdir(tmp_path)
  assert main(["eval-harness", "--hf", str(hf_gpt2[0]), "--tasks", "lmjax_choice",
               "--include-path", str(tasks_dir)]) == 0
  out, err = capfd.readouterr()
  assert "|" in out and "fatal" not in err and "git" not in err


def test_harness_loglikelihoods_are_transformers_ones(hf_gpt2):
  directory, hf_model, tokenizer = hf_gpt2
  from lmjax.infer.harness import LmjaxLM
  lm = LmjaxLM(hf=str(directory), batch_size=2)
  pairs = [("Question: The sky is\nAnswer:", " blue"), ("The opposite of hot is ", "cold"),
           ("", "An empty context is the BOS token."), ("x " * 60, " far past the context")]
  got = lm.loglikelihood([Instance("loglikelihood", {}, pair, 0)
                          for pair in pairs])
  for (context, continuation), (log_p, _) in zip(pairs, got):
    # the harness' encoding: trailing spaces move to the continuation, which is what the whole
    # encoding holds after the context's tokens; an empty context is the BOS token
    if context:
      context, continuation = context.rstrip(" "), context[len(context.rstrip(" ")):] + continuation
      context_ids = tokenizer.encode(context)
      continuation_ids = tokenizer.encode(context + continuation)[len(context_ids):]
    else:
      context_ids, continuation_ids = [tokenizer.bos_id], tokenizer.encode(continuation)
    whole = (context_ids + continuation_ids)[-(CONTEXT + 1):]  # the oldest context is dropped
    expected = torch_log_probs(hf_model, whole)[-len(continuation_ids):].sum()
    np.testing.assert_allclose(log_p, expected, **TOL)
  assert len(tokenizer.encode(pairs[-1][0])) > CONTEXT


def test_harness_rolling_perplexity_agrees_with_eval_data(hf_gpt2, tasks_dir, tmp_path, capsys):
  directory = hf_gpt2[0]
  results = harness_results(capsys, directory, tasks_dir, tmp_path, "lmjax_rolling")
  code, out, err = run_cli(capsys, "eval", "--hf", directory,
                           "--data", tasks_dir / "documents.jsonl", "--field", "page")
  assert code == 0, err
  np.testing.assert_allclose(results["lmjax_rolling"]["bits_per_byte,none"],
                             json.loads(out)["bits_per_byte"], **TOL)


def test_harness_generation_stops_at_the_tasks_stop_strings(hf_gpt2, tasks_dir, tmp_path,
                                                            capsys):
  directory, hf_model, tokenizer = hf_gpt2
  from lmjax.infer.harness import LmjaxLM
  lm = LmjaxLM(hf=str(directory))
  requests = [Instance(
      "generate_until", {}, (q["question"], {"until": ["e"], "max_gen_toks": 12}), 0)
      for q in QUESTIONS]
  texts = lm.generate_until(requests)
  for q, text in zip(QUESTIONS, texts):
    prompt = tokenizer.encode(q["question"])
    with torch.no_grad():
      ids = hf_model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                              pad_token_id=0)[0, len(prompt):].tolist()
    expected = tokenizer.decode(ids)
    assert "e" not in text and text == expected.split("e")[0]
  results = harness_results(capsys, directory, tasks_dir, tmp_path, "lmjax_until")
  matches = [t.strip() == q["choices"][q["answer"]] for q, t in zip(QUESTIONS, texts)]
  assert results["lmjax_until"]["exact_match,none"] == pytest.approx(np.mean(matches))


def test_the_harness_finds_the_model_by_name_from_python(hf_gpt2, tasks_dir):
  from lm_eval.api.registry import get_model
  from lm_eval.tasks import TaskManager

  import lmjax.infer.harness  # importing it registers the model "lmjax"
  assert get_model("lmjax") is lmjax.infer.harness.LmjaxLM
  results = lm_eval.simple_evaluate(model="lmjax", model_args=f"hf={hf_gpt2[0]},batch_size=4",
                                    tasks=["lmjax_choice"], limit=3,
                                    task_manager=TaskManager(include_path=str(tasks_dir),
                                                             include_defaults=False))
  assert 0.0 <= results["results"]["lmjax_choice"]["acc,none"] <= 1.0
  assert len(results["samples"]["lmjax_choice"]) == 3


def test_harness_refuses_unknown_tasks(hf_gpt2, tasks_dir, capsys):
  code, _, err = run_cli(capsys, "eval-harness", "--hf", hf_gpt2[0], "--tasks", "lmjax_choise",
                         "--include-path", tasks_dir)
  assert code == 2 and "'lmjax_choise'" in err and "lmjax_choice" in err


def test_a_task_needing_a_download_fails_at_once_offline(hf_gpt2, tmp_path):
  """A fresh `lmjax eval-harness` process with no offline setting of its own: lmjax turns the
  Hub's offline mode on, so a built-in task whose data is not cached is refused, not retried."""
  env = {k: v for k, v in cpu_env(1).items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
  result = subprocess.run(
      [sys.executable, "-m", "lmjax", "eval-harness", "--hf", str(hf_gpt2[0]), "--tasks",
       "arc_easy", "--limit", "2", "--output", str(tmp_path / "r.json")],
      env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr
  assert "OfflineModeIsEnabled" in result.stderr and "--online" in result.stderr
  assert "Traceback" not in result.stderr and not (tmp_path / "r.json").exists()
