"""Continuous batching: requests join a fixed set of decoding slots and leave as they finish.

    engine = Engine(loaded, max_batch=8, max_seq_len=512, max_queue=32)
    engine.start()                                   # compiles, then decodes in its own thread
    handle = engine.submit(Request(prompt=ids, max_tokens=32), on_event=print)
    handle.cancel()                                  # e.g. the client went away: frees its slot
    engine.stop()                                    # what is left ends with "cancelled"

One thread runs the loop: it admits queued requests into free slots (one prefill each, the
prompt padded to a bucket length: lmjax.infer.slots), then decodes `DECODE_STEPS` tokens of
every request in one program (over the smallest group of slots that holds them: requests take
the lowest free slots), and hands each request the text its new tokens add, as `Event`s.
Requests join at the next chunk and leave at the end of the one that finishes them; shapes
never change, so nothing is compiled as they come and go. The text follows lmjax.infer.complete's
rules (`TextRow`): a continuation is what its ids add to the prompt's decoding, it ends at an
end-of-sequence id or before a stop string, and streamed pieces join to exactly the final text.
At most `max_queue` requests wait for a slot; `submit` refuses more with `Busy`.

On a mesh (`placement`, lmjax.infer.slot_mesh; default: every local device on `data`) the
params are placed as training places them and the slots are split over the batch axes, so
`max_batch` must be a multiple of their size.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import threading
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import UserError
from lmjax.infer import slot_mesh, slots
from lmjax.infer.adapters import Adapters, base_of
from lmjax.infer.checks import check_ids, check_sampling, require_causal_lm
from lmjax.infer.complete import TextRow, stable_prefix
from lmjax.model import Positions
from lmjax.run.loader import Loaded
from lmjax.sharding import MeshRules

log = logging.getLogger(__name__)

# Tokens each slot decodes per program call: new requests wait at most this many steps to
# join, and a finished one computes at most this many - 1 unused tokens.
DECODE_STEPS = 4


class Busy(UserError):
  """Every slot is taken and the queue is full: the caller should retry later (HTTP 429)."""


class ContextTooLong(UserError):
  """The prompt plus max_tokens do not fit a slot's `max_seq_len` positions."""


@dataclasses.dataclass(frozen=True)
class Request:
  """One sequence to generate. `seed` and `choice` choose its random key
  (fold_in(key(seed), choice): the choices of one request sample independently)."""

  prompt: Sequence[int]
  max_tokens: int
  temperature: float = 1.0   # 0 is greedy
  top_p: float = 1.0
  seed: int = 0
  choice: int = 0
  stop: tuple[str, ...] = ()
  after_prompt: bool = True  # the text is what the ids add to the prompt's (else on their own)
  top_logprobs: int | None = None  # report each token's log-probability and this many others
  adapter: int = 0           # the LoRA adapter (Adapters.index; 0: the base model)


class TokenLogprob(NamedTuple):
  token: str                       # the token's own text
  logprob: float
  top: list[tuple[str, float]]     # the most likely tokens at that step, with theirs


@dataclasses.dataclass(frozen=True)
class Event:
  """What a request gained since its last event."""

  text: str
  logprobs: list[TokenLogprob]     # one per new token ([] without top_logprobs)
  finish_reason: str | None        # "stop" (EOS id or stop string), "length", "cancelled"
  prompt_tokens: int
  completion_tokens: int


class Handle:
  """A submitted request, for its owner: `cancel()` ends it at the next chunk."""

  def __init__(self, request: Request, on_event: Callable[[Event], None]):
    self.request, self.on_event = request, on_event
    self.cancelled = False

  def cancel(self) -> None:
    self.cancelled = True


@dataclasses.dataclass
class _Running:
  handle: Handle
  row: TextRow
  sent: str = ""        # the text handed on so far
  generated: int = 0    # tokens decoded so far (EOS included)


def check_limits(*, max_batch: int, max_queue: int | None, max_seq_len: int | None) -> None:
  """UserError naming the flag of a limit out of range (None: the default, left unchecked)."""
  for flag, value, least, why in (
      ("--max-batch", max_batch, 1, ""), ("--max-queue", max_queue, 0, ""),
      ("--max-seq-len", max_seq_len, 2, " (a prompt token and a new one)")):
    if value is not None and value < least:
      raise UserError(f"{flag} must be >= {least}{why}, got {value}.")


class Engine:
  """The batching loop over `max_batch` slots of `max_seq_len` positions each, with the base
  model and any LoRA `adapters` of it (lmjax.infer.adapters) in the same batch, laid out on
  `placement`'s mesh (default: slot_mesh.serving_placement(), every local device on `data`)."""

  def __init__(self, loaded: Loaded, *, max_batch: int, max_seq_len: int, max_queue: int,
               eos_ids: Sequence[int] = (), adapters: Adapters | None = None,
               placement: MeshRules | None = None):
    require_causal_lm(loaded.model, "serve")
    config = loaded.model.config
    check_limits(max_batch=max_batch, max_queue=max_queue, max_seq_len=max_seq_len)
    if config.positions is Positions.LEARNED and max_seq_len > config.max_seq_len:
      raise UserError(f"--max-seq-len {max_seq_len} is more than the model's "
                      f"{config.max_seq_len} learned positions: give at most "
                      f"{config.max_seq_len}.")
    self.loaded, self.max_batch, self.max_seq_len = loaded, max_batch, max_seq_len
    self.adapters = adapters
    self.placement = placement or slot_mesh.serving_placement()
    slot_mesh.check_slots_divide(max_batch, self.placement)
    self.model, params_model, params = loaded.model, loaded.model, loaded.params
    if adapters is not None:  # a LoRA model over the base; each slot picks its adapter
      self.model, (params_model, params) = adapters.model, base_of(loaded)
    self._programs = slot_mesh.slot_programs(
        self.model, params_model.config, self.placement, slots_count=max_batch,
        max_seq_len=max_seq_len, steps=DECODE_STEPS, adapters=adapters is not None)
    self.params = jax.device_put(params, self._programs.params_shardings)
    self._stacked = None if adapters is None else jax.device_put(
        adapters.stacked, self._programs.adapters_sharding)
    self.max_queue = max_queue
    self.eos_ids = frozenset(int(i) for i in eos_ids)
    self.buckets = slots.prefill_buckets(max_seq_len)
    # Where the slots are split over devices, every step runs over all of them (a group of
    # the lowest ones would gather rows from other devices).
    self.groups = (slots.decode_groups(max_batch)
                   if slot_mesh.batch_shards(self.placement) == 1 else [max_batch])
    self._queue: collections.deque[Handle] = collections.deque()
    self._running: dict[int, _Running] = {}
    self._lock = threading.Condition()
    self._stopping = False
    self._thread: threading.Thread | None = None
    self._state = None
    self.finished = collections.Counter()  # finish reasons so far

  # -- the caller's side ------------------------------------------------------------------------

  def check(self, request: Request) -> None:
    """UserError (ContextTooLong for length) if `request` cannot run here."""
    if not request.prompt:
      raise UserError("the prompt has no tokens: give some text to continue.")
    check_ids(request.prompt, vocab_size=self.loaded.model.config.vocab_size, what="the prompt")
    if not 0 <= request.adapter <= len(self.adapters.names if self.adapters else ()):
      raise UserError(f"adapter {request.adapter} is not one this engine serves.")
    if request.max_tokens < 1:
      raise UserError(f"max_tokens must be >= 1, got {request.max_tokens}.")
    check_sampling(max_new_tokens=request.max_tokens, temperature=request.temperature,
                   top_k=None, top_p=request.top_p)
    length = len(request.prompt) + request.max_tokens
    if length > self.max_seq_len:
      raise ContextTooLong(
          f"the prompt ({len(request.prompt)} tokens) plus max_tokens ({request.max_tokens}) is "
          f"{length} tokens, more than this server's context of {self.max_seq_len}: shorten the "
          f"prompt or lower max_tokens.")

  def submit(self, requests: Sequence[Request], on_event: Callable[[int, Event], None]
             ) -> list[Handle]:
    """Queues `requests` together (all or none: Busy when the queue cannot take them all);
    `on_event(i, event)` is called from the engine's thread for requests[i]."""
    for request in requests:
      self.check(request)
    if len(requests) > self.max_batch + self.max_queue:
      raise UserError(f"{len(requests)} sequences at once is more than this server takes "
                      f"({self.max_batch} decoding and {self.max_queue} waiting): ask for fewer.")
    with self._lock:
      if self._stopping:
        raise Busy("the server is shutting down.")
      free = self.max_batch - len(self._running) + self.max_queue - len(self._queue)
      if len(requests) > free:
        raise Busy(f"{len(self._running)} requests are decoding and {len(self._queue)} waiting "
                   f"(at most {self.max_batch} and {self.max_queue}): retry later.")
      handles = [Handle(r, functools.partial(on_event, i)) for i, r in enumerate(requests)]
      self._queue.extend(handles)
      self._lock.notify()
    return handles

  def mesh_description(self) -> str:
    """'1 device', or the mesh's axes of more than one device: 'mesh.data=4 x mesh.tensor=2'."""
    shape = {axis: size for axis, size in self.placement.mesh.shape.items() if size > 1}
    return " x ".join(f"mesh.{a}={n}" for a, n in shape.items()) or "1 device"

  def stats(self) -> dict[str, object]:
    """Slots in use, requests waiting, finish reasons so far, and compiled programs."""
    with self._lock:
      return {"slots": self.max_batch, "running": len(self._running),
              "queued": len(self._queue), "finished": dict(self.finished),
              **self._programs.compiled()}

  def start(self) -> None:
    """Compiles the decode programs and the smallest prefill, then starts the loop's thread."""
    params, stacked, programs = self.params, self._stacked, self._programs
    self._state = programs.empty()
    self._state, _ = programs.prefill(params, stacked, self._state, jnp.int32(0),
                                      np.zeros((1, self.buckets[0]), np.int32), jnp.int32(1),
                                      jax.random.key(0), _settings(Request([0], 1), self.model),
                                      jnp.int32(0))
    for rows in self.groups:
      self._state, _ = programs.decode(params, stacked, self._state, np.zeros(rows, bool))
    self._thread = threading.Thread(target=self._loop, name="lmjax-engine", daemon=True)
    self._thread.start()

  def stop(self, timeout: float = 30.0) -> None:
    """Ends the loop: running and queued requests end with finish_reason "cancelled"."""
    with self._lock:
      self._stopping = True
      self._lock.notify()
    if self._thread is not None:
      self._thread.join(timeout)
    with self._lock:
      queued, self._queue = list(self._queue), collections.deque()
    for handle in queued:
      self._finish_unstarted(handle, "cancelled")
    for slot in list(self._running):
      self._end(slot, "cancelled")

  # -- the loop ---------------------------------------------------------------------------------

  def _loop(self) -> None:
    while True:
      with self._lock:
        while not self._stopping and not self._queue and not self._running:
          self._lock.wait()
        if self._stopping:
          return
        admitted = []
        free = [s for s in range(self.max_batch) if s not in self._running]
        while self._queue and len(admitted) < len(free):
          handle = self._queue.popleft()
          if handle.cancelled:
            self._finish_unstarted(handle, "cancelled")
          else:
            admitted.append((free[len(admitted)], handle))
      try:
        for slot, handle in admitted:
          self._prefill(slot, handle)
        for slot in [s for s, r in self._running.items() if r.handle.cancelled]:
          self._end(slot, "cancelled")
        if self._running:
          self._decode()
      except Exception:  # noqa: BLE001 -- a failed program must not end the server
        log.exception("the decode loop failed; ending its requests and emptying the slots")
        for slot in list(self._running):
          self._end(slot, "error")
        self._state = self._programs.empty()

  def _prefill(self, slot: int, handle: Handle) -> None:
    request, model = handle.request, self.model
    length = len(request.prompt)
    bucket = next(b for b in self.buckets if b >= length)
    input_ids = np.zeros((1, bucket), np.int32)
    input_ids[0, :length] = request.prompt
    key = jax.random.fold_in(jax.random.key(request.seed), request.choice)
    self._state, first = self._programs.prefill(
        self.params, self._stacked, self._state, jnp.int32(slot), input_ids, jnp.int32(length),
        key, _settings(request, model), jnp.int32(request.adapter))
    prefix = list(request.prompt) if request.after_prompt else []
    self._running[slot] = _Running(handle, TextRow(prefix, self.loaded.tokenizer.decode(prefix)))
    self._take(slot, jax.tree.map(lambda x: x[:, None], jax.device_get(first)), 0)  # 1 step

  def _decode(self) -> None:
    # Requests take the lowest free slots: the group that holds the highest one decodes.
    active = np.zeros(next(g for g in self.groups if g > max(self._running)), bool)
    active[list(self._running)] = True
    self._state, sampled = self._programs.decode(self.params, self._stacked, self._state,
                                                 active)
    sampled = jax.device_get(sampled)
    for slot in list(self._running):
      self._take(slot, sampled, slot)

  def _take(self, slot: int, sampled: slots.Sampled, row: int) -> None:
    """Hands the request in `slot` the tokens of `sampled`'s `row` (Sampled [rows, steps])."""
    running = self._running[slot]
    request, tokenizer = running.handle.request, self.loaded.tokenizer
    tokens = sampled.token[row].tolist()
    new, logprobs, finish = [], [], None
    for step, token in enumerate(tokens):
      running.generated += 1
      if request.top_logprobs is not None:
        logprobs.append(self._logprob(sampled, row, step, token, request.top_logprobs))
      if token in self.eos_ids:
        finish = "stop"
        break
      new.append(token)
      if running.generated >= request.max_tokens:
        finish = "length"
        break
    running.row.extend(tokenizer, new, request.stop)
    if running.row.ended:
      finish = "stop"
    self._send(running, finish, logprobs)
    if finish is not None:
      del self._running[slot]
      self.finished[finish] += 1

  def _logprob(self, sampled: slots.Sampled, row: int, step: int, token: int, top: int
               ) -> TokenLogprob:
    decode = self.loaded.tokenizer.decode
    top_ids, top_logprobs = sampled.top_ids[row, step, :top], sampled.top_logprobs[row, step, :top]
    return TokenLogprob(decode([token], skip_special_tokens=False),
                        float(sampled.logprob[row, step]),
                        [(decode([int(i)], skip_special_tokens=False), float(lp))
                         for i, lp in zip(top_ids, top_logprobs)])

  def _send(self, running: _Running, finish: str | None, logprobs: list[TokenLogprob]) -> None:
    request = running.handle.request
    text = running.row.text if finish else stable_prefix(running.row.text, request.stop)
    piece = text[len(running.sent):] if text.startswith(running.sent) else ""
    running.sent += piece
    if piece or logprobs or finish:
      running.handle.on_event(Event(piece, logprobs, finish, len(request.prompt),
                                    running.generated))

  def _end(self, slot: int, reason: str) -> None:
    running = self._running.pop(slot)
    self._send(running, reason, [])
    self.finished[reason] += 1

  def _finish_unstarted(self, handle: Handle, reason: str) -> None:
    handle.on_event(Event("", [], reason, len(handle.request.prompt), 0))
    self.finished[reason] += 1


def _settings(request: Request, model) -> slots.SlotSettings:
  return slots.SlotSettings(temperature=jnp.float32(request.temperature),
                            top_k=jnp.int32(model.config.vocab_size),
                            top_p=jnp.float32(request.top_p))


__all__ = ["Busy", "ContextTooLong", "DECODE_STEPS", "Engine", "Event", "Handle", "Request",
           "TokenLogprob", "check_limits"]
