"""A GGUF file's tokenizer -> a Hugging Face fast tokenizer directory (tokenizer.json and
tokenizer_config.json, with the chat template in it).

A GGUF stores the vocabulary, merges or scores, token types, special token ids and the chat
template as `tokenizer.*` metadata. transformers' own converter rebuilds the tokenizer those
describe (`transformers.integrations.gguf.convert_gguf_tokenizer`, which `AutoTokenizer` uses
for a `gguf_file`): lmjax calls it on the metadata it read, so the tokenizer is the one
transformers makes of the same file, id for id, without transformers reading the file again
(its reader imports torch). `save_pretrained` then writes it with its special tokens and BOS
template; the chat template goes into tokenizer_config.json, where lmjax and transformers both
read it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from lmjax.errors import UserError
from lmjax.hf.gguf.reader import INSTALL, GgufFile, gguf_library

log = logging.getLogger(__name__)

# tokenizer_config.json's special tokens -> the `tokenizer.ggml.<key>` holding each one's id
_SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                   "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}


def _transformers():
  """(transformers' GGUF key names, its converter, its fast tokenizer class)."""
  try:  # optional dependencies: only a GGUF import builds a tokenizer this way
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415
    from transformers.integrations.gguf import (GGUF_TOKENIZER_MAPPING,  # noqa: PLC0415
                                                convert_gguf_tokenizer)
  except ImportError:
    raise UserError(f"rebuilding a GGUF file's tokenizer needs transformers 5.24 or newer (its "
                    f"GGUF tokenizer converter): {INSTALL}.") from None
  return GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer, PreTrainedTokenizerFast


def tokenizer_fields(file: GgufFile) -> tuple[dict[str, Any], dict[str, Any]]:
  """(the tokenizer's fields, tokenizer_config.json's) as transformers names them, read from
  `file`'s metadata as transformers reads them."""
  mapping = _transformers()[0]
  grouped = [{name: file.metadata[f"tokenizer.{key}"] for key, name in mapping[group].items()
              if f"tokenizer.{key}" in file.metadata}
             for group in ("tokenizer", "tokenizer_config")]
  fields, config = grouped
  # A sentencepiece vocabulary that does not say otherwise gets a BOS, as llama.cpp adds one.
  if fields.get("tokenizer_type") == gguf_library().SentencePieceVocab.tokenizer_model:
    config.setdefault("add_bos_token", True)
  for name, key in _SPECIAL_TOKENS.items():
    token_id = file.metadata.get(f"tokenizer.ggml.{key}")
    config[name] = fields["tokens"][token_id] if token_id is not None else None
  return fields, config


def write_tokenizer(file: GgufFile, directory: str | os.PathLike) -> None:
  """Writes the tokenizer of `file` into `directory` as a Hugging Face fast tokenizer; nothing
  when the file has none (then the model comes without one, as an HF directory may)."""
  if "tokenizer.ggml.tokens" not in file.metadata:
    log.warning("%s has no tokenizer (no tokenizer.ggml.tokens): imported without one", file.path)
    return
  fields, config = tokenizer_fields(file)
  _, convert, fast_tokenizer = _transformers()
  try:
    backend, extra = convert(file.arch, fields)
  except (ValueError, KeyError) as e:
    raise UserError(f"{file.path}: transformers cannot rebuild its tokenizer "
                    f"(tokenizer.ggml.model={fields.get('tokenizer_type')!r}): {e}") from None
  tokenizer = fast_tokenizer(tokenizer_object=backend, **config, **extra)
  tokenizer.save_pretrained(os.fspath(directory), save_jinja_files=False)


__all__ = ["tokenizer_fields", "write_tokenizer"]
