"""GRPO prompts: JSON Lines rows with a `prompt` -> its token ids, the row kept for the rewards.

A prompt is plain text, tokenized as it is, or a list of chat messages, rendered through the
chat template with the generation prompt added (the assistant's header), as trl does for
conversational prompts. The row's other fields (an `answer`, test cases, …) go to the reward
functions with it. A prompt that leaves fewer than `max_new_tokens` positions of
`train.seq_len` for its completion, or a row without a usable prompt, is an error naming it (or,
under `data.bad_records: skip`, left out and counted).
"""

from __future__ import annotations

import dataclasses
import logging

from lmjax.data.config import DataConfig
from lmjax.data.examples.sft import bad_row, chat_template
from lmjax.data.sources.documents import ReadStats
from lmjax.data.tokenize.chat import ChatTemplate, render_prompt
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError

log = logging.getLogger(__name__)

FIELDS = "{prompt} (other fields go to the rewards)"


@dataclasses.dataclass(frozen=True)
class Prompts:
  """The usable prompts in file order: token ids, the rows they came from and where."""

  ids: list[list[int]]
  rows: list[dict]
  wheres: list[str]

  def __len__(self) -> int:
    return len(self.ids)


def encode_prompt(row: dict, tokenizer: Tokenizer, template: ChatTemplate, *, where: str
                  ) -> list[int]:
  """The ids a completion continues; UserError naming `where` for a row without a prompt."""
  prompt = row.get("prompt")
  if isinstance(prompt, list):
    if not prompt or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                             for m in prompt):
      raise UserError(f"{where}: a chat prompt must be a non-empty list of "
                      f"{{role, content}} messages")
    ids = tokenizer.encode(render_prompt(prompt, template), parse_special_tokens=True)
  elif isinstance(prompt, str):
    ids = tokenizer.encode(prompt)
  else:
    raise UserError(f"{where}: a GRPO row needs a prompt, a string or a list of chat messages "
                    f"(it has {sorted(row)})")
  if not ids:
    raise UserError(f"{where}: the prompt tokenizes to no tokens")
  return ids


def load_prompts(data: DataConfig, rows: list[tuple[dict, str]], stats: ReadStats,
                 tokenizer: Tokenizer, *, seq_len: int, max_new_tokens: int,
                 template_source: str | None) -> Prompts:
  """The usable prompts of `rows` (`read_sft_examples`); what is skipped is counted in
  `stats`."""
  template = chat_template(template_source, tokenizer)
  longest = seq_len - max_new_tokens
  kept = Prompts([], [], [])
  for row, where in rows:
    try:
      ids = encode_prompt(row, tokenizer, template, where=where)
    except UserError as e:
      bad_row(str(e).rstrip("."), data, stats)
      continue
    if len(ids) > longest:
      bad_row(f"{where}: the prompt is {len(ids)} tokens, which leaves fewer than "
              f"train.grpo.max_new_tokens={max_new_tokens} of train.seq_len={seq_len} for its "
              f"completion: raise train.seq_len (up to model.max_seq_len), lower "
              f"train.grpo.max_new_tokens or shorten the prompt", data, stats)
      continue
    kept.ids.append(ids)
    kept.rows.append(row)
    kept.wheres.append(where)
  if not kept.ids:
    raise UserError(f"data.paths {list(data.paths)} hold no usable prompt of {FIELDS}.")
  log.info("kept %d prompts (the longest %d tokens) for %d-token completions", len(kept),
           max(map(len, kept.ids)), max_new_tokens)
  return kept
