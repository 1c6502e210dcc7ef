"""GPT-2's byte-level alphabet: every byte a printable character, so any text encodes."""

from __future__ import annotations

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

LMJAX_SPECIALS = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "mask": "<mask>", "unk": "<unk>"}


def byte_level_pipeline(model: models.Model, *, use_regex: bool) -> tokenizers.Tokenizer:
  """An HF tokenizer that maps text to ByteLevel characters before `model`, and back."""
  hf = tokenizers.Tokenizer(model)
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
  hf.decoder = decoders.ByteLevel()
  hf.add_special_tokens(list(LMJAX_SPECIALS.values()))
  return hf


def byte_to_unicode() -> list[str]:
  """GPT-2's printable stand-in character for each byte 0..255 (the ByteLevel alphabet)."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  chars, extra = {}, 0
  for byte in range(256):
    if byte in printable:
      chars[byte] = chr(byte)
    else:  # control bytes, space and a few others map to code points from 256 upward
      chars[byte] = chr(256 + extra)
      extra += 1
  return [chars[b] for b in range(256)]
