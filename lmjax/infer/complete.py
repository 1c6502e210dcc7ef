"""Text in, text out: prompts through a tokenizer, generation with stop strings, streaming.

    settings = resolve_settings(flags, loaded)            # flags, else generation_config.json
    results = complete(loaded, ["Once upon"], settings, on_text=print_piece)
    results[0].shown_prompt + results[0].completions[0]  # what `lmjax generate` prints

The token level (lmjax.infer) knows no text. Here a continuation is the text the new ids add
to the prompt's own decoding (`decode(prompt + new)` minus `decode(prompt)`), so byte-level BPE
pieces and SentencePiece's spaces come out as a full decode would. A row ends at an
end-of-sequence id, or once its continuation contains a stop string; the text is cut before the
stop string (vLLM's and OpenAI's convention). Streaming decodes the whole continuation after each
chunk and hands on only the new suffix, holding back a trailing incomplete UTF-8 character and
any tail that may be the start of a stop string, so the streamed pieces join to exactly the
returned text.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import sys
from typing import Any, Callable, Mapping, Sequence

import jax

from lmjax.run.loader import Loaded
from lmjax.data.examples.sft import chat_template
from lmjax.data.tokenize import chat
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.files import read_json_lines, write_text_atomic
from lmjax.infer import stream_generate
from lmjax.infer.checks import check_processors, check_sampling, require_causal_lm
from lmjax.model import Positions, Transformer

log = logging.getLogger(__name__)

# Tokens decoded between looks at the text, when something looks (stop strings, a terminal):
# small enough to stream smoothly, large enough that a chunk's dispatch and host round trip
# (~0.1 ms) stay far below its decoding (~0.8 ms a token for a small model on CPU).
STREAM_CHUNK = 8


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
  """Everything that chooses the generated tokens, resolved (see `resolve_settings`)."""

  max_new_tokens: int = 64
  temperature: float = 1.0  # 0 is greedy
  top_k: int | None = None
  top_p: float | None = None
  repetition_penalty: float = 1.0  # 1.0 is off
  min_new_tokens: int = 0
  num_return_sequences: int = 1
  seed: int = 0
  eos_ids: tuple[int, ...] = ()  # any of them ends a row
  stop: tuple[str, ...] = ()     # so does any of these in the continuation's text


@dataclasses.dataclass(frozen=True)
class Completion:
  """One prompt's results: the prompt, what is shown before each continuation, and the
  continuations."""

  prompt: str                # as given
  shown_prompt: str          # what is printed before a continuation ("" with --chat)
  completions: list[str]     # num_return_sequences continuations, cut before a stop string


# -- settings ---------------------------------------------------------------------------------

# generation_config.json keys that give defaults, and the type each must have.
_FILE_KEYS = {"max_new_tokens": int, "temperature": float, "top_k": int, "top_p": float,
              "repetition_penalty": float}


def resolve_settings(flags: Mapping[str, Any], loaded: Loaded) -> GenerationSettings:
  """The settings of one command: each flag given (not None) wins; else the model directory's
  generation_config.json (`temperature`, `top_k`, `top_p`, `repetition_penalty`,
  `max_new_tokens`; `do_sample: false` makes greedy the default; `eos_token_id`, one id or a
  list, replaces the tokenizer's EOS); else lmjax's defaults. Logs which defaults came from the
  file."""
  path = loaded.directory / "generation_config.json"
  file = loaded.generation_config()
  values, from_file = {}, {}
  for key, kind in _FILE_KEYS.items():
    if flags.get(key) is not None:
      values[key] = flags[key]
    elif file.get(key) is not None:
      values[key] = from_file[key] = _file_value(path, key, file[key], kind)
  if flags.get("temperature") is None and file.get("do_sample") is False:
    values["temperature"] = 0.0
    from_file["do_sample"] = False
  if values.get("top_k") == 0:  # HF's "off"
    values["top_k"] = None
  for key in ("min_new_tokens", "num_return_sequences", "seed"):
    if flags.get(key) is not None:
      values[key] = flags[key]
  eos = file.get("eos_token_id")
  if eos is not None:
    ids = eos if isinstance(eos, list) else [eos]
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
      raise UserError(f"{path}: eos_token_id is {eos!r}, not a token id or a list of them: fix "
                      f"the file.")
    values["eos_ids"] = tuple(ids)
    from_file["eos_token_id"] = eos
  elif loaded.tokenizer.eos_id is not None:
    values["eos_ids"] = (loaded.tokenizer.eos_id,)
  stop = tuple(flags.get("stop") or ())
  if "" in stop:
    raise UserError("--stop '' is empty, and an empty string would end every row at once: give "
                    "the text that should end a continuation, e.g. --stop $'\\n\\n'.")
  values["stop"] = stop
  eos_texts = {loaded.tokenizer.id_to_token(i) for i in values.get("eos_ids", ())
               if 0 <= i < loaded.tokenizer.vocab_size}
  for text in stop:
    if text in eos_texts:  # special tokens are not in the decoded text a stop string looks at
      log.warning("--stop %r is the end-of-sequence token, which ends a row by itself; as a stop "
                  "string it never matches the decoded text: drop it", text)
  if from_file:
    log.info("defaults from %s: %s (a flag given explicitly wins)", path,
             ", ".join(f"{key}={value!r}" for key, value in from_file.items()))
  return GenerationSettings(**values)


def _file_value(path: pathlib.Path, key: str, value: Any, kind: type) -> Any:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      kind is int and not isinstance(value, int)):
    raise UserError(f"{path}: {key} is {value!r}, not {'an integer' if kind is int else 'a number'}"
                    f": fix the file, or give --{key.replace('_', '-')} explicitly.")
  return kind(value)


# -- prompts ----------------------------------------------------------------------------------


def read_prompts(path: str | pathlib.Path) -> list[str]:
  """The "prompt" of each line of JSON Lines file `path` (blank lines skipped); UserError naming
  the line for a bad line, or naming the file when it holds no prompt."""
  records = read_json_lines(path, "prompt", noun="prompts", hint=(
      'write one JSON object per line, e.g. {"prompt": "Once upon a time"}'))
  return [record["prompt"] for record in records]


def encode_prompts(loaded: Loaded, texts: Sequence[str], *, chat_mode: bool) -> list[list[int]]:
  """Token ids of each prompt: plain text with the tokenizer's own special tokens, or (chat)
  a user message rendered with the chat template (`chat_template_source`)."""
  tokenizer = loaded.tokenizer
  if chat_mode:
    template = chat_template(chat_template_source(loaded), tokenizer)
    rendered = [chat.render_prompt([{"role": "user", "content": t}], template) for t in texts]
    prompts = [tokenizer.encode(t, parse_special_tokens=True) for t in rendered]
  else:
    prompts = [tokenizer.encode(t, add_special_tokens=True) for t in texts]
  for text, ids in zip(texts, prompts):
    if not ids:
      raise UserError(f"prompt {text!r} has no tokens: give some text to continue.")
  return prompts


def chat_template_source(loaded: Loaded) -> str | None:
  """The template `--chat` renders with: the run's data.chat_template, else its tokenizer
  directory's (or the HF directory's) own, else lmjax's default."""
  return loaded.chat_template


def fit_prompts(model: Transformer, prompts: list[list[int]], *, max_new_tokens: int
                ) -> list[list[int]]:
  """Prompts that fit a learned-position model's context: one longer than `max_seq_len -
  max_new_tokens` loses its oldest tokens, with a warning naming how many (RoPE models have no
  such limit and keep everything)."""
  cfg = model.config
  if cfg.positions is not Positions.LEARNED:
    return prompts
  room = cfg.max_seq_len - max_new_tokens
  if room < 1:
    raise UserError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in this "
                    f"model's {cfg.max_seq_len} positions: lower it below {cfg.max_seq_len}.")
  fitted = []
  for number, prompt in enumerate(prompts, start=1):
    if len(prompt) > room:
      log.warning("prompt %d has %d tokens, more than the %d that fit before %d new ones in the "
                  "model's %d positions: dropped its oldest %d tokens", number, len(prompt), room,
                  max_new_tokens, cfg.max_seq_len, len(prompt) - room)
      prompt = prompt[-room:]
    fitted.append(prompt)
  return fitted


# -- text from tokens -------------------------------------------------------------------------


def _cut_at_stop(text: str, stop: Sequence[str]) -> str | None:
  """`text` up to its first stop string, or None when it holds none."""
  found = [i for i in (text.find(s) for s in stop) if i >= 0]
  return text[:min(found)] if found else None


def stable_prefix(text: str, stop: Sequence[str]) -> str:
  """The part of a growing decoded `text` that more tokens will not change: without trailing
  incomplete UTF-8 characters (decoded as U+FFFD until their last bytes arrive), nor a tail that
  may be the start of a stop string."""
  text = text.rstrip("\ufffd")
  held = max((n for s in stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
  return text[:len(text) - held]


@dataclasses.dataclass
class _Row:
  """One returned sequence as it grows."""

  prefix: list[int]  # the ids decoded with the new ones (the prompt; none with --chat)
  head: str          # their text, which the continuation follows
  ids: list[int] = dataclasses.field(default_factory=list)
  text: str = ""
  ended: bool = False  # by a stop string

  def extend(self, tokenizer: Tokenizer, ids: list[int], stop: Sequence[str]) -> None:
    self.ids += ids
    full = tokenizer.decode(self.prefix + self.ids)
    text = full[len(self.head):] if full.startswith(self.head) else tokenizer.decode(self.ids)
    cut = _cut_at_stop(text, stop)
    self.text, self.ended = (text, False) if cut is None else (cut, True)


def complete_batch(loaded: Loaded, prompts: list[list[int]], settings: GenerationSettings, *,
                   echo: bool, key: jax.Array,
                   on_text: Callable[[str], None] | None = None) -> list[list[str]]:
  """num_return_sequences continuations of each prompt (token ids), decoded as one batch.

  `echo`: the continuation is the text the ids add to the prompt's decoding (else to nothing).
  `on_text` (one prompt, one sequence) receives that decoding (with `echo`), then the
  continuation piece by piece, as chunks arrive.
  """
  tokenizer, stop = loaded.tokenizer, settings.stop
  rows = []
  for prompt in prompts:
    prefix = prompt if echo else []
    rows += [_Row(prefix, tokenizer.decode(prefix)) for _ in range(settings.num_return_sequences)]
  chunk = STREAM_CHUNK if stop or on_text else max(settings.max_new_tokens, 1)
  stream = stream_generate(
      loaded.model, loaded.params, prompts, max_new_tokens=settings.max_new_tokens, chunk=chunk,
      temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
      repetition_penalty=settings.repetition_penalty, min_new_tokens=settings.min_new_tokens,
      num_return_sequences=settings.num_return_sequences, key=key,
      eos_id=list(settings.eos_ids), pad_id=tokenizer.pad_id)
  if on_text is not None:  # the arguments passed their checks: show the prompt
    on_text(rows[0].head)
  shown, ended = "", None
  while True:
    try:
      new_ids = stream.send(ended)  # ends the rows that reached a stop string
    except StopIteration:
      break
    ended = []
    for r, (row, ids) in enumerate(zip(rows, new_ids)):
      if ids and not row.ended:
        row.extend(tokenizer, ids, stop)
        if row.ended:
          ended.append(r)
    if on_text is not None:
      first = rows[0]
      shown = _emit(on_text, shown, first.text if first.ended else stable_prefix(first.text, stop))
  if on_text is not None and rows:
    _emit(on_text, shown, rows[0].text)
  n = settings.num_return_sequences
  return [[row.text for row in rows[i:i + n]] for i in range(0, len(rows), n)]


def _emit(on_text: Callable[[str], None], shown: str, text: str) -> str:
  """Hands on what `text` adds to the `shown` text; returns what is shown now."""
  if len(text) > len(shown) and text.startswith(shown):
    on_text(text[len(shown):])
    return text
  return shown


def complete(loaded: Loaded, texts: Sequence[str], settings: GenerationSettings, *,
             chat_mode: bool = False, batch_size: int = 8,
             on_text: Callable[[str], None] | None = None) -> list[Completion]:
  """Continues each prompt text, `batch_size` prompts at a time (each batch with its own key,
  folded from `settings.seed`). With `on_text`, for a single prompt and sequence, the shown
  prompt and then the continuation are handed on as they grow (pieces joining to
  `shown_prompt + completions[0]`)."""
  if batch_size < 1:
    raise UserError(f"--batch-size must be >= 1, got {batch_size}.")
  if on_text is not None and (len(texts) != 1 or settings.num_return_sequences != 1):
    raise UserError("streaming shows one prompt's one sequence: give a single prompt with "
                    "num_return_sequences=1, or turn streaming off (--no-stream).")
  require_causal_lm(loaded.model, "generate")
  # The settings' own mistakes first, before any about prompts that would follow from them.
  check_sampling(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                 top_k=settings.top_k, top_p=settings.top_p)
  check_processors(max_new_tokens=settings.max_new_tokens,
                   repetition_penalty=settings.repetition_penalty,
                   min_new_tokens=settings.min_new_tokens,
                   num_return_sequences=settings.num_return_sequences,
                   greedy=settings.temperature == 0)
  prompts = fit_prompts(loaded.model, encode_prompts(loaded, texts, chat_mode=chat_mode),
                        max_new_tokens=settings.max_new_tokens)
  key = jax.random.key(settings.seed)
  results = []
  for start in range(0, len(prompts), batch_size):
    batch = prompts[start:start + batch_size]
    shown = ["" if chat_mode else loaded.tokenizer.decode(p) for p in batch]
    outputs = complete_batch(loaded, batch, settings, echo=not chat_mode,
                             key=jax.random.fold_in(key, start // batch_size), on_text=on_text)
    results += [Completion(text, head, texts_out)
                for text, head, texts_out in zip(texts[start:], shown, outputs)]
  return results


# -- output -----------------------------------------------------------------------------------


def format_completions(results: Sequence[Completion]) -> str:
  """What `lmjax generate` prints for its results: each prompt's text and continuation, under a
  header naming the prompt (and the sequence, with several per prompt) where there are several,
  so that continuations holding blank lines of their own are still told apart."""
  shown = [(n, k, r.shown_prompt + text) for n, r in enumerate(results, 1)
           for k, text in enumerate(r.completions, 1)]
  if len(shown) == 1:
    return shown[0][2]
  per_prompt = max(len(r.completions) for r in results)
  return "\n\n".join(
      f"--- prompt {n}/{len(results)}" + (f", sequence {k}/{per_prompt}" if per_prompt > 1 else "")
      + f" ---\n{text}" for n, k, text in shown)


def write_completions(results: Sequence[Completion], path: pathlib.Path | None) -> None:
  """One JSON object per prompt, {"prompt": …, "completions": [text, …]}, to `path` (written
  atomically, so a failure leaves no file) or to stdout."""
  text = "".join(json.dumps({"prompt": r.prompt, "completions": r.completions},
                            ensure_ascii=False) + "\n" for r in results)
  if path is None:
    sys.stdout.write(text)
    sys.stdout.flush()
  else:
    write_text_atomic(path, text)


__all__ = ["Completion", "GenerationSettings", "STREAM_CHUNK",
           "chat_template_source", "complete", "complete_batch", "encode_prompts", "fit_prompts",
           "read_prompts", "resolve_settings", "stable_prefix", "write_completions"]
