"""Text embeddings: a model's final hidden states pooled over each text's tokens, unit length.

    embedder = Embedder(model, params, pooling=Pooling.MEAN, max_seq_len=512)
    vectors = embedder.embed([[101, 7592, 102], [101, 2088, 102]])   # [2, embed] float32

What sentence-transformers computes for its models (the Transformer module's last hidden
states, its Pooling module, its Normalize module), for any lmjax model, encoder or decoder:
`Pooling.MEAN` averages the hidden states of a text's tokens (special tokens included, as
sentence-transformers' attention mask does), `Pooling.LAST` takes its last token's (decoder
embedding models: e5-mistral, Qwen3-Embedding), `Pooling.CLS` its first token's (BERT's
[CLS]). A model directory that holds sentence-transformers' `1_Pooling/config.json` chooses
its own pooling (`pooling_of`). The vectors are L2-normalised, as OpenAI's embeddings are.

Texts are run in batches of up to `MAX_ROWS`, right-padded to a power-of-two length: one program
per (rows, length) bucket, compiled on first use.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import UserError
from lmjax.infer.adapters import select, with_adapter
from lmjax.infer.checks import check_ids
from lmjax.infer.slots import prefill_buckets
from lmjax.model import Head, Positions, Transformer

MAX_ROWS = 32  # texts run together


class Pooling(enum.Enum):
  MEAN = "mean"  # the average of every token's final hidden state
  LAST = "last"  # the last token's
  CLS = "cls"    # the first token's


# sentence-transformers' 1_Pooling/config.json flags, in the order it checks them.
_ST_POOLING = {"pooling_mode_cls_token": Pooling.CLS, "pooling_mode_mean_tokens": Pooling.MEAN,
               "pooling_mode_lasttoken": Pooling.LAST}


def pooling_of(directory: str | pathlib.Path | None) -> Pooling | None:
  """The pooling a sentence-transformers model directory asks for (None: it names none)."""
  path = pathlib.Path(directory or ".") / "1_Pooling" / "config.json"
  if directory is None or not path.is_file():
    return None
  try:
    flags = json.loads(path.read_text(encoding="utf-8"))
  except ValueError as e:
    raise UserError(f"{path} is not valid JSON ({e}).") from None
  chosen = [pooling for flag, pooling in _ST_POOLING.items() if flags.get(flag)]
  if len(chosen) != 1:
    modes = [flag for flag, on in flags.items() if flag.startswith("pooling_mode") and on]
    raise UserError(f"{path} asks for pooling {modes or 'none'}; lmjax pools one way: mean, "
                    f"last token or cls. Give --pooling to choose.")
  return chosen[0]


@dataclasses.dataclass(frozen=True)
class Embedder:
  """Embeds token ids with `model` (any head: its final hidden states are read) and `params`,
  optionally with LoRA adapters (`stacked`, lmjax.infer.adapters) picked per call."""

  model: Transformer
  params: Any
  pooling: Pooling
  max_seq_len: int
  stacked: Any = None

  def __post_init__(self):
    config = self.model.config
    if config.positions is Positions.LEARNED and self.max_seq_len > config.max_seq_len:
      object.__setattr__(self, "max_seq_len", config.max_seq_len)

  @property
  def dim(self) -> int:
    return self.model.config.embed_dim

  def check(self, ids: Sequence[int], what: str) -> None:
    """UserError for ids that cannot be embedded: none, outside the vocabulary, too many."""
    if not ids:
      raise UserError(f"{what} has no tokens: give some text.")
    check_ids(ids, vocab_size=self.model.config.vocab_size, what=what)
    if len(ids) > self.max_seq_len:
      raise UserError(f"{what} is {len(ids)} tokens, more than this server embeds at once "
                      f"({self.max_seq_len}): shorten it or split it.")

  def embed(self, texts: Sequence[Sequence[int]], *, adapter: int = 0) -> np.ndarray:
    """Unit vectors [len(texts), embed] float32 of the token ids `texts` (each checked)."""
    headless = Transformer(dataclasses.replace(self.model.config, head=Head.NONE),
                           self.model.dtype)
    buckets = prefill_buckets(self.max_seq_len)
    out = []
    for start in range(0, len(texts), MAX_ROWS):
      rows = texts[start:start + MAX_ROWS]
      length = next(b for b in buckets if b >= max(len(r) for r in rows))
      batch = next(b for b in prefill_buckets(MAX_ROWS, smallest=1) if b >= len(rows))
      ids = np.zeros((batch, length), np.int32)
      mask = np.zeros((batch, length), np.int32)
      for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
      vectors = _pooled(headless, self.params, self.stacked, ids, mask, jnp.int32(adapter),
                        pooling=self.pooling)
      out.append(np.asarray(vectors)[:len(rows)])
    return np.concatenate(out)


@functools.partial(jax.jit, static_argnames=("model", "pooling"))
def _pooled(model: Transformer, params, stacked, ids: jax.Array, mask: jax.Array,
            adapter: jax.Array, *, pooling: Pooling) -> jax.Array:
  """ids, mask [rows, length] (right-padded) -> unit vectors [rows, embed] float32."""
  hidden = model.apply({"params": with_adapter(params, select(stacked, adapter))}, ids, mask)
  hidden = hidden.astype(jnp.float32)                                   # [rows, length, embed]
  weights = mask.astype(jnp.float32)
  match pooling:
    case Pooling.MEAN:
      pooled = jnp.einsum("rle,rl->re", hidden, weights) / jnp.maximum(
          weights.sum(-1, keepdims=True), 1)
    case Pooling.LAST:
      last = jnp.maximum(mask.sum(-1) - 1, 0)                          # [rows]
      pooled = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    case Pooling.CLS:
      pooled = hidden[:, 0]
  norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
  return pooled / jnp.maximum(norm, 1e-12)


__all__ = ["Embedder", "MAX_ROWS", "Pooling", "pooling_of"]
