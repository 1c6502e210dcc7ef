"""Tools in chat requests: OpenAI's function specs checked and handed to the chat template, and
the calls a model writes read back as OpenAI's `tool_calls`.

    tools = read_tools(body)                       # None, or the list the template receives
    content, calls = split_tool_calls(answer)      # calls: [{"id", "type", "function"}]
    stream = ToolCallStream()                      # the same, for an answer streamed in pieces
    content, calls = stream.feed(piece, final=False)

The model learns how to call from its template, so the call format is the template's. Read
here: Hermes-style `<tool_call>{"name": …, "arguments": {…}}</tool_call>` blocks, which the
templates of Qwen2.5, Qwen3, SmolLM3 and Hermes ask for (`"parameters"` is taken for
`"arguments"`, as Llama 3.1 writes them).
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from lmjax.errors import UserError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


def read_tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
  """The request's `tools`, checked (None without any, or with `tool_choice: "none"`)."""
  tools = body.get("tools")
  if tools is None or body.get("tool_choice") == "none":
    return None
  if not isinstance(tools, list) or not all(
      isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
      and isinstance(t["function"].get("name"), str) for t in tools):
    raise UserError('tools must be a list of {"type": "function", "function": {"name": …, '
                    '"parameters": {…}}} objects.')
  return tools


def split_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
  """(the text outside the calls, None if nothing is left; the calls, OpenAI's form) of an
  answer. A block whose JSON does not parse, or names no function, stays in the text."""
  calls, kept, end = [], [], 0
  for match in _CALL.finditer(text):
    try:
      call = json.loads(match.group(1))
    except json.JSONDecodeError:
      continue
    arguments = call.get("arguments", call.get("parameters", {}))
    if not isinstance(call.get("name"), str):
      continue
    calls.append({"id": f"call_{secrets.token_hex(12)}", "type": "function",
                  "function": {"name": call["name"], "arguments": arguments
                               if isinstance(arguments, str) else json.dumps(arguments)}})
    kept.append(text[end:match.start()])
    end = match.end()
  if not calls:
    return text, []
  content = ("".join(kept) + text[end:]).strip()
  return content or None, calls


class ToolCallStream:
  """An answer's pieces, as they are streamed, split into the text to send on and whole tool
  calls: text that may begin a `<tool_call>` block is held back until it does not, and a block
  until it closes (then it is a call, or text again if `split_tool_calls` finds none in it).
  A call is sent whole, its arguments in one piece, as OpenAI's API allows."""

  def __init__(self):
    self.pending = ""

  def feed(self, text: str, *, final: bool) -> tuple[str, list[dict[str, Any]]]:
    """(the text to send now, the calls completed) once `text` is added; `final`: the answer
    has ended, and what is held back is sent."""
    self.pending += text
    content, calls = [], []
    while True:
      start = self.pending.find(OPEN)
      end = self.pending.find(CLOSE, start) if start >= 0 else -1
      if end < 0:  # no whole block: send what cannot become part of one
        if final:
          cut = len(self.pending)
        elif start >= 0:  # a block begun: held until it closes
          cut = start
        else:
          cut = len(self.pending) - _open_prefix(self.pending)
        content.append(self.pending[:cut])
        self.pending = self.pending[cut:]
        return "".join(content), calls
      block = self.pending[start:end + len(CLOSE)]
      _, found = split_tool_calls(block)
      content.append(self.pending[:start] + (block if not found else ""))
      calls += found
      self.pending = self.pending[end + len(CLOSE):]


def _open_prefix(text: str) -> int:
  """The length of the longest end of `text` that begins OPEN (held back: it may become one)."""
  return next((n for n in range(min(len(OPEN) - 1, len(text)), 0, -1)
               if OPEN.startswith(text[-n:])), 0)


__all__ = ["CLOSE", "OPEN", "ToolCallStream", "read_tools", "split_tool_calls"]
