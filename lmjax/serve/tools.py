"""Tools in chat requests: OpenAI's function specs checked and handed to the chat template, and
the calls a model writes read back as OpenAI's `tool_calls`.

    tools = read_tools(body)                       # None, or the list the template receives
    content, calls = split_tool_calls(answer)      # calls: [{"id", "type", "function"}]

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


__all__ = ["read_tools", "split_tool_calls"]
