"""`lmjax serve` over models that tests/test_serve.py's random Llama cannot show, each served in
this process by the real app and uvicorn on 127.0.0.1 and driven by the real `openai` client:

- a model that calls a tool: a one-layer Llama whose greedy answer is a fixed chain of tokens
  (its blocks' outputs zeroed, so each token's embedding alone picks the next), ending in a
  Hermes `<tool_call>` block, or after a tool's result a short answer; served int8-quantized
  (`--quantize`): the call comes back whole, streamed (`delta.tool_calls`) or not, and the
  agent loop of docs/generate.md runs against it;
- an encoder (a BERT masked LM), which serves /v1/embeddings only: its vectors equal
  transformers' mean-pooled `last_hidden_state`, and completions are refused with a 400.
"""

import contextlib
import io
import json
import pathlib
import re
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("qwix")

from lmjax.data.sources.documents import builtin_corpus  # noqa: E402
from lmjax.data.tokenize.tokenizer import Tokenizer  # noqa: E402
from lmjax.infer import generate  # noqa: E402
from lmjax.run.loader import load  # noqa: E402
from lmjax.serve.app import create_app  # noqa: E402
from lmjax.serve.server import listen, served_model  # noqa: E402
from lmjax.serve.tools import ToolCallStream, split_tool_calls  # noqa: E402

CALL = '{"name":"weather","arguments":{"city":"Paris"}}'
WORDS = ["<unk>", "<eos>", "GO", "Checking.", "<tool_call>", CALL, "</tool_call>", "user:",
         "DONE", "Sunny."]
# Each token picks the next: the answer to a question, and after a tool's result.
CHAIN = ["GO", "Checking.", "<tool_call>", CALL, "</tool_call>", "<eos>"]
ANSWER = ["DONE", "Sunny.", "<eos>"]
WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}


@contextlib.contextmanager
def serving(loaded, **options):
  """The server `lmjax serve` runs for `loaded`, on a free port in a thread: an `openai` client."""
  served = served_model(loaded, max_batch=1, max_seq_len=64, max_queue=4, **options)
  if served.engine is not None:
    served.engine.start()
  sock = listen("127.0.0.1", 0)
  server = uvicorn.Server(uvicorn.Config(create_app(served), log_level="warning"))
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  try:
    deadline = time.monotonic() + 30
    while not server.started:
      assert thread.is_alive() and time.monotonic() < deadline
      time.sleep(0.02)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    yield openai.OpenAI(base_url=url, api_key="none", timeout=60, max_retries=0)
  finally:
    server.should_exit = True
    thread.join(30)
    sock.close()
    if served.engine is not None:
      served.engine.stop()


@pytest.fixture(scope="module")
def caller(tmp_path_factory):
  """The tool-calling chain model, its tokenizer one word a token, saved as HF saves it."""
  directory = tmp_path_factory.mktemp("caller")
  hf = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
  hf.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  Tokenizer(hf, roles={"eos": "<eos>", "unk": "<unk>", "pad": "<eos>"}).save(directory)
  (directory / "chat_template.jinja").write_text(
      "{% for m in messages %}user: {{ m['content'] }} {% endfor %}"
      "{% if messages[-1]['role'] == 'tool' %}DONE{% else %}GO{% endif %}")
  dim, vocab = 32, len(WORDS)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=vocab, hidden_size=dim, intermediate_size=16, num_hidden_layers=1,
      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
      eos_token_id=1, bos_token_id=1, tie_word_embeddings=False))
  with torch.no_grad():
    rows = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(0)))[0]
    embedding = rows[:vocab]  # orthonormal: a token's hidden state points at it alone
    model.model.embed_tokens.weight.copy_(embedding)
    for layer in model.model.layers:
      layer.self_attn.o_proj.weight.zero_()
      layer.mlp.down_proj.weight.zero_()
    head = torch.zeros(vocab, dim)
    for chain in (CHAIN, ANSWER):
      for token, following in zip(chain, chain[1:]):
        head[WORDS.index(following)] += 10 * embedding[WORDS.index(token)]
    model.lm_head.weight.copy_(head)
  model.save_pretrained(directory)
  return load(str(directory), kind="hf", require_tokenizer=True, quantization={"scheme": "int8"})


@pytest.fixture(scope="module")
def client(caller):
  with serving(caller, name="caller") as client:
    yield client


def test_a_tool_call_comes_back_whole_streamed_or_not(caller, client):
  messages = [{"role": "user", "content": "Weather in Paris?"}]
  answer = client.chat.completions.create(model="caller", messages=messages, tools=[WEATHER],
                                          temperature=0).choices[0]
  chunks = list(client.chat.completions.create(model="caller", messages=messages,
                                               tools=[WEATHER], temperature=0, stream=True))
  plain = client.completions.create(model="caller", prompt="GO", max_tokens=8, temperature=0)
  assert answer.finish_reason == "tool_calls" and answer.message.content == "Checking."
  (call,) = answer.message.tool_calls
  assert (call.type, call.function.name, json.loads(call.function.arguments)) == \
      ("function", "weather", {"city": "Paris"})

  assert chunks[0].choices[0].delta.role == "assistant"
  assert "".join(c.choices[0].delta.content or "" for c in chunks).strip() == "Checking."
  streamed = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
  assert [(t.index, t.type, t.function.name, json.loads(t.function.arguments)) for t in streamed] \
      == [(0, "function", "weather", {"city": "Paris"})] and streamed[0].id.startswith("call_")
  assert chunks[-1].choices[0].finish_reason == "tool_calls"

  # Quantized (int8) serving decodes what lmjax.generate decodes with the same int8 params.
  prompt, eos = caller.tokenizer.encode("GO"), caller.tokenizer.eos_id
  ids = generate(caller.model, caller.params, [prompt], max_new_tokens=8, temperature=0,
                 eos_id=eos)[0]
  assert plain.choices[0].text.split() == CHAIN[1:-1]
  assert plain.choices[0].text == caller.tokenizer.decode(
      prompt + [i for i in ids if i != eos])[len("GO"):]


def test_the_agent_loop_of_the_docs_calls_the_tool_and_reads_the_answer(client):
  docs = (pathlib.Path(__file__).parent.parent / "docs" / "generate.md").read_text()
  code = re.search(r"\*\*Tools\.\*\*.*?```python\n(.*?)```", docs, re.S).group(1)
  code = code.replace('"http://127.0.0.1:8000/v1"', repr(str(client.base_url)))
  code = code.replace('model = "qwen"', 'model = "caller"')
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    exec(compile(code, "docs/generate.md", "exec"), scope := {})  # noqa: S102 -- our own docs
  assert printed.getvalue() == "Sunny.\n" and scope["turn"] == 1
  roles = [m["role"] for m in scope["messages"]]
  assert roles == ["user", "assistant", "tool", "assistant"]
  assert scope["messages"][2]["content"] == "18 C and sunny in Paris"


@pytest.mark.parametrize("seed", range(3))
def test_streamed_pieces_give_the_calls_and_text_of_the_whole_answer(seed):
  answer = ('Let me look.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n'
            '</tool_call><tool_call>{"name": "time", "parameters": {}}</tool_call> and <tool_ca '
            "<tool_call>{not json}</tool_call> end <tool_c")
  rng, stream, text, calls, start = np.random.default_rng(seed), ToolCallStream(), "", [], 0
  while start < len(answer):
    end = start + int(rng.integers(0, 8))
    piece, found = stream.feed(answer[start:end], final=False)
    text, calls, start = text + piece, calls + found, end
  piece, found = stream.feed("", final=True)
  content, whole = split_tool_calls(answer)
  assert (text + piece).strip() == content
  assert [c["function"] for c in calls + found] == [c["function"] for c in whole]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
  """A random BERT masked LM with a BPE tokenizer, saved as HF saves it, and the model."""
  directory = tmp_path_factory.mktemp("encoder")
  tokenizer = Tokenizer.train_bpe(builtin_corpus()[:10], vocab_size=300)
  tokenizer.save(directory)
  torch.manual_seed(0)
  model = transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
      num_attention_heads=4, intermediate_size=64, max_position_embeddings=128))
  model.save_pretrained(directory)
  return load(str(directory), kind="hf", require_tokenizer=True), model.eval()


def test_an_encoder_serves_embeddings_as_transformers_mean_pools_them(encoder):
  loaded, reference = encoder
  texts = ["The object", "def f(x): return x + 1"]
  with serving(loaded, name="bert") as client:
    vectors = client.embeddings.create(model="bert", input=texts)
    floats = client.embeddings.create(model="bert", input=texts[0], encoding_format="float")
    with pytest.raises(openai.BadRequestError, match="embeddings only") as refused:
      client.completions.create(model="bert", prompt="The", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="embeddings only"):
      client.chat.completions.create(model="bert", messages=[{"role": "user", "content": "hi"}])
    assert [m.id for m in client.models.list().data] == ["bert"]
  assert refused.value.body["code"] == "model_not_supported"
  ids = [loaded.tokenizer.encode(t, add_special_tokens=True) for t in texts]
  assert vectors.usage.prompt_tokens == sum(map(len, ids)) and vectors.model == "bert"
  for row, item in zip(ids, vectors.data):
    with torch.no_grad():
      hidden = reference.bert(torch.tensor([row])).last_hidden_state[0].mean(0)
    np.testing.assert_allclose(item.embedding, (hidden / hidden.norm()).numpy(), atol=1e-5)
  assert floats.data[0].embedding == pytest.approx(vectors.data[0].embedding, abs=1e-6)
