"""Log-likelihoods and perplexity of documents, with a sliding window for long ones.

    scores = score_texts(model, params, tokenizer, ["a document", ...], stride=512)
    summary = summarize(scores)   # loss, perplexity, bits_per_byte, tokens, bytes, documents

Each document is scored on its own, as lm-evaluation-harness does (HF's perplexity guide joins
them first): its tokens follow the tokenizer's BOS token (else its EOS token, as GPT-2 has;
else the first token is not predicted) and every token is predicted once. A document longer
than the context (`max_length`, default model.max_seq_len) is read in windows of `max_length`
tokens that advance by `stride` (default: `max_length`, disjoint windows): each window predicts
only its last `stride` tokens, so every prediction after the first window sees at least
`max_length - stride` tokens of context. A smaller stride gives a lower, truer perplexity at the
cost of more compute. (HF's perplexity guide moves its windows the same way but leaves each
window's first token unpredicted.) Bits per byte divides the total negative log-likelihood by ln 2 and the
documents' UTF-8 byte count, so it compares across tokenizers.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

from lmjax.data.config import DataConfig
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.files import read_json_lines
from lmjax.infer import continuation_log_likelihoods
from lmjax.model import Head, Transformer


@dataclasses.dataclass(frozen=True)
class DocumentScore:
  """A document's log-likelihood under the model, and what it is measured over."""

  log_likelihood: float  # natural log, summed over the predicted tokens
  tokens: int            # tokens predicted
  bytes: int             # UTF-8 bytes of the text

  def as_dict(self) -> dict[str, Any]:
    return {"log_likelihood": self.log_likelihood, "tokens": self.tokens, "bytes": self.bytes,
            **_rates(-self.log_likelihood, self.tokens, self.bytes)}


def _rates(nll: float, tokens: int, num_bytes: int) -> dict[str, float | None]:
  loss = nll / tokens if tokens else None
  return {"loss": loss, "perplexity": math.exp(loss) if loss is not None else None,
          "bits_per_byte": nll / (math.log(2) * num_bytes) if num_bytes else None}


def prefix_id(tokenizer: Tokenizer) -> int | None:
  """The token documents are scored after: BOS, else EOS, else None (lm-eval's choice)."""
  return tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id


def window_requests(tokens: Sequence[int], *, prefix: int | None, max_length: int, stride: int
                    ) -> list[tuple[list[int], list[int]]]:
  """(context, continuation) requests that predict every token of `tokens` once (the first too
  when a prefix is given), `stride` at a time, each with up to `max_length - stride` earlier
  tokens of context (more in the first window)."""
  sequence = ([prefix] if prefix is not None else []) + [int(t) for t in tokens]
  requests = []
  for begin in range(1, len(sequence), stride):
    end = min(begin + stride, len(sequence))
    requests.append((sequence[max(0, end - 1 - max_length):begin], sequence[begin:end]))
  return requests


def require_language_model(model: Transformer) -> None:
  cfg = model.config
  if not cfg.causal or cfg.head is not Head.CAUSAL_LM:
    raise UserError(
        f"perplexity and log-likelihoods need a causal language model, but this is a "
        f"{'bidirectional' if not cfg.causal else 'causal'} {cfg.head.value} model: evaluate a "
        f"masked-LM or classifier run on its held-out data with `lmjax eval CONFIG --run-dir "
        f"DIR`.")


def check_window(model: Transformer, *, max_length: int | None, stride: int | None
                 ) -> tuple[int, int]:
  """(max_length, stride), defaulted and checked, for a causal language model."""
  require_language_model(model)
  context = model.config.max_seq_len
  max_length = context if max_length is None else max_length
  if not 1 <= max_length <= context:
    raise UserError(f"--max-length {max_length} must be between 1 and the model's context "
                    f"model.max_seq_len={context}.")
  stride = max_length if stride is None else stride
  if not 1 <= stride <= max_length:
    raise UserError(f"--stride {stride} must be between 1 and the window length {max_length} "
                    f"(--max-length): each window predicts its last `stride` tokens.")
  return max_length, stride


# Windows scored at a time: memory holds this many requests (each at most max_length tokens)
# and their documents' totals, however long the documents are or however many.
_REQUESTS_PER_PASS = 4096


def score_texts(model: Transformer, params, tokenizer: Tokenizer, texts: Iterable[str], *,
                max_length: int | None = None, stride: int | None = None, batch_size: int = 16,
                progress=None) -> list[DocumentScore]:
  """The log-likelihood of each text (module docstring), in order. `texts` is read once, as an
  iterator: the windows are scored a few thousand at a time as the documents come."""
  max_length, stride = check_window(model, max_length=max_length, stride=stride)
  prefix = prefix_id(tokenizer)
  sums, counts, sizes = [], [], []
  requests, owners = [], []

  def score_pending() -> None:
    results = continuation_log_likelihoods(model, params, requests, max_length=max_length,
                                           batch_size=batch_size, progress=progress)
    for n, request, (log_p, _) in zip(owners, requests, results):
      sums[n] += log_p
      counts[n] += len(request[1])
    requests.clear()
    owners.clear()

  for n, text in enumerate(texts):
    if not isinstance(text, str):
      raise UserError(f"document {n} is a {type(text).__name__}, not text.")
    sums.append(0.0)
    counts.append(0)
    sizes.append(len(text.encode("utf-8")))
    pieces = window_requests(tokenizer.encode(text), prefix=prefix, max_length=max_length,
                             stride=stride)
    requests += pieces
    owners += [n] * len(pieces)
    if len(requests) >= _REQUESTS_PER_PASS:
      score_pending()
  if requests:
    score_pending()
  return [DocumentScore(sums[n], counts[n], sizes[n]) for n in range(len(sizes))]


def summarize(scores: Sequence[DocumentScore]) -> dict[str, Any]:
  """Totals over documents: loss (mean negative log-likelihood per predicted token, nats),
  perplexity, bits per byte, tokens, bytes and documents."""
  tokens = sum(s.tokens for s in scores)
  num_bytes = sum(s.bytes for s in scores)
  nll = -sum(s.log_likelihood for s in scores)
  return {**_rates(nll, tokens, num_bytes), "tokens": tokens, "bytes": num_bytes,
          "documents": len(scores)}


def read_records(path: str, *, field: str = "text") -> list[dict[str, Any]]:
  """The JSON objects of a JSON Lines file (blank lines skipped), each with a string `field`;
  a UserError names the line of the first that is not."""
  return read_json_lines(path, field, noun="records", hint=(
      f"write one JSON object per line with a string {field!r} field (--field names another)"))


_SOURCES_BY_SUFFIX = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "csv",
                      ".tab": "csv", ".parquet": "parquet"}


def documents_config(data: DataConfig, paths: Sequence[str], *, source: str | None = None,
                     field: str | None = None) -> DataConfig:
  """`data` with the documents `--data PATH ...` names: their source is `source`, else guessed
  from their suffix (.jsonl, .csv/.tsv, .parquet; anything else is plain text)."""
  if paths and source is None:
    kinds = {_SOURCES_BY_SUFFIX.get(pathlib.PurePath(p).suffix.lower(), "text") for p in paths}
    if len(kinds) > 1:
      raise UserError(f"--data {' '.join(paths)} mixes kinds of file ({', '.join(sorted(kinds))})"
                      f": score one kind at a time, or name it with --data-source.")
    source = kinds.pop()
  if source == "prepared":
    raise UserError("--data-source prepared holds packed token rows, not documents: point --data "
                    "at the text it was prepared from.")
  changes: dict[str, Any] = {}
  if paths:
    changes.update(paths=tuple(paths), mixture=())
  if source is not None:
    changes["source"] = source
  if field is not None:
    changes["field"] = field
  return dataclasses.replace(data, **changes)
