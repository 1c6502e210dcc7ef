"""Instruction examples rendered as text segments, each marked trained (the answer) or not.

An example is a `{prompt, completion}` pair or a chat `{messages: [{role, content}, …]}` (roles
system, user, assistant, tool), as `trl` reads them. `segments(example, template)` renders it
as [(text, trained)]: a pair as (prompt, False), (completion, True); a chat message by message,
assistant messages trained (their header, the template's generation prompt, is not), the
others not.

Templates are Jinja, with Hugging Face's semantics (`tokenizer_config.json`'s `chat_template`:
`messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`), rendered in
a sandbox. Message i's text is what rendering messages[:i+1] adds to rendering messages[:i],
which every prefix-stable template (all the common ones) gives exactly. Without one, lmjax's
documented default (ChatML):

    <|im_start|>{role}\\n{content}<|im_end|>\\n          (per message)
    <|im_start|>assistant\\n                             (the generation prompt)
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

from lmjax.data.tokenize import render_limits
from lmjax.data.tokenize.render_limits import RenderTimeout, joined_within, output_limit
from lmjax.errors import UserError
from lmjax.files import read_json_object

ROLES = ("system", "user", "assistant", "tool")
TEMPLATE_FILE = "chat_template.jinja"
DEFAULT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

Segments = list[tuple[str, bool]]


def own_template(directory: str | pathlib.Path) -> str | None:
  """The chat template a tokenizer directory holds, None if none: its `chat_template.jinja`
  (where transformers v5 saves it), else its tokenizer_config.json's `chat_template`."""
  directory = pathlib.Path(directory)
  if (directory / TEMPLATE_FILE).is_file():
    return load_template(str(directory / TEMPLATE_FILE))
  settings = directory / "tokenizer_config.json"
  if settings.is_file() and (read_json_object(settings) or {}).get("chat_template"):
    return load_template(str(settings))
  return None


def save_template(template: str, directory: str | pathlib.Path) -> None:
  """Writes `template` into the tokenizer directory's tokenizer_config.json (`chat_template`),
  where transformers and `own_template` read it."""
  path = pathlib.Path(directory) / "tokenizer_config.json"
  settings = read_json_object(path) if path.is_file() else {}
  path.write_text(json.dumps({**(settings or {}), "chat_template": template}, indent=2,
                             ensure_ascii=False) + "\n", encoding="utf-8")


def load_template(source: str | None) -> str:
  """The Jinja chat template `source` names: None or "default" for lmjax's, a `.jinja`/text
  file, or a directory (or tokenizer_config.json) holding a `chat_template` (`own_template`);
  a directory without one gives the default."""
  if source in (None, "default"):
    return DEFAULT_TEMPLATE
  if not source.strip():  # pathlib would read "" as ".", the working directory
    raise UserError("data.chat_template is an empty string: name a .jinja file or a tokenizer "
                    "directory, or set data.chat_template=default for lmjax's (ChatML).")
  path = pathlib.Path(source)
  if path.is_dir():
    return own_template(path) or DEFAULT_TEMPLATE
  if not path.is_file():
    raise UserError(f"data.chat_template={source!r} is neither 'default', a template file nor a "
                    f"directory with a tokenizer_config.json.")
  if path.name == "tokenizer_config.json":
    template = (read_json_object(path) or {}).get("chat_template")
    if isinstance(template, list):  # several named templates: the default one
      named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
      if "default" not in named:
        raise UserError(f"{path} has chat templates named {', '.join(map(repr, named))} but none "
                        f"named 'default': save the one to use as a .jinja file and set "
                        f"data.chat_template to it.")
      template = named["default"]
    if template is not None and not isinstance(template, str):
      raise UserError(f"{path}: chat_template holds a {type(template).__name__}, not a Jinja "
                      f"template string.")
    if not template or not template.strip():
      raise UserError(f"data.chat_template={source!r} holds no chat template (chat_template is "
                      f"{template!r}): name a file that has one, or set "
                      f"data.chat_template=default for lmjax's (ChatML).")
    return template
  try:
    template = path.read_text(encoding="utf-8")
  except UnicodeDecodeError:
    raise UserError(f"data.chat_template={source!r} is not UTF-8 text.") from None
  if not template.strip():
    raise UserError(f"data.chat_template={source!r} is empty: a template renders the messages "
                    f"(write one, or set data.chat_template=default for lmjax's).")
  return template


class ChatTemplate:
  """A compiled template and the special tokens it may use."""

  def __init__(self, source: str, *, bos_token: str = "", eos_token: str = ""):
    import jinja2  # deferred: only instruction tuning renders templates

    def raise_exception(message):
      raise jinja2.exceptions.TemplateError(message)

    env = render_limits.sandbox(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
      self._template = env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
      raise UserError(f"the chat template does not compile: {e} (line {e.lineno}).") from None
    self._tokens = {"bos_token": bos_token, "eos_token": eos_token}
    self._errors = (jinja2.TemplateError, TypeError, KeyError, ValueError)

  def render(self, messages: list[Mapping[str, Any]], *, add_generation_prompt: bool = False,
             where: str = "", tools: list[Mapping[str, Any]] | None = None) -> str:
    """The template's text for `messages`, within render_limits' bounds of output and time;
    `tools` (OpenAI's function specs) reach the templates that list them, as in transformers'
    apply_chat_template."""
    size = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, Mapping))
    size += len(str(tools or ""))
    extra = {} if tools is None else {"tools": tools}
    try:
      with render_limits.time_limit(render_limits.RENDER_SECONDS):
        return joined_within(self._template.generate(
            messages=messages, add_generation_prompt=add_generation_prompt, **extra,
            **self._tokens), limit=output_limit(size), where=where)
    except RenderTimeout:
      raise UserError(f"{where}: the chat template ran for more than {render_limits.RENDER_SECONDS:g} s on it "
                      f"(a loop without end?): fix the template (data.chat_template).") from None
    except RecursionError:
      raise UserError(f"{where}: the chat template recurses without end (a macro calling "
                      f"itself?): fix the template (data.chat_template).") from None
    except (*self._errors, OverflowError) as e:  # the sandbox's range limit is an OverflowError
      raise UserError(f"{where}: the chat template failed to render it: "
                      f"{type(e).__name__}: {e}.") from None


def segments(example: Mapping[str, Any], template: ChatTemplate, *, where: str) -> Segments:
  """The example as [(text, trained)]; UserError (naming `where`, e.g. "data.jsonl:3") for a
  row that is neither form, an unknown role, or a chat without an assistant turn."""
  if "messages" in example:
    return _chat_segments(example["messages"], template, where)
  prompt, completion = example.get("prompt"), example.get("completion")
  if not isinstance(prompt, str) or not isinstance(completion, str):
    raise UserError(f"{where}: an instruction row needs string fields prompt and completion, or "
                    f"a list of messages; it has {sorted(example)}.")
  if not completion.strip():
    raise UserError(f"{where}: the completion is empty: there is nothing to learn from this row.")
  return [(prompt, False), (completion, True)]


def _chat_segments(messages: Any, template: ChatTemplate, where: str) -> Segments:
  if not isinstance(messages, list) or not messages:
    raise UserError(f"{where}: messages must be a non-empty list of {{role, content}}.")
  for i, message in enumerate(messages):
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
      raise UserError(f"{where}: message {i} must be an object with a string content.")
    if message.get("role") not in ROLES:
      raise UserError(f"{where}: message {i} has role {message.get('role')!r}; roles are "
                      f"{', '.join(ROLES)}.")
  if not any(m["role"] == "assistant" for m in messages):
    raise UserError(f"{where}: the chat has no assistant message: there is nothing to learn "
                    f"from it.")
  out, previous = [], ""
  for i, message in enumerate(messages):
    text = template.render(messages[:i + 1], where=where)
    if message["role"] == "assistant":  # its header (the generation prompt) is prompt
      header = template.render(messages[:i], add_generation_prompt=True, where=where)
      if header.startswith(previous) and text.startswith(header):
        out.append((header[len(previous):], False))
        previous = header
    if not text.startswith(previous):
      raise UserError(f"{where}: the chat template renders message {i} by changing what it "
                      f"rendered before it; lmjax needs a template that appends each message.")
    out.append((text[len(previous):], message["role"] == "assistant"))
    previous = text
  return [(text, trained) for text, trained in out if text]


def render_prompt(messages: list[Mapping[str, Any]], template: ChatTemplate, *,
                  tools: list[Mapping[str, Any]] | None = None) -> str:
  """The text a model continues to answer `messages` (the generation prompt added), with the
  `tools` it may call where the template lists them."""
  return template.render(messages, add_generation_prompt=True, where="the prompt", tools=tools)
