"""/v1/embeddings: OpenAI's embeddings request read into token ids, the vectors written back.

    ids, adapter, encoding = embedding_request(body, served)   # ApiError for a bad body
    response = embedding_response(vectors, ids, model=…, encoding=…)

`input` is a string, a list of strings, a list of token ids or a list of such lists (up to
MAX_INPUTS); each text is encoded with the model's tokenizer and its own special tokens, as
sentence-transformers encodes. `encoding_format` "float" gives lists of numbers, "base64" the
little-endian float32 bytes (what the `openai` client asks for by default and decodes);
`dimensions`, for models trained to be cut (Matryoshka), is accepted only as the model's own
width. The vectors come from lmjax.infer.embed.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Sequence

import numpy as np

from lmjax.errors import UserError
from lmjax.serve.protocol import ApiError, Served, is_token_ids

MAX_INPUTS = 2048  # as OpenAI's API


def embedding_request(body: dict[str, Any], served: Served
                      ) -> tuple[list[list[int]], int, str]:
  """(token ids of each input, the adapter, the encoding format) of an embeddings request."""
  adapter = served.adapter(body)
  embedder = served.embedder
  given = body.get("input")
  if isinstance(given, str) or is_token_ids(given):
    inputs = [given]
  elif isinstance(given, list) and given and all(isinstance(i, str) for i in given) or \
      isinstance(given, list) and given and all(is_token_ids(i) for i in given):
    inputs = given
  else:
    raise ApiError(400, "input must be a string, a list of strings, a list of token ids or a "
                        f"list of such lists, got {json.dumps(given)[:80]}.", param="input")
  if len(inputs) > MAX_INPUTS:
    raise ApiError(400, f"input holds {len(inputs)} items, more than {MAX_INPUTS}: send them in "
                        f"several requests.", param="input")
  encoding = body.get("encoding_format") or "float"
  if encoding not in ("float", "base64"):
    raise ApiError(400, f'encoding_format must be "float" or "base64", got {json.dumps(encoding)}.',
                   param="encoding_format")
  dimensions = body.get("dimensions")
  if dimensions is not None and dimensions != embedder.dim:
    raise ApiError(400, f"dimensions must be this model's own, {embedder.dim}, or left out: it "
                        f"cannot shorten its embeddings, got {json.dumps(dimensions)}.",
                   param="dimensions")
  tokenizer = served.loaded.tokenizer
  ids = [tokenizer.encode(i, add_special_tokens=True) if isinstance(i, str) else list(i)
         for i in inputs]
  for n, row in enumerate(ids):
    try:
      embedder.check(row, f"input[{n}]" if len(ids) > 1 else "input")
    except UserError as e:
      code = "context_length_exceeded" if len(row) > embedder.max_seq_len else None
      raise ApiError(400, str(e), param="input", code=code) from None
  return ids, adapter, encoding


def embedding_response(vectors: np.ndarray, ids: Sequence[Sequence[int]], *, model: str,
                       encoding: str) -> dict[str, Any]:
  """OpenAI's embeddings list of `vectors` [inputs, dim] (float32)."""
  tokens = sum(len(i) for i in ids)
  if encoding == "base64":
    encode = lambda v: base64.b64encode(np.asarray(v, "<f4").tobytes()).decode("ascii")
  else:
    encode = lambda v: [float(x) for x in v]
  return {"object": "list", "model": model,
          "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                   for i, v in enumerate(vectors)],
          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


__all__ = ["MAX_INPUTS", "embedding_request", "embedding_response"]
