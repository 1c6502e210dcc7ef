"""The HTTP endpoints (Starlette): OpenAI's completions, chat completions, embeddings and
models, and health.

    app = create_app(Served(loaded, "my-model", engine, embedder))

A request's choices run in the engine (lmjax.infer.engine), whose thread hands each event to
the event loop; a streamed answer is Server-Sent Events (`data: {json}` … `data: [DONE]`), one
chunk per event. A client that goes away ends its requests at the engine's next chunk, which
frees their slots. Every refusal is OpenAI's JSON error body; nothing a client sends stops the
server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from lmjax.errors import UserError
from lmjax.infer.engine import Event, Handle
from lmjax.serve import protocol
from lmjax.serve.embeddings import embedding_request, embedding_response
from lmjax.serve.protocol import ApiError, Choice, Parsed, Served
from lmjax.serve.tools import ToolCallStream

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 2**20  # a larger request body is refused (413)


class _Run:
  """A parsed request's choices in the engine, their events arriving on an asyncio queue."""

  def __init__(self, served: Served, parsed: Parsed):
    loop = asyncio.get_running_loop()
    self.events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    self.choices = [Choice() for _ in parsed.requests]

    def put(index: int, event: Event) -> None:  # called in the engine's thread
      with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
        loop.call_soon_threadsafe(self.events.put_nowait, (index, event))

    try:
      self.handles: list[Handle] = served.engine.submit(parsed.requests, put)
    except UserError as e:
      raise protocol.user_error(e) from None
    self.unfinished = len(self.handles)

  async def next(self) -> tuple[int, Event]:
    """The next event of any choice, recorded in `choices`."""
    index, event = await self.events.get()
    choice = self.choices[index]
    choice.text += event.text
    choice.logprobs += event.logprobs
    choice.prompt_tokens, choice.completion_tokens = event.prompt_tokens, event.completion_tokens
    if event.finish_reason is not None:
      choice.finish_reason = event.finish_reason
      self.unfinished -= 1
    return index, event

  def cancel(self) -> None:
    for handle in self.handles:
      handle.cancel()


async def _cancel_on_disconnect(request: Request, run: _Run) -> None:
  """Cancels `run` once the client disconnects (the body is read: the next message says so)."""
  while (await request.receive())["type"] != "http.disconnect":
    pass
  run.cancel()


def _failed(run: _Run) -> ApiError | None:
  reasons = {c.finish_reason for c in run.choices}
  if "error" in reasons:
    return ApiError(500, "the model failed while generating this answer (see the server log).",
                    kind="server_error")
  if "cancelled" in reasons:
    return ApiError(503, "the server is shutting down: retry.", kind="server_error")
  return None


async def _answer(request: Request, served: Served, parsed: Parsed) -> Response:
  run = _Run(served, parsed)
  if parsed.stream:
    return StreamingResponse(_events(run, served, parsed), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})
  watcher = asyncio.create_task(_cancel_on_disconnect(request, run))
  try:
    while run.unfinished:
      await run.next()
  finally:
    watcher.cancel()
    run.cancel()  # a no-op for finished choices; frees the slots if this task was cancelled
  error = _failed(run)
  if error is not None:
    raise error
  return JSONResponse(protocol.response(parsed, parsed.model, run.choices))


async def _events(run: _Run, served: Served, parsed: Parsed) -> AsyncIterator[str]:
  """The SSE stream of `run`. A client that disconnects closes this generator: `finally`
  ends its requests. A chat answer to a request with tools is read for tool calls as it comes
  (serve.tools.ToolCallStream), each sent whole in `delta.tool_calls`."""
  sse = lambda obj: f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
  started, logprobs_sent = set(), [0] * len(run.choices)
  calls = [ToolCallStream() if parsed.tools else None for _ in run.choices]
  calls_sent = [0] * len(run.choices)
  try:
    while run.unfinished:
      index, event = await run.next()
      choice = run.choices[index]
      error = _failed(run) if event.finish_reason in ("error", "cancelled") else None
      if error is not None:
        yield sse(error.body())
        return
      text, completed, finish = event.text, [], event.finish_reason
      if calls[index] is not None:
        text, completed = calls[index].feed(text, final=finish is not None)
        if finish is not None and calls_sent[index] + len(completed):
          finish = "tool_calls"  # as the whole answer's finish_reason (protocol.response)
      if text or completed or finish or index not in started or parsed.logprobs:
        yield sse(protocol.chunk(parsed, parsed.model, index, choice, text,
                                 first=index not in started, logprobs_from=logprobs_sent[index],
                                 finish_reason=finish, tool_calls=completed,
                                 calls_before=calls_sent[index]))
        started.add(index)
        logprobs_sent[index] = len(choice.logprobs)
        calls_sent[index] += len(completed)
    if parsed.include_usage:
      yield sse(protocol.usage_chunk(parsed, parsed.model, run.choices))
    yield "data: [DONE]\n\n"
  finally:
    run.cancel()


def _endpoint(read: Callable[[dict[str, Any], Served], Parsed], served: Served):
  async def endpoint(request: Request) -> Response:
    body = protocol.read_body(await request.body())
    try:
      parsed = read(body, served)
    except UserError as e:
      raise protocol.user_error(e) from None
    return await _answer(request, served, parsed)
  return endpoint


def create_app(served: Served) -> Starlette:
  """The ASGI app over `served` (whose engine is started and stopped by the caller)."""

  async def models(request: Request) -> Response:
    entry = lambda name, parent: {"id": name, "object": "model", "created": 0,
                                  "owned_by": "lmjax", "root": name, "parent": parent}
    return JSONResponse({"object": "list", "data": [entry(served.name, None)] + [
        entry(name, served.name) for name in served.adapters]})

  async def health(request: Request) -> Response:
    stats = served.engine.stats() if served.engine is not None else {}
    return JSONResponse({"status": "ok", **stats})

  async def embeddings(request: Request) -> Response:
    body = protocol.read_body(await request.body())
    ids, adapter, encoding = embedding_request(body, served)
    vectors = await asyncio.to_thread(served.embedder.embed, ids, adapter=adapter)
    return JSONResponse(embedding_response(vectors, ids, model=body["model"], encoding=encoding))

  async def api_error(request: Request, error: ApiError) -> Response:
    return JSONResponse(error.body(), status_code=error.status)

  async def http_error(request: Request, error: HTTPException) -> Response:
    return JSONResponse(ApiError(error.status_code, f"{request.method} {request.url.path}: "
                                 f"{error.detail}").body(), status_code=error.status_code)

  async def server_error(request: Request, error: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse(ApiError(500, f"the server failed: {type(error).__name__}: {error}",
                                 kind="server_error").body(), status_code=500)

  routes = [Route("/v1/completions", _endpoint(protocol.completion_request, served),
                  methods=["POST"]),
            Route("/v1/chat/completions", _endpoint(protocol.chat_request, served),
                  methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models), Route("/health", health)]
  return Starlette(routes=routes, max_body_size=MAX_BODY_BYTES,
                   exception_handlers={ApiError: api_error, HTTPException: http_error,
                                       Exception: server_error})


__all__ = ["create_app"]
