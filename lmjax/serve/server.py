"""Serving a loaded model on a TCP port until SIGTERM or SIGINT.

    serve(loaded, host="127.0.0.1", port=8000, max_batch=8, adapters={"sql": "adapters/sql"})

A causal language model answers completions, chat and embeddings; any other (an encoder, a
classifier, a headless model) embeddings only. LoRA adapters (PEFT directories of the model)
are served beside it under their names, chosen per request by `model`.

The socket is bound before uvicorn starts, so that `--port 0` picks a free port and the line
announcing the address names it. On SIGTERM uvicorn stops accepting connections and gives the
open ones `GRACE_SECONDS` to finish (streams included); then the engine ends what is left
("cancelled") and `serve` returns.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import pathlib
import re
import signal
import socket
import threading
from typing import Any, Callable, Mapping, Sequence

import uvicorn

from lmjax.errors import UserError
from lmjax.infer.adapters import base_of, read_adapters
from lmjax.infer.checks import is_causal_lm
from lmjax.infer.complete import resolve_settings
from lmjax.infer.embed import Embedder, Pooling, pooling_of
from lmjax.infer.engine import Engine
from lmjax.serve.app import create_app
from lmjax.serve.protocol import Served

log = logging.getLogger(__name__)

GRACE_SECONDS = 10
DEFAULT_MAX_SEQ_LEN = 2048  # when the model's own context is longer: the KV cache's length


def listen(host: str, port: int) -> socket.socket:
  """A socket bound to (host, port), listening; UserError when that cannot be."""
  if not 0 <= port <= 65535:
    raise UserError(f"--port must be between 0 (any free port) and 65535, got {port}.")
  try:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
  except socket.gaierror as e:
    raise UserError(f"--host {host!r} is not an address ({e.strerror}): give e.g. 127.0.0.1, "
                    f"or 0.0.0.0 for every interface.") from None
  try:
    return socket.create_server((host, port), family=family, backlog=256)
  except OSError as e:
    fix = ("another process listens there: choose another --port (0 picks a free one)"
           if e.errno == errno.EADDRINUSE else "choose another --host or --port")
    raise UserError(f"cannot listen on {host}:{port}: {e.strerror}; {fix}.") from None


def parse_adapters(specs: Sequence[str] | None) -> dict[str, str]:
  """{name: path} of `--adapter NAME=PATH` flags; UserError for a malformed or repeated one."""
  adapters: dict[str, str] = {}
  for spec in specs or ():
    name, sep, path = spec.partition("=")
    if not sep or not re.fullmatch(r"[\w.:/-]+", name) or not path:
      raise UserError(f"--adapter {spec!r} is not NAME=PATH: give the name clients ask for and "
                      f"a PEFT LoRA adapter directory, e.g. --adapter sql=adapters/sql.")
    if name in adapters:
      raise UserError(f"--adapter {name} is given twice: each adapter needs its own name.")
    if not pathlib.Path(path).is_dir():
      raise UserError(f"--adapter {name}={path}: no such directory (give a PEFT LoRA adapter "
                      f"directory: adapter_config.json and adapter_model.safetensors).")
    adapters[name] = path
  return adapters


@contextlib.contextmanager
def _signals_stop_quietly():
  """uvicorn handles SIGTERM and SIGINT while it runs, then raises them again for the handlers
  it found: these, which do nothing, so that a stopped server returns (the command exits 0)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  kinds = (signal.SIGINT, signal.SIGTERM)
  previous = {kind: signal.signal(kind, lambda *_: None) for kind in kinds}
  try:
    yield
  finally:
    for kind, handler in previous.items():
      signal.signal(kind, handler)


def served_model(loaded: Any, *, max_batch: int, max_seq_len: int | None, max_queue: int | None,
                 name: str | None = None, adapters: Mapping[str, str] | None = None,
                 pooling: str | None = None, placement: Any = None) -> Served:
  """What `serve` serves (its engine not started): see `serve` for the arguments."""
  max_seq_len = max_seq_len or min(loaded.config.max_seq_len, DEFAULT_MAX_SEQ_LEN)
  max_queue = 4 * max_batch if max_queue is None else max_queue
  name = name or loaded.origin.rstrip("/").rsplit("/", 1)[-1] or loaded.directory.name
  if name in (adapters or {}):
    raise UserError(f"--adapter {name} has the served model's own name: name it otherwise.")
  lora = read_adapters(loaded, adapters) if adapters else None
  engine = None
  if is_causal_lm(loaded.model):
    eos_ids = resolve_settings({}, loaded).eos_ids  # as `lmjax generate` ends a row
    engine = Engine(loaded, max_batch=max_batch, max_seq_len=max_seq_len, max_queue=max_queue,
                    eos_ids=eos_ids, adapters=lora, placement=placement)
  model, params = (lora.model, base_of(loaded)[1]) if lora else (loaded.model, loaded.params)
  if engine is not None:
    params = engine.params  # placed on its mesh: one copy for both
  pooled = Pooling(pooling) if pooling else pooling_of(loaded.directory) or Pooling.MEAN
  embedder = Embedder(model, params, pooled, max_seq_len,
                      stacked=lora.stacked if lora else None)
  return Served(loaded, name, engine, embedder, lora.names if lora else ())


def serve(loaded: Any, *, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8,
          max_seq_len: int | None = None, max_queue: int | None = None, name: str | None = None,
          adapters: Mapping[str, str] | None = None, pooling: str | None = None,
          placement: Any = None, announce: Callable[[str], None] = print) -> None:
  """Serves `loaded` (lmjax.load's model, params and tokenizer) under the model name `name`
  (default: its directory's name), and each LoRA adapter directory of `adapters` under its
  name, with `max_batch` slots of `max_seq_len` tokens (default: the model's context, at most
  DEFAULT_MAX_SEQ_LEN) and up to `max_queue` waiting requests (default 4 * max_batch).
  Embeddings pool the final hidden states by `pooling` (mean, last, cls; default: a
  sentence-transformers directory's own, else mean). The engine runs on `placement`'s mesh
  (lmjax.infer.slot_mesh.serving_placement; default: every local device on `data`)."""
  served = served_model(loaded, max_batch=max_batch, max_seq_len=max_seq_len,
                        max_queue=max_queue, name=name, adapters=adapters, pooling=pooling,
                        placement=placement)
  engine, name = served.engine, served.name
  sock = listen(host, port)
  if engine is not None:
    engine.start()
  app = create_app(served)
  server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                         timeout_graceful_shutdown=GRACE_SECONDS))
  bound_host, bound_port = sock.getsockname()[:2]
  also = f" and adapters {', '.join(map(repr, served.adapters))}" if served.adapters else ""
  slots = f"{max_batch} slot{'s' if max_batch > 1 else ''}"
  what = (f"{slots} of {engine.max_seq_len} tokens, up to {engine.max_queue} requests waiting, "
          f"on {engine.mesh_description()}" if engine is not None
          else "embeddings only: not a causal language model")
  announce(f"serving {name!r}{also} at http://{bound_host}:{bound_port}/v1 ({what})")
  try:
    with _signals_stop_quietly():
      server.run(sockets=[sock])
  finally:
    sock.close()
    if engine is not None:
      engine.stop()
  announce(f"stopped ({engine.stats()['finished']})" if engine is not None else "stopped")


__all__ = ["DEFAULT_MAX_SEQ_LEN", "GRACE_SECONDS", "listen", "parse_adapters", "serve",
           "served_model"]
