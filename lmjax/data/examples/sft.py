"""Instruction-tuning rows: JSON Lines examples -> tokens with a loss mask, packed whole.

Each line is a `{prompt, completion}` pair or a `{messages}` chat (lmjax.data.tokenize.chat). Its
segments are tokenized one by one (template text with special-token spellings as the special
tokens, as `apply_chat_template` does) and joined, then the tokenizer's eos is appended; the
`loss_mask` marks the tokens the model learns to produce (completion or assistant text, and the
closing eos), so the loss covers nothing of the prompt.

Examples are packed whole, in order, several to a row: each gets its own segment id, so the
attention mask keeps them from seeing one another and positions restart at 0; an example that
does not fit in what is left of a row starts the next one, and one longer than
`train.seq_len` is cut at its end (counted and reported). The last `data.eval_fraction` of
the examples (at least one) are held out.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from lmjax.data.config import BadRecords, DataConfig, Source
from lmjax.data.rows import MemoryRows
from lmjax.data.sources.documents import ReadStats, find_units
from lmjax.data.sources.file_readers import read_text
from lmjax.data.tokenize.chat import ChatTemplate, load_template, segments
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError

log = logging.getLogger(__name__)

Example = tuple[list[int], list[int]]  # token ids, loss mask (1: trained)


def read_sft_examples(data: DataConfig, stats: ReadStats, *, objective: str = "sft",
                      fields: str = "{prompt, completion} or {messages}"
                      ) -> list[tuple[dict, str]]:
  """(row, "file:line") of every instruction example in `data.paths` (JSON Lines)."""
  if data.source != Source.JSONL.value or data.mixture:
    raise UserError(f"train.objective={objective} reads JSON Lines rows of {fields}: set "
                    f"data.source=jsonl (got {data.source!r}) and data.paths.")
  rows = []
  for unit in find_units(source=data.source, paths=data.paths):
    text = read_text(unit.name, errors=data.encoding_errors)
    for number, line in enumerate(text.split("\n"), 1):
      if not line.strip():
        continue
      where = f"{unit.name}:{number}"
      try:
        row = json.loads(line)
      except ValueError as e:
        bad_row(f"{where}: not JSON ({e})", data, stats)
        continue
      if not isinstance(row, dict):
        bad_row(f"{where}: a row must be a JSON object", data, stats)
        continue
      rows.append((row, where))
  return rows


def bad_row(problem: str, data: DataConfig, stats: ReadStats) -> None:
  if data.bad_records is not BadRecords.SKIP:
    raise UserError(f"{problem}. Fix that row, or set `data.bad_records: skip` to leave such "
                    f"rows out.")
  stats.skip(problem)


def tokenize_examples(rows: list[tuple[dict, str]], tokenizer: Tokenizer, template: ChatTemplate,
                      data: DataConfig, stats: ReadStats) -> list[Example]:
  """Each row's tokens and loss mask; a bad row is an error naming it (or, under skip, left
  out and counted)."""
  examples = []
  for row, where in rows:
    try:
      examples.append(encode_example(row, tokenizer, template, where=where))
    except UserError as e:
      bad_row(str(e).rstrip("."), data, stats)
  return examples


def encode_example(row: dict, tokenizer: Tokenizer, template: ChatTemplate, *, where: str
                   ) -> Example:
  """One instruction row's tokens and loss mask (the tokenizer's eos closes it, trained);
  UserError naming `where` for a row that is neither form or whose answer has no tokens."""
  ids, mask = [], []
  for text, trained in segments(row, template, where=where):
    tokens = tokenizer.encode(text, parse_special_tokens="messages" in row)
    ids += tokens
    mask += [int(trained)] * len(tokens)
  if tokenizer.eos_id is not None:
    ids.append(tokenizer.eos_id)
    mask.append(mask[-1] if mask else 1)
  if not any(mask):
    raise UserError(f"{where}: its answer tokenizes to no tokens")
  return ids, mask


def pack_examples(examples: list[Example], seq_len: int) -> tuple[dict[str, np.ndarray], int]:
  """Rows {input_ids, segment_ids, positions, loss_mask} [num_rows, seq_len] holding whole
  examples in order, and how many examples were cut to `seq_len`."""
  rows, row, used, truncated = [], [], 0, 0
  for ids, mask in examples:
    if len(ids) > seq_len:
      ids, mask, truncated = ids[:seq_len], mask[:seq_len], truncated + 1
    if used + len(ids) > seq_len:
      rows.append(row)
      row, used = [], 0
    row.append((ids, mask))
    used += len(ids)
  if row:
    rows.append(row)
  return segment_rows(rows, seq_len), truncated


def segment_rows(rows: list[list[Example]], seq_len: int) -> dict[str, np.ndarray]:
  """Rows {input_ids, segment_ids, positions, loss_mask} [len(rows), seq_len]: row r holds the
  examples of rows[r] one after the other as segments 1, 2, …, each with positions from 0,
  then padding (segment 0)."""
  out = {name: np.zeros((len(rows), seq_len), np.int32)
         for name in ("input_ids", "segment_ids", "positions", "loss_mask")}
  for r, examples_in_row in enumerate(rows):
    at = 0
    for k, (ids, mask) in enumerate(examples_in_row, 1):
      span = slice(at, at + len(ids))
      out["input_ids"][r, span], out["loss_mask"][r, span] = ids, mask
      out["segment_ids"][r, span], out["positions"][r, span] = k, np.arange(len(ids))
      at += len(ids)
  return out


def chat_template(source: str | None, tokenizer: Tokenizer) -> ChatTemplate:
  """The template `source` names (lmjax.data.tokenize.chat.load_template), with `tokenizer`'s bos
  and eos spellings for the templates that use them."""
  return ChatTemplate(load_template(source), bos_token=_token(tokenizer, tokenizer.bos_id),
                      eos_token=_token(tokenizer, tokenizer.eos_id))


def load_sft(data: DataConfig, rows: list[tuple[dict, str]], stats: ReadStats,
             tokenizer: Tokenizer, *, seq_len: int, template_source: str | None
             ) -> tuple[MemoryRows, MemoryRows, int]:
  """(train rows, held-out rows, examples cut) of instruction `rows` (`read_sft_examples`);
  what is skipped is counted in `stats`."""
  examples = tokenize_examples(rows, tokenizer, chat_template(template_source, tokenizer), data,
                               stats)
  if len(examples) < 2:
    raise UserError(f"data.paths {list(data.paths)} hold {len(examples)} usable instruction "
                    f"example(s); training and evaluation need at least 2.")
  num_eval = min(max(1, round(len(examples) * data.eval_fraction)), len(examples) - 1)
  train, truncated = pack_examples(examples[:-num_eval], seq_len)
  held_out, cut = pack_examples(examples[-num_eval:], seq_len)
  for packed, part, which in ((train, examples[:-num_eval], "training"),
                              (held_out, examples[-num_eval:], "held-out")):
    if not packed["loss_mask"].any():  # the loss would be 0.0 on nothing
      shortest = min(mask.index(1) for _, mask in part)
      raise UserError(
          f"train.seq_len={seq_len} cuts away the answer of every {which} instruction example "
          f"(the shortest prompt is {shortest} tokens), so there would be nothing to learn or "
          f"evaluate: raise train.seq_len (up to model.max_seq_len) or shorten the prompts.")
  log.info("kept %d instruction examples (%d trained tokens of %d), packed into %d + %d rows of "
           "%d tokens", len(examples), sum(sum(m) for _, m in examples),
           sum(len(i) for i, _ in examples), len(train["input_ids"]), len(held_out["input_ids"]),
           seq_len)
  as_rows = lambda arrays: MemoryRows(arrays, np.zeros(len(arrays["input_ids"]), np.int32))
  return as_rows(train), as_rows(held_out), truncated + cut


def _token(tokenizer: Tokenizer, token_id: int | None) -> str:
  return "" if token_id is None else (tokenizer.id_to_token(token_id) or "")
