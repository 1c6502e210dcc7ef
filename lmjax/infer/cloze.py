"""A fill-mask prompt as token ids: text with "[MASK]" where words are missing.

    ids = cloze_ids(tokenizer, "An [MASK] is raised if the key is not found.")
    candidates = fill_mask(model, params, ids, mask_id=tokenizer.mask_id)

The whitespace before a mask belongs to the missing word, as Hugging Face's fill-mask pipeline
reads RoBERTa's and ModernBERT's mask token (an added token with `lstrip`): a byte-level BPE or
SentencePiece vocabulary spells a word with its leading space (" exception"), so encoding "An "
and the mask apart would put a lone space token before the mask, which the model never saw in
training and which makes it predict what follows a space in indented code. WordPiece
vocabularies ignore whitespace either way.
"""

from __future__ import annotations

from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError

MASK = "[MASK]"  # the spelling any model takes; the tokenizer's own (e.g. "<mask>") works too


def cloze_ids(tokenizer: Tokenizer, text: str) -> list[int]:
  """[start] + the ids of `text`, each mask as the mask id + [end]: [num_tokens].

  start/end are the tokenizer's classification tokens ([CLS] … [SEP]), else its begin and end
  of sequence, as a masked-LM's training rows are framed.
  """
  if tokenizer.mask_id is None:
    raise UserError("this model's tokenizer has no mask token, so it cannot fill masks.")
  mask_text = tokenizer.id_to_token(tokenizer.mask_id)
  pieces = text.replace(MASK, mask_text).split(mask_text)
  if len(pieces) < 2:
    raise UserError(f"--text has no mask token: write {MASK} (or {mask_text}) where a word is "
                    f"missing.")
  start = tokenizer.cls_id if tokenizer.cls_id is not None else tokenizer.bos_id
  ids = [] if start is None else [start]
  for i, piece in enumerate(pieces):
    if i:
      ids.append(tokenizer.mask_id)
    ids.extend(tokenizer.encode(piece if i == len(pieces) - 1 else piece.rstrip()))
  end = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id
  return ids if end is None else [*ids, end]
