"""The OpenAI API's JSON: request bodies read into engine requests, results written as responses.

    body = read_body(raw_bytes)                       # ApiError 400 unless a JSON object
    parsed = completion_request(body, served)         # or chat_request(body, served)
    response = completion_response(parsed, choices)   # choices: the Choice of each request

Everything a client can get wrong becomes an `ApiError` with OpenAI's error body
({"error": {"message", "type", "param", "code"}}) and an HTTP status. Fields the server has no
use for (user, presence_penalty, …) are ignored, as other OpenAI-compatible servers do.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from typing import Any

from lmjax.errors import UserError
from lmjax.infer.complete import encode_chat, encode_prompts, loaded_chat_template
from lmjax.infer.embed import Embedder
from lmjax.infer.engine import Busy, ContextTooLong, Engine, Request, TokenLogprob
from lmjax.serve.tools import read_tools, split_tool_calls

MAX_STOP_STRINGS = 4   # as OpenAI's API
MAX_TOP_LOGPROBS = 20
MAX_CHOICES = 16


class ApiError(Exception):
  """A request the server refuses: its HTTP status and OpenAI's error object."""

  def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
               param: str | None = None, code: str | None = None):
    super().__init__(message)
    self.status, self.kind, self.param, self.code = status, kind, param, code

  def body(self) -> dict[str, Any]:
    return {"error": {"message": str(self), "type": self.kind, "param": self.param,
                      "code": self.code}}


@dataclasses.dataclass
class Served:
  """The model behind the endpoints: `loaded` (lmjax.load's), its name, the engine that
  generates (None for a model that does not: an encoder serves embeddings only), the embedder,
  the names of its LoRA adapters (a request's `model` picks one), and its chat template
  (compiled on first use)."""

  loaded: Any
  name: str
  engine: Engine | None = None
  embedder: Embedder | None = None
  adapters: tuple[str, ...] = ()
  chat_template: Any = None

  def template(self):
    if self.chat_template is None:
      self.chat_template = loaded_chat_template(self.loaded)
    return self.chat_template

  @property
  def names(self) -> tuple[str, ...]:
    return (self.name, *self.adapters)

  def adapter(self, body: dict[str, Any]) -> int:
    """The adapter the body's `model` names (0: the base model); ApiError if none."""
    model = body.get("model")
    if not isinstance(model, str):
      raise ApiError(400, "model is missing: name the model to use (GET /v1/models lists them).",
                     param="model")
    if model not in self.names:
      raise ApiError(404, f"the model {model!r} does not exist here: this server serves "
                          f"{', '.join(map(repr, self.names))}.", param="model",
                     code="model_not_found")
    return self.names.index(model)

  def generating(self, body: dict[str, Any]) -> tuple[Engine, int]:
    """(the engine, the adapter) for a completion request; ApiError if the model does not
    generate."""
    adapter = self.adapter(body)
    if self.engine is None:
      config = self.loaded.model.config
      raise ApiError(400, f"{self.name!r} is not a causal language model (head "
                          f"{config.head.value}, causal={config.causal}): it serves "
                          f"/v1/embeddings only.", param="model", code="model_not_supported")
    return self.engine, adapter


@dataclasses.dataclass(frozen=True)
class Parsed:
  """A request body, read: `n` engine requests per prompt, prompt-major."""

  chat: bool
  requests: list[Request]
  n: int
  stream: bool
  include_usage: bool
  logprobs: bool
  tools: bool = False  # the answer is read for tool calls
  model: str = ""      # the name asked for: the served model's or an adapter's
  id: str = dataclasses.field(default_factory=lambda: secrets.token_hex(12))
  created: int = dataclasses.field(default_factory=lambda: int(time.time()))


@dataclasses.dataclass
class Choice:
  """One request's result as it accumulates."""

  text: str = ""
  logprobs: list[TokenLogprob] = dataclasses.field(default_factory=list)
  finish_reason: str | None = None
  prompt_tokens: int = 0
  completion_tokens: int = 0


# -- reading ----------------------------------------------------------------------------------


def read_body(raw: bytes) -> dict[str, Any]:
  try:
    body = json.loads(raw)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ApiError(400, f"the request body is not valid JSON: {e}.") from None
  if not isinstance(body, dict):
    raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}.")
  return body


def _field(body: dict, name: str, kinds: tuple[type, ...], default: Any, what: str) -> Any:
  value = body.get(name)
  if value is None:
    return default
  if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
    raise ApiError(400, f"{name} must be {what}, got {json.dumps(value)}.", param=name)
  return value


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
  value = float(_field(body, name, (int, float), default, "a number"))
  if not low <= value <= high:
    raise ApiError(400, f"{name} must be between {low:g} and {high:g}, got {value:g}.",
                   param=name)
  return value


def _integer(body: dict, name: str, default: int | None, low: int, high: int) -> int | None:
  value = _field(body, name, (int,), default, "an integer")
  if value is not None and not low <= value <= high:
    raise ApiError(400, f"{name} must be between {low} and {high}, got {value}.", param=name)
  return value


def _stop(body: dict) -> tuple[str, ...]:
  stop = body.get("stop")
  stops = [stop] if isinstance(stop, str) else [] if stop is None else stop
  if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) \
      or len(stops) > MAX_STOP_STRINGS:
    raise ApiError(400, f"stop must be a non-empty string or a list of up to "
                        f"{MAX_STOP_STRINGS} of them, got {json.dumps(stop)}.", param="stop")
  return tuple(stops)


def _requests(body: dict, engine: Engine, adapter: int, prompts: list[list[int]], *, chat: bool,
              top_logprobs: int | None, default_max_tokens: int | None) -> tuple[list, int]:
  n = _integer(body, "n", 1, 1, MAX_CHOICES)
  temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
  top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
  if top_p == 0:
    raise ApiError(400, "top_p must be above 0 (1 keeps every token).", param="top_p")
  seed = _integer(body, "seed", None, -2**63, 2**64 - 1)
  seed = secrets.randbits(31) if seed is None else seed % 2**32
  limit = engine.max_seq_len
  max_tokens = _integer(body, "max_completion_tokens" if chat else "max_tokens", None, 1, limit)
  if chat and max_tokens is None:
    max_tokens = _integer(body, "max_tokens", None, 1, limit)
  stop = _stop(body)
  requests = []
  for prompt in prompts:
    tokens = max_tokens or default_max_tokens or max(limit - len(prompt), 1)
    requests += [Request(prompt, tokens, temperature=temperature, top_p=top_p, seed=seed,
                         choice=c, stop=stop, after_prompt=not chat, top_logprobs=top_logprobs,
                         adapter=adapter)
                 for c in range(n)]
  for request in requests[::n]:
    engine.check(request)  # UserError: the app answers 400
  return requests, n


def _stream_options(body: dict) -> tuple[bool, bool]:
  stream = _field(body, "stream", (bool,), False, "true or false")
  options = _field(body, "stream_options", (dict,), {}, "an object")
  return stream, bool(stream and options.get("include_usage"))


def completion_request(body: dict[str, Any], served: Served) -> Parsed:
  """/v1/completions: `prompt` is a string, a list of strings, a list of token ids, or a list
  of such lists; `logprobs` (0 to 5) asks for that many alternatives per token."""
  engine, adapter = served.generating(body)
  prompt = body.get("prompt")
  loaded = served.loaded
  if isinstance(prompt, str):
    prompts = encode_prompts(loaded, [prompt], chat_mode=False)
  elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
    prompts = encode_prompts(loaded, prompt, chat_mode=False)
  elif isinstance(prompt, list) and prompt and all(is_token_ids(p) for p in prompt):
    prompts = [list(p) for p in prompt]
  elif is_token_ids(prompt):
    prompts = [list(prompt)]
  else:
    raise ApiError(400, "prompt must be a string, a list of strings, or token ids, got "
                        f"{json.dumps(prompt)[:80]}.", param="prompt")
  logprobs = _integer(body, "logprobs", None, 0, 5)
  requests, n = _requests(body, engine, adapter, prompts, chat=False, top_logprobs=logprobs,
                          default_max_tokens=16)  # OpenAI's default for completions
  stream, usage = _stream_options(body)
  return Parsed(False, requests, n, stream, usage, logprobs is not None, model=body["model"])


def is_token_ids(value: Any) -> bool:
  """Whether `value` is a non-empty list of token ids (ints, not bools)."""
  return isinstance(value, list) and bool(value) and all(
      isinstance(i, int) and not isinstance(i, bool) for i in value)


def chat_request(body: dict[str, Any], served: Served) -> Parsed:
  """/v1/chat/completions: `messages` rendered with the model's chat template (with `tools`
  where it lists them: the answer's tool calls come back as `tool_calls`, streamed or not);
  `logprobs` (true or false) and `top_logprobs` (0 to 20)."""
  engine, adapter = served.generating(body)
  messages = body.get("messages")
  if not isinstance(messages, list) or not messages:
    raise ApiError(400, "messages must be a non-empty list of {role, content} objects.",
                   param="messages")
  plain = []
  for n, message in enumerate(messages):
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
      raise ApiError(400, f"messages[{n}] must be an object with a role.", param="messages")
    plain.append({**message, "content": _content(message.get("content"), n)})
  tools = read_tools(body)
  prompt = encode_chat(served.loaded.tokenizer, served.template(), plain, tools=tools)
  wants = _field(body, "logprobs", (bool,), False, "true or false")
  top = _integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
  requests, n = _requests(body, engine, adapter, [prompt], chat=True,
                          top_logprobs=(top or 0) if wants else None, default_max_tokens=None)
  stream, usage = _stream_options(body)
  return Parsed(True, requests, n, stream, usage, wants, tools=tools is not None,
                model=body["model"])


def _content(content: Any, n: int) -> str:
  """A message's text: a string, or a list of {"type": "text", "text": …} parts."""
  if content is None or isinstance(content, str):
    return content or ""
  if isinstance(content, list) and all(
      isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
      for p in content):
    return "".join(p["text"] for p in content)
  raise ApiError(400, f"messages[{n}].content must be a string or a list of text parts.",
                 param="messages")


# -- writing ----------------------------------------------------------------------------------


def _logprobs(parsed: Parsed, choice: Choice, start: int = 0) -> dict[str, Any] | None:
  """The choice's log-probabilities from token `start` on, in the endpoint's format."""
  if not parsed.logprobs:
    return None
  entries = choice.logprobs[start:]
  if parsed.chat:
    item = lambda token, logprob: {"token": token, "logprob": logprob,
                                   "bytes": list(token.encode("utf-8"))}
    return {"content": [{**item(e.token, e.logprob),
                         "top_logprobs": [item(t, lp) for t, lp in e.top]} for e in entries]}
  offsets, offset = [], len("".join(e.token for e in choice.logprobs[:start]))
  for e in entries:
    offsets.append(offset)
    offset += len(e.token)
  # Tokens that print alike (partial UTF-8 characters) share a key: the likeliest one's.
  return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
          "top_logprobs": [dict(reversed(e.top)) for e in entries], "text_offset": offsets}


def usage(choices: list[Choice], n: int) -> dict[str, int]:
  prompt = sum(c.prompt_tokens for c in choices[::n])
  completion = sum(c.completion_tokens for c in choices)
  return {"prompt_tokens": prompt, "completion_tokens": completion,
          "total_tokens": prompt + completion}


def _envelope(parsed: Parsed, model: str, *, chunk: bool) -> dict[str, Any]:
  kind = ("chat.completion" if parsed.chat else "text_completion") + (
      ".chunk" if chunk and parsed.chat else "")
  return {"id": ("chatcmpl-" if parsed.chat else "cmpl-") + parsed.id, "object": kind,
          "created": parsed.created, "model": model}


def response(parsed: Parsed, model: str, choices: list[Choice]) -> dict[str, Any]:
  """The whole answer of a request that did not stream."""
  out = []
  for index, choice in enumerate(choices):
    entry: dict[str, Any] = {"index": index, "logprobs": _logprobs(parsed, choice),
                             "finish_reason": choice.finish_reason}
    if parsed.chat:
      entry["message"] = {"role": "assistant", "content": choice.text}
      content, calls = split_tool_calls(choice.text) if parsed.tools else (choice.text, [])
      if calls:
        entry["message"] = {"role": "assistant", "content": content, "tool_calls": calls}
        entry["finish_reason"] = "tool_calls"
    else:
      entry["text"] = choice.text
    out.append(entry)
  return {**_envelope(parsed, model, chunk=False), "choices": out,
          "usage": usage(choices, parsed.n)}


def chunk(parsed: Parsed, model: str, index: int, choice: Choice, text: str, *, first: bool,
          logprobs_from: int, finish_reason: str | None,
          tool_calls: list[dict[str, Any]] = (), calls_before: int = 0) -> dict[str, Any]:
  """One streamed piece of choice `index`: its new `text` and the tokens from `logprobs_from`,
  and (chat) the `tool_calls` completed, numbered on from `calls_before`."""
  entry: dict[str, Any] = {"index": index, "logprobs": _logprobs(parsed, choice, logprobs_from),
                           "finish_reason": finish_reason}
  if parsed.chat:
    delta: dict[str, Any] = {"role": "assistant"} if first else {}
    if text or first or not (finish_reason or tool_calls):
      delta["content"] = text
    if tool_calls:
      delta["tool_calls"] = [{"index": calls_before + n, **call}
                             for n, call in enumerate(tool_calls)]
    entry["delta"] = delta
  else:
    entry["text"] = text
  return {**_envelope(parsed, model, chunk=True), "choices": [entry]}


def usage_chunk(parsed: Parsed, model: str, choices: list[Choice]) -> dict[str, Any]:
  return {**_envelope(parsed, model, chunk=True), "choices": [],
          "usage": usage(choices, parsed.n)}


def user_error(error: UserError) -> ApiError:
  """The engine's refusal of a request as an HTTP error."""
  if isinstance(error, Busy):
    return ApiError(429, str(error), kind="rate_limit_exceeded", code="rate_limit_exceeded")
  if isinstance(error, ContextTooLong):
    return ApiError(400, str(error), param="messages", code="context_length_exceeded")
  return ApiError(400, str(error))


__all__ = ["ApiError", "Choice", "Parsed", "Served", "chat_request", "chunk",
           "completion_request", "is_token_ids", "read_body", "response", "usage", "usage_chunk",
           "user_error"]
