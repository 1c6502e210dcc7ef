"""Which tokenizer a run uses, and whether it fits the model and the objective."""

from __future__ import annotations

from collections.abc import Iterable

from lmjax.data.spec import BatchSpec, Objective
from lmjax.data.tokenizer import Tokenizer
from lmjax.errors import UserError


def build_tokenizer(choice: str | None, documents: Iterable[str], *, vocab_size: int
                    ) -> Tokenizer:
  """The tokenizer `choice` names: byte, bpe (trained on `documents`; also for None) or a path
  (a tokenizer.json, a sentencepiece .model or a tokenizer directory)."""
  if choice is None or choice == "bpe":
    return Tokenizer.train_bpe(documents, vocab_size=vocab_size)
  if choice == "byte":
    return Tokenizer.byte_level()
  return Tokenizer.from_file(choice)


def check_tokenizer(spec: BatchSpec, tokenizer: Tokenizer) -> None:
  """UserError when the tokenizer has more tokens than the model or lacks one the objective
  needs."""
  if tokenizer.vocab_size > spec.vocab_size:
    raise UserError(
        f"the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is "
        f"{spec.vocab_size}: raise model.vocab_size to at least {tokenizer.vocab_size} "
        f"(a multiple of 128 is fastest), or use a smaller tokenizer.")
  if spec.objective is Objective.MASKED_LM and tokenizer.mask_id is None:
    raise UserError("masked-LM training needs a mask token, and the tokenizer has none: use "
                    "data.tokenizer=bpe or byte, or a tokenizer with [MASK]/<mask>.")
