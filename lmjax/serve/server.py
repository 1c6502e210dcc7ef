"""Serving a loaded model on a TCP port until SIGTERM or SIGINT.

    serve(loaded, host="127.0.0.1", port=8000, max_batch=8)

The socket is bound before uvicorn starts, so that `--port 0` picks a free port and the line
announcing the address names it. On SIGTERM uvicorn stops accepting connections and gives the
open ones `GRACE_SECONDS` to finish (streams included); then the engine ends what is left
("cancelled") and `serve` returns.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import socket
import threading
from typing import Any, Callable

import uvicorn

from lmjax.errors import UserError
from lmjax.infer.complete import resolve_settings
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


def serve(loaded: Any, *, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8,
          max_seq_len: int | None = None, max_queue: int | None = None, name: str | None = None,
          announce: Callable[[str], None] = print) -> None:
  """Serves `loaded` (lmjax.load's model, params and tokenizer) under the model name `name` (default: its directory's name) with
  `max_batch` slots of `max_seq_len` tokens (default: the model's context, at most
  DEFAULT_MAX_SEQ_LEN) and up to `max_queue` waiting requests (default 4 * max_batch)."""
  max_seq_len = max_seq_len or min(loaded.config.max_seq_len, DEFAULT_MAX_SEQ_LEN)
  max_queue = 4 * max_batch if max_queue is None else max_queue
  eos_ids = resolve_settings({}, loaded).eos_ids  # as `lmjax generate` ends a row
  engine = Engine(loaded, max_batch=max_batch, max_seq_len=max_seq_len, max_queue=max_queue,
                  eos_ids=eos_ids)
  sock = listen(host, port)
  name = name or loaded.origin.rstrip("/").rsplit("/", 1)[-1] or loaded.directory.name
  engine.start()
  app = create_app(Served(engine, name))
  server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                         timeout_graceful_shutdown=GRACE_SECONDS))
  bound_host, bound_port = sock.getsockname()[:2]
  announce(f"serving {name!r} at http://{bound_host}:{bound_port}/v1 ({max_batch} slots of "
           f"{max_seq_len} tokens, up to {max_queue} requests waiting)")
  try:
    with _signals_stop_quietly():
      server.run(sockets=[sock])
  finally:
    sock.close()
    engine.stop()
  announce(f"stopped ({engine.stats()['finished']})")


__all__ = ["DEFAULT_MAX_SEQ_LEN", "GRACE_SECONDS", "listen", "serve"]
