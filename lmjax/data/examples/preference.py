"""Preference pairs: JSON Lines `{prompt, chosen, rejected}` -> one row per pair, both answers.

A row is plain text (`prompt`, `chosen` and `rejected` strings) or, as trl reads them, chat
messages: `prompt` a list of messages and `chosen`/`rejected` the assistant message(s) that
follow it (or, without a prompt, two whole chats). Each side is tokenized as an instruction
example (lmjax.data.examples.sft: the chat template, the closing eos, a loss mask on the answer
only). A row holds prompt + chosen as segment 1 and prompt + rejected as segment 2: the
attention mask keeps them apart and positions restart, so one forward pass scores both answers
and the step's batch of rows is a batch of pairs. A pair longer than `train.seq_len` is cut at
the ends of its sides (the longer side first) and counted; a row missing a field, with
identical answers, or whose prompt leaves no room for an answer is an error naming it (or,
under `data.bad_records: skip`, left out and counted).
"""

from __future__ import annotations

import logging

import numpy as np

from lmjax.data.config import DataConfig
from lmjax.data.examples.sft import (Example, bad_row, chat_template, encode_example,
                                     segment_rows)
from lmjax.data.rows import MemoryRows
from lmjax.data.sources.documents import ReadStats
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError

log = logging.getLogger(__name__)

FIELDS = "{prompt, chosen, rejected}"
Pair = tuple[Example, Example]  # chosen, rejected


def as_instructions(row: dict, where: str) -> tuple[dict, dict]:
  """The pair as two instruction rows (prompt + chosen, prompt + rejected); UserError naming
  `where` for a row that is not a preference pair or prefers nothing."""
  missing = [k for k in ("chosen", "rejected") if k not in row]
  if missing:
    raise UserError(f"{where}: a preference row needs the fields {FIELDS} (prompt optional "
                    f"for whole chats); it lacks {', '.join(missing)} (it has {sorted(row)})")
  prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
  if chosen == rejected:
    raise UserError(f"{where}: chosen and rejected are identical: the pair prefers nothing")
  if isinstance(chosen, list) and isinstance(rejected, list):
    if prompt is not None and not isinstance(prompt, list):
      raise UserError(f"{where}: with chosen and rejected as chat messages, prompt must be a "
                      f"list of messages too (got {type(prompt).__name__})")
    return {"messages": (prompt or []) + chosen}, {"messages": (prompt or []) + rejected}
  if not all(isinstance(v, str) for v in (prompt, chosen, rejected)):
    raise UserError(f"{where}: prompt, chosen and rejected must be three strings, or lists of "
                    f"chat messages (prompt optional)")
  return ({"prompt": prompt, "completion": chosen}, {"prompt": prompt, "completion": rejected})


def encode_pairs(rows: list[tuple[dict, str]], tokenizer: Tokenizer, data: DataConfig,
                 stats: ReadStats, *, template_source: str | None
                 ) -> tuple[list[Pair], list[str]]:
  """Each usable row's (chosen, rejected) tokens and loss masks, and where it is; a bad row is
  an error naming it (or, under skip, left out and counted)."""
  template = chat_template(template_source, tokenizer)
  pairs, wheres = [], []
  for row, where in rows:
    try:
      chosen, rejected = as_instructions(row, where)
      pair = (encode_example(chosen, tokenizer, template, where=f"{where} (chosen)"),
              encode_example(rejected, tokenizer, template, where=f"{where} (rejected)"))
    except UserError as e:
      bad_row(str(e).rstrip("."), data, stats)
      continue
    if pair[0][0] == pair[1][0]:
      bad_row(f"{where}: chosen and rejected tokenize the same: the pair prefers nothing", data,
              stats)
      continue
    pairs.append(pair)
    wheres.append(where)
  return pairs, wheres


def _fit(pair: Pair, seq_len: int) -> Pair:
  """The pair cut to `seq_len` tokens in all: the longer side loses its end first."""
  (c, cm), (r, rm) = pair
  n_c, n_r = len(c), len(r)
  while n_c + n_r > seq_len:
    if n_c >= n_r:
      n_c = max(seq_len - n_r, seq_len // 2)
    else:
      n_r = max(seq_len - n_c, seq_len // 2)
  return (c[:n_c], cm[:n_c]), (r[:n_r], rm[:n_r])


def pack_pairs(pairs: list[Pair], seq_len: int) -> tuple[dict[str, np.ndarray], int, list[int]]:
  """Rows {input_ids, segment_ids, positions, loss_mask} [num_pairs, seq_len], the number of
  pairs cut, and the indices of pairs a cut left without an answer token on a side (not
  packed)."""
  kept, truncated, empty = [], 0, []
  for i, pair in enumerate(pairs):
    fitted = _fit(pair, seq_len)
    if fitted != pair:
      truncated += 1
      if not (any(fitted[0][1]) and any(fitted[1][1])):
        empty.append(i)
        continue
    kept.append(fitted)
  return segment_rows(kept, seq_len), truncated, empty


def load_pairs(data: DataConfig, rows: list[tuple[dict, str]], stats: ReadStats,
               tokenizer: Tokenizer, *, seq_len: int, template_source: str | None
               ) -> tuple[MemoryRows, MemoryRows, int]:
  """(train rows, held-out rows, pairs cut) of preference `rows` (read as instruction rows,
  `read_sft_examples`); the last `data.eval_fraction` of the pairs (at least one) are held out."""
  pairs, wheres = encode_pairs(rows, tokenizer, data, stats, template_source=template_source)
  arrays, truncated, empty = pack_pairs(pairs, seq_len)
  for i in empty:
    bad_row(f"{wheres[i]}: the prompt leaves no answer token on a side within "
            f"train.seq_len={seq_len}: raise train.seq_len or shorten the prompt", data, stats)
  num_pairs = len(arrays["input_ids"])
  if num_pairs < 2:
    raise UserError(f"data.paths {list(data.paths)} hold {num_pairs} usable preference pair(s) "
                    f"of {FIELDS}; training and evaluation need at least 2.")
  num_eval = min(max(1, round(num_pairs * data.eval_fraction)), num_pairs - 1)
  log.info("kept %d preference pairs (%d cut to train.seq_len=%d): %d to train on, %d held out",
           num_pairs, truncated, seq_len, num_pairs - num_eval, num_eval)
  part = lambda a, b: MemoryRows({k: v[a:b] for k, v in arrays.items()},
                                 np.zeros(b - a, np.int32))
  return part(0, num_pairs - num_eval), part(num_pairs - num_eval, num_pairs), truncated
