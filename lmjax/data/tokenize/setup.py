"""Which tokenizer a run uses, and whether it fits the model and the objective."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sized

from lmjax.data.spec import BatchSpec, Objective
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError

log = logging.getLogger(__name__)


def build_tokenizer(choice: str | None, documents: Iterable[str], *, vocab_size: int
                    ) -> Tokenizer:
  """The tokenizer `choice` names: byte, bpe (trained on `documents`; also for None) or a path
  (a tokenizer.json, a sentencepiece .model or a tokenizer directory)."""
  if choice is None or choice == "bpe":
    # Said before it starts: on a large corpus it is the slow part of starting a run.
    on = f"{len(documents)} documents" if isinstance(documents, Sized) else "the corpus"
    log.info("training a BPE tokenizer of up to %d tokens on %s", vocab_size, on)
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
