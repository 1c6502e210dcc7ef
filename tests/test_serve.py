"""`lmjax serve` driven by the real OpenAI client (and raw HTTP for bad requests): one server
process on 127.0.0.1 for the module, over a tiny random Llama with a real BPE tokenizer and two
random PEFT LoRA adapters of it (different ranks, scales and targets), served beside it.

Greedy answers are compared with `lmjax generate` and with lmjax.generate token for token,
alone and with requests of other lengths decoding beside them. The server is stopped by
SIGTERM in the last test, with a stream in flight, and must exit 0; the fixture kills it in any
case.
"""

import concurrent.futures
import copy
import json
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
openai = pytest.importorskip("openai")
peft = pytest.importorskip("peft")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from lmjax.data.sources.documents import builtin_corpus  # noqa: E402
from lmjax.data.tokenize.tokenizer import Tokenizer  # noqa: E402
from lmjax.hf.peft_import import read_peft  # noqa: E402
from lmjax.infer import generate  # noqa: E402
from lmjax.infer.slots import decode_groups, prefill_buckets  # noqa: E402
from lmjax.model.lora import merge_lora  # noqa: E402
from lmjax.serve.tools import split_tool_calls  # noqa: E402
from lmjax.run.loader import load  # noqa: E402
from tests.helpers import run_cli  # noqa: E402
from tests.processes import ROOT, cpu_env  # noqa: E402

MAX_BATCH, MAX_QUEUE, MAX_SEQ_LEN = 4, 4, 512
PROMPTS = ["The object", "A list of things that", "def f(x):", "Once upon a time there was a"]
LONG = 480  # tokens: a request that keeps a slot busy for about a second
TIMEOUT = 60


# ChatML that lists the tools it is given, as Hermes-style templates do.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WEATHER = {"type": "function", "function": {
    "name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """A tiny random Llama (RoPE, 1,024 positions) with a 320-token BPE and a chat template that
  lists tools, saved as HF saves it."""
  directory = tmp_path_factory.mktemp("serve-llama")
  tokenizer = Tokenizer.train_bpe(builtin_corpus()[:20], vocab_size=320)
  tokenizer.save(directory)
  (directory / "chat_template.jinja").write_text(TOOLS_TEMPLATE)
  config = transformers.LlamaConfig(
      vocab_size=tokenizer.vocab_size, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=1024,
      initializer_range=0.2, eos_token_id=tokenizer.eos_id, bos_token_id=tokenizer.eos_id,
      tie_word_embeddings=False)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(config)
  model.save_pretrained(directory)
  # Two adapters of it as peft saves them, with random B (peft's default B is zero: no effect).
  for name, rank, alpha, targets in (("terse", 4, 8, ["q_proj", "v_proj"]),
                                     ("wordy", 8, 4, ["o_proj", "gate_proj", "down_proj"])):
    torch.manual_seed(rank)
    with warnings.catch_warnings():  # transformers' deprecation of a name peft calls
      warnings.simplefilter("ignore", FutureWarning)
      adapted = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(
          r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False))
    adapted.save_pretrained(directory.parent / f"{directory.name}-{name}")
  return directory


def adapter_dir(model_dir, name):
  return model_dir.parent / f"{model_dir.name}-{name}"


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
  """The server process, started (not yet ready: `url` waits), killed at the end however the
  tests went."""
  log = tmp_path_factory.mktemp("serve-log") / "server.log"
  with open(log, "w") as out:
    process = subprocess.Popen(
        [sys.executable, "-m", "lmjax", "serve", "--hf", str(model_dir), "--port", "0",
         "--max-batch", str(MAX_BATCH), "--max-queue", str(MAX_QUEUE),
         "--max-seq-len", str(MAX_SEQ_LEN), "--model-name", "tiny",
         "--adapter", f"terse={adapter_dir(model_dir, 'terse')}",
         "--adapter", f"wordy={adapter_dir(model_dir, 'wordy')}"],
        cwd=ROOT, env=cpu_env(1), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
  process.log = log
  yield process
  if process.poll() is None:
    process.kill()
  process.wait(10)


@pytest.fixture(scope="module")
def loaded(model_dir, server):  # after `server`: the model loads here while the server starts
  return load(str(model_dir), kind="hf")


@pytest.fixture(scope="module")
def url(server, loaded):
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline:
    found = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", server.log.read_text())
    if found:
      return found.group(1)
    assert server.poll() is None, server.log.read_text()
    time.sleep(0.2)
  pytest.fail(f"the server did not start in 120 s:\n{server.log.read_text()}")


@pytest.fixture(scope="module")
def client(url):
  return openai.OpenAI(base_url=f"{url}/v1", api_key="none", timeout=TIMEOUT, max_retries=0)


@pytest.fixture(scope="module")
def expected(loaded):
  """lmjax.generate's greedy ids of each prompt, LONG of them at most (ending at EOS)."""
  tokenizer = loaded.tokenizer
  prompts = [tokenizer.encode(p, add_special_tokens=True) for p in PROMPTS]
  rows = generate(loaded.model, loaded.params, prompts, max_new_tokens=LONG, temperature=0,
                  eos_id=tokenizer.eos_id)
  return dict(zip(PROMPTS, zip(prompts, rows)))


def continuation(loaded, prompt_ids, new_ids):
  """The text `new_ids` add to the prompt's, as the server and `lmjax generate` cut it."""
  decode = loaded.tokenizer.decode
  return decode(prompt_ids + new_ids)[len(decode(prompt_ids)):]


def health(url):
  return httpx.get(f"{url}/health", timeout=TIMEOUT).json()


def wait_idle(url):
  deadline = time.monotonic() + TIMEOUT
  while (state := health(url))["running"] or state["queued"]:
    assert time.monotonic() < deadline, state
    time.sleep(0.05)
  return state


# -- answers ------------------------------------------------------------------------------------


def test_greedy_answers_equal_lmjax_generate(client, model_dir, capsys):
  for chat in (False, True):
    argv = ["generate", "--hf", model_dir, "--prompt", PROMPTS[0], "--temperature", 0,
            "--max-new-tokens", 24, "--no-stream"] + (["--chat"] if chat else [])
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    printed = out[:-1] if chat else out[len(PROMPTS[0]):-1]
    if chat:
      answer = client.chat.completions.create(
          model="tiny", messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=24,
          temperature=0)
      text = answer.choices[0].message.content
    else:
      answer = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=24,
                                         temperature=0)
      text = answer.choices[0].text
    assert text == printed
    assert answer.usage.completion_tokens <= 24


def test_concurrent_requests_of_different_lengths_all_match_generate(client, url, loaded,
                                                                     expected):
  # More requests than slots: some wait in the queue and join as others leave.
  before = health(url)
  jobs = [(p, n) for p, n in zip(PROMPTS * 2, [5, 40, 200, 17, 3, LONG, 64, 1])]

  def ask(job):
    prompt, max_tokens = job
    return client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens,
                                     temperature=0)

  with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
    answers = list(pool.map(ask, jobs))
  for (prompt, max_tokens), answer in zip(jobs, answers):
    prompt_ids, ids = expected[prompt]
    ids = ids[:max_tokens]
    eos = loaded.tokenizer.eos_id
    want = continuation(loaded, prompt_ids, [i for i in ids if i != eos])
    assert answer.choices[0].text == want, (prompt, max_tokens)
    assert answer.usage.completion_tokens == len(ids)
    assert answer.choices[0].finish_reason == ("stop" if ids[-1] == eos else "length")
  state = wait_idle(url)
  # Joining and leaving compiled nothing new: the decode programs (one per group of slots) are
  # the ones compiled at start, and a prefill is compiled once per prompt bucket.
  assert state["compiled_decodes"] == before["compiled_decodes"] == len(decode_groups(MAX_BATCH))
  buckets = prefill_buckets(MAX_SEQ_LEN)
  used = {next(b for b in buckets if b >= len(expected[p][0])) for p in PROMPTS}
  assert state["compiled_prefills"] - before["compiled_prefills"] <= len(used)


def test_streamed_pieces_join_to_the_whole_answer(client):
  whole = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=30,
                                    temperature=0).choices[0].text
  stream = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=30,
                                     temperature=0, stream=True)
  chunks = list(stream)
  assert len(chunks) >= 2 and "".join(c.choices[0].text for c in chunks) == whole
  assert chunks[-1].choices[0].finish_reason == "length"

  messages = [{"role": "user", "content": PROMPTS[2]}]
  whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20,
                                         temperature=0)
  chunks = list(client.chat.completions.create(
      model="tiny", messages=messages, max_tokens=20, temperature=0, stream=True,
      stream_options={"include_usage": True}))
  assert chunks[0].choices[0].delta.role == "assistant"
  assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
      whole.choices[0].message.content
  assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_stop_strings_cut_the_answer_streamed_or_not(client):
  whole = client.completions.create(model="tiny", prompt=PROMPTS[3], max_tokens=40,
                                    temperature=0).choices[0].text
  stop = whole[10:13]
  cut = whole[:whole.find(stop)]
  answer = client.completions.create(model="tiny", prompt=PROMPTS[3], max_tokens=40,
                                     temperature=0, stop=[stop, "never seen \x01"])
  assert answer.choices[0].text == cut and answer.choices[0].finish_reason == "stop"
  chunks = list(client.completions.create(model="tiny", prompt=PROMPTS[3], max_tokens=40,
                                          temperature=0, stop=stop, stream=True))
  assert "".join(c.choices[0].text for c in chunks) == cut
  assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_samples_are_independent_and_a_seed_repeats_them(client):
  ask = lambda seed: client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=12,
                                               temperature=1.0, top_p=0.9, n=3, seed=seed)
  first, again, other = ask(7), ask(7), ask(8)
  texts = [c.text for c in first.choices]
  assert [c.index for c in first.choices] == [0, 1, 2] and len(set(texts)) == 3
  assert [c.text for c in again.choices] == texts
  assert [c.text for c in other.choices] != texts


def test_logprobs_name_each_token_and_its_alternatives(client):
  answer = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=6,
                                     temperature=0, logprobs=3)
  logprobs = answer.choices[0].logprobs
  assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 6
  for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs,
                                 logprobs.top_logprobs):
    assert 1 <= len(top) <= 3 and logprob <= 0  # two tokens may print alike (partial UTF-8)
    assert max(top.values()) == pytest.approx(logprob, abs=1e-5)  # greedy: the likeliest
  chat = client.chat.completions.create(
      model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0,
      logprobs=True, top_logprobs=2)
  content = chat.choices[0].logprobs.content
  assert len(content) == 4 and all(len(entry.top_logprobs) == 2 for entry in content)


def test_tools_reach_the_chat_template(client):
  messages = [{"role": "user", "content": "Weather in Paris?"}]
  ask = lambda **tools: client.chat.completions.create(
      model="tiny", messages=messages, max_tokens=2, temperature=0, **tools)
  plain, with_tools, refused = ask(), ask(tools=[WEATHER]), ask(tools=[WEATHER],
                                                                  tool_choice="none")
  assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens
  assert refused.usage.prompt_tokens == plain.usage.prompt_tokens


def test_tool_calls_are_read_from_hermes_style_blocks():
  content, calls = split_tool_calls(
      'Let me look.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n'
      '</tool_call><tool_call>{"name": "time", "parameters": {}}</tool_call>'
      "<tool_call>{not json}</tool_call>")
  assert content == "Let me look.\n<tool_call>{not json}</tool_call>"
  assert [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"]))
          for c in calls] == [("function", "weather", {"city": "Paris"}), ("function", "time", {})]
  assert len({c["id"] for c in calls}) == 2
  assert split_tool_calls("no call here") == ("no call here", [])


def test_two_adapters_in_one_batch_each_equal_generate_on_its_merged_weights(client, model_dir,
                                                                             loaded, expected):
  models = ["tiny", "terse", "wordy", "terse"]
  with concurrent.futures.ThreadPoolExecutor(len(models)) as pool:
    answers = list(pool.map(lambda model: client.completions.create(
        model=model, prompt=PROMPTS[1], max_tokens=40, temperature=0), models))
  prompts = [prompt for prompt, _ in expected.values()]
  eos = loaded.tokenizer.eos_id
  for model, answer in zip(models, answers):
    params = loaded.params
    if model != "tiny":  # the adapter folded into the base weights, as peft's merge does
      lora, arrays = read_peft(adapter_dir(model_dir, model), loaded.model.config)
      flat = {**traverse_util.flatten_dict(loaded.params, sep="."), **arrays}
      params = merge_lora(traverse_util.unflatten_dict(flat, sep="."), lora.rank, lora.alpha,
                          lora.rslora)
    # The same batch and length as `expected`'s: no new program to compile.
    ids = generate(loaded.model, params, prompts, max_new_tokens=LONG, temperature=0,
                   eos_id=eos)[1][:40]
    assert answer.model == model
    assert answer.choices[0].text == continuation(loaded, prompts[1], [i for i in ids if i != eos])
  assert len({a.choices[0].text for a in answers}) == 3


def test_embeddings_are_the_mean_pooled_hidden_states_transformers_computes(client, model_dir,
                                                                          loaded):
  texts = [PROMPTS[0], PROMPTS[2]]
  vectors = client.embeddings.create(model="tiny", input=texts)  # base64 on the wire
  floats = client.embeddings.create(model="tiny", input=texts[0], encoding_format="float")
  adapted = client.embeddings.create(model="terse", input=texts[0])
  ids = [loaded.tokenizer.encode(t, add_special_tokens=True) for t in texts]
  reference = transformers.LlamaModel.from_pretrained(model_dir).eval()
  for row, item in zip(ids, vectors.data):
    with torch.no_grad():
      hidden = reference(torch.tensor([row])).last_hidden_state[0].mean(0)
    np.testing.assert_allclose(item.embedding, (hidden / hidden.norm()).numpy(), atol=1e-5)
  assert vectors.usage.prompt_tokens == sum(map(len, ids))
  assert floats.data[0].embedding == pytest.approx(vectors.data[0].embedding, abs=1e-6)
  assert adapted.model == "terse"
  assert np.abs(np.subtract(adapted.data[0].embedding, floats.data[0].embedding)).max() > 1e-3


def test_models_and_health(client, url):
  assert [m.id for m in client.models.list().data] == ["tiny", "terse", "wordy"]
  state = health(url)
  assert state["status"] == "ok" and state["slots"] == MAX_BATCH


# -- refusals -----------------------------------------------------------------------------------


def error_of(response, status):
  assert response.status_code == status, response.text
  error = response.json()["error"]
  assert set(error) == {"message", "type", "param", "code"} and error["message"]
  return error


def test_bad_requests_get_openai_errors_and_the_server_carries_on(client, url):
  post = lambda path, **kw: httpx.post(f"{url}/v1/{path}", timeout=TIMEOUT, **kw)
  error_of(post("completions", content=b"{not json"), 400)
  error_of(post("chat/completions", json=["a list"]), 400)
  assert error_of(post("completions", json={"model": "gpt-4", "prompt": "hi"}), 404)["code"] \
      == "model_not_found"
  assert error_of(post("completions", json={"model": "tiny", "prompt": "hi",
                                            "temperature": "hot"}), 400)["param"] == "temperature"
  error_of(post("completions", json={"model": "tiny", "prompt": "hi", "stop": [""]}), 400)
  error_of(post("completions", json={"model": "tiny", "prompt": "hi", "n": 1000}), 400)
  error_of(post("chat/completions", json={"model": "tiny", "messages": []}), 400)
  error_of(post("completions", json={"model": "tiny"}), 400)
  error_of(post("chat/completions", json={"model": "tiny", "tools": [{"type": "function"}],
                                          "messages": [{"role": "user", "content": "hi"}]}), 400)
  error_of(httpx.get(f"{url}/v1/nowhere", timeout=TIMEOUT), 404)
  error_of(httpx.get(f"{url}/v1/completions", timeout=TIMEOUT), 405)
  with pytest.raises(openai.BadRequestError, match="context"):
    client.completions.create(model="tiny", prompt="word " * MAX_SEQ_LEN, max_tokens=4)
  with pytest.raises(openai.BadRequestError, match="context"):
    client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=MAX_SEQ_LEN)
  with pytest.raises(openai.NotFoundError):
    client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])
  embed = lambda **body: post("embeddings", json={"model": "tiny", **body})
  assert error_of(embed(input=""), 400)["param"] == "input"
  error_of(embed(input=[]), 400)
  error_of(embed(input=[[1, 10**6]]), 400)
  assert error_of(embed(input="hi", dimensions=7), 400)["param"] == "dimensions"
  error_of(embed(input="hi", encoding_format="int8"), 400)
  assert error_of(embed(input="word " * MAX_SEQ_LEN), 400)["code"] == "context_length_exceeded"
  error_of(post("embeddings", json={"model": "nope", "input": "hi"}), 404)
  assert client.completions.create(model="tiny", prompt="hi", max_tokens=2).choices


def test_too_many_concurrent_requests_are_refused_with_429(url):
  body = {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": LONG, "temperature": 0}
  count = MAX_BATCH + MAX_QUEUE + 4
  with concurrent.futures.ThreadPoolExecutor(count) as pool:
    responses = list(pool.map(
        lambda _: httpx.post(f"{url}/v1/completions", json=body, timeout=TIMEOUT), range(count)))
  statuses = sorted(r.status_code for r in responses)
  assert set(statuses) == {200, 429} and statuses.count(200) >= MAX_BATCH + MAX_QUEUE, statuses
  refused = next(r for r in responses if r.status_code == 429)
  assert error_of(refused, 429)["code"] == "rate_limit_exceeded"
  wait_idle(url)


def test_a_client_that_disconnects_frees_its_slot(url, expected):
  assert len(expected[PROMPTS[0]][1]) == LONG  # greedy runs to the end: only a cancel ends it
  before = health(url)["finished"].get("cancelled", 0)
  body = {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": LONG, "temperature": 0,
          "stream": True}
  with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=TIMEOUT) as response:
    assert next(response.iter_lines()).startswith("data: ")
  state = wait_idle(url)
  assert state["finished"]["cancelled"] == before + 1


def test_sigterm_finishes_the_streams_in_flight_and_exits_0(server, url):
  body = {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": LONG, "temperature": 0,
          "stream": True}
  with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=TIMEOUT) as response:
    lines = response.iter_lines()
    assert next(lines).startswith("data: ")
    server.send_signal(signal.SIGTERM)
    rest = [line for line in lines if line]
  assert rest[-1] == "data: [DONE]"
  assert json.loads(rest[-2][len("data: "):])["choices"][0]["finish_reason"] == "length"
  assert server.wait(TIMEOUT) == 0, server.log.read_text()
  log = server.log.read_text()
  assert "lmjax serve: stopped" in log and "Traceback" not in log


# -- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--port", "70000"], "--port must be between 0"),
    (["--max-batch", "0"], "--max-batch must be >= 1"),
    (["--max-seq-len", "1"], "--max-seq-len must be >= 2"),
    (["--host", "no.such.host.invalid"], "--host 'no.such.host.invalid'"),
    (["--set", "mesh.tensor=2"], "(2 devices) do not divide the 1 devices available"),
    (["--set", "mesh.tensr=2"], "unknown config key mesh.tensr (did you mean"),
    (["--set", "train.steps=3"], "lmjax serve takes mesh keys only"),
])
def test_bad_flags_exit_2_with_a_message(model_dir, capsys, flags, message):
  code, _, err = run_cli(capsys, "serve", "--hf", model_dir, *flags)
  assert code == 2 and message in err and "Traceback" not in err


def test_a_port_in_use_exits_2_naming_it(model_dir, capsys):
  import socket
  with socket.create_server(("127.0.0.1", 0)) as taken:
    port = taken.getsockname()[1]
    code, _, err = run_cli(capsys, "serve", "--hf", model_dir, "--port", port)
  assert code == 2 and f"127.0.0.1:{port}" in err and "choose another --port" in err


def test_a_missing_model_exits_2(tmp_path, capsys):
  code, _, err = run_cli(capsys, "serve", "--hf", tmp_path / "nothing", "--port", 0)
  assert code == 2 and "Traceback" not in err


def test_bad_adapters_exit_2_naming_the_flag(model_dir, tmp_path, capsys):
  serve = lambda *flags: run_cli(capsys, "serve", "--hf", model_dir, "--port", 0, *flags)
  for flags, message in [
      (["--adapter", "no-path"], "is not NAME=PATH"),
      (["--adapter", f"a={tmp_path / 'none'}"], "no such directory"),
      (["--adapter", f"a={tmp_path}", "--adapter", f"a={tmp_path}"], "given twice"),
      (["--adapter", f"a={tmp_path}"], "adapter a: "),  # loads the model: not a PEFT directory
      (["--adapter", f"tiny={adapter_dir(model_dir, 'terse')}", "--model-name", "tiny"],
       "the served model's own name")]:
    code, _, err = serve(*flags)
    assert code == 2 and message in err and "Traceback" not in err, (flags, err)
