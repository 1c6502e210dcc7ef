"""Which token of a vocabulary plays which role (padding, end of sequence, mask, …).

A tokenizer file does not say: the roles come from a Hugging Face `tokenizer_config.json` /
`special_tokens_map.json` beside it, else from common spellings such as "</s>" or "[MASK]".
"""

from __future__ import annotations

import os
from collections.abc import Callable

from lmjax.files import read_json_object

CONFIG_FILE = "tokenizer_config.json"
ROLES = ("pad", "eos", "bos", "mask", "cls", "sep", "unk")

# Spellings recognised for each role when a tokenizer comes with no config naming its roles.
_COMMON_SPELLINGS = {
    "pad": ("<pad>", "[PAD]", "<|pad|>"),
    "eos": ("<eos>", "</s>", "<|endoftext|>", "<|end_of_text|>"),
    "bos": ("<bos>", "<s>", "<|begin_of_text|>"),
    "mask": ("<mask>", "[MASK]"),
    "cls": ("[CLS]",),
    "sep": ("[SEP]",),
    "unk": ("<unk>", "[UNK]"),
}


def roles_from_hf_configs(directory: str, has_token: Callable[[str], bool]
                          ) -> dict[str, str] | None:
  """Roles named in tokenizer_config.json / special_tokens_map.json; None if neither exists.

  `has_token(token)` says whether the vocabulary holds a token; roles naming one it lacks are
  left out.
  """
  found = False
  roles: dict[str, str] = {}
  for name in (CONFIG_FILE, "special_tokens_map.json"):
    config = read_json_object(os.path.join(directory, name))
    if config is None:
      continue
    found = True
    for role in ROLES:
      token = config.get(f"{role}_token")
      if isinstance(token, dict):  # transformers' serialised AddedToken
        token = token.get("content")
      if isinstance(token, str) and role not in roles and has_token(token):
        roles[role] = token
  return roles if found else None


def roles_from_spellings(has_token: Callable[[str], bool]) -> dict[str, str]:
  """Roles guessed from the first common spelling of each that the vocabulary holds."""
  roles = {}
  for role, spellings in _COMMON_SPELLINGS.items():
    for token in spellings:
      if has_token(token):
        roles[role] = token
        break
  return roles
