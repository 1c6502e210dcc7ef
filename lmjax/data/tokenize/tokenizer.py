"""Tokenizers: text <-> token ids, with the ids of the special tokens by role.

`Tokenizer` wraps a Hugging Face `tokenizers.Tokenizer`, whatever its origin; its subclass
`SentencePieceTokenizer` (sentencepiece_model.py) wraps a sentencepiece `.model` as it is.
`Tokenizer.from_file` / `load` pick the backend from what a path holds: a `tokenizer.json`
(preferred where both exist), else a sentencepiece model. Other backends live in modules of
their own that register with `Tokenizer.register_backend` (lmjax.data imports them all), so
this module never imports them.

A `Tokenizer` is saved as a standard `tokenizer.json` (a sentencepiece one as its `.model`), so
a run's `RUN_DIR/tokenizer/` loads with the `tokenizers` library (and transformers) unchanged.
What the file does not say is which token plays which role (padding, end of sequence, mask, …):
the roles come from a Hugging Face `tokenizer_config.json` / `special_tokens_map.json` (which
`save` writes too), else from common spellings such as "</s>" or "[MASK]".

The tokenizers made here have the specials "<pad>" (id 0), "<eos>", "<bos>", "<mask>" and
"<unk>" at ids 0-4, then a byte-level vocabulary, so every string encodes without unknowns.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import tokenizers
from tokenizers import models, pre_tokenizers, processors, trainers

from lmjax.data.tokenize import pieces
from lmjax.data.tokenize.byte_level import LMJAX_SPECIALS, byte_level_pipeline, byte_to_unicode
from lmjax.data.tokenize.special_tokens import (CONFIG_FILE, ROLES, roles_from_hf_configs,
                                                roles_from_spellings)
from lmjax.data.tokenize.truncation import fit_longest_first
from lmjax.errors import UserError
from lmjax.storage import is_remote, local_copy, local_output

TOKENIZER_FILE = "tokenizer.json"


class Tokenizer:
  """Text <-> token ids, with the ids of the special tokens by role.

  Role ids (`eos_id`, `bos_id`, `mask_id`, `cls_id`, `sep_id`, `unk_id`) are None where the
  tokenizer has no such token. `pad_id` is never None: without a pad token it falls back to
  `eos_id`, then to 0 — padding positions are masked out by segment id 0 anyway, so any valid id
  will do there.

  This class is the Hugging Face `tokenizers` backend; `SentencePieceTokenizer` is the same
  interface over a sentencepiece model. Make either with `from_file` / `load`.
  """

  # Subclasses that read other files: each says which file of a path it reads (`file_in`), and
  # is tried before tokenizer.json; `from_dict` finds them by `backend_name`.
  _backends: list[type[Tokenizer]] = []
  backend_name = "tokenizers"

  @classmethod
  def register_backend(cls, backend: type[Tokenizer]) -> type[Tokenizer]:
    """Class decorator: makes `from_file` and `from_dict` use `backend` where it applies."""
    cls._backends.append(backend)
    return backend

  @classmethod
  def file_in(cls, path: str) -> str | None:
    """The file of `path` (itself, or one in a directory) that this backend reads; None when
    it reads none there. Backends override it."""
    return None

  @classmethod
  def ambiguity_hint(cls, path: str) -> str:
    """For an error message: why `path` names no single file of this backend ("" if none)."""
    return ""

  @classmethod
  def load_file(cls, file: str) -> Tokenizer:
    """The tokenizer in `file` (one that `file_in` named). Backends override it."""
    raise NotImplementedError

  def __init__(self, hf_tokenizer: tokenizers.Tokenizer, *, roles: Mapping[str, str],
               published: Mapping[str, Any] | None = None):
    """Wraps `hf_tokenizer`; `roles` maps role names (see `ROLES`) to token strings.

    The tokenizer's own padding and truncation are turned off, as `transformers` turns them off
    when it loads a tokenizer.json: many published files pad or cut every encoding to a fixed
    length (sentence-transformers' `"padding": {"strategy": {"Fixed": 128}}`), and lmjax alone
    decides lengths, padding and masks. What the file said (`published`: its "padding" and
    "truncation" sections, by default read from `hf_tokenizer`) is written back by `save`, so a
    saved tokenizer is the file as published.
    """
    self._published = dict(_length_sections(hf_tokenizer) if published is None else published)
    hf_tokenizer.no_padding()
    hf_tokenizer.no_truncation()
    self.hf = hf_tokenizer
    vocab = hf_tokenizer.get_vocab(with_added_tokens=True)
    added_special = {i for i, t in hf_tokenizer.get_added_tokens_decoder().items() if t.special}
    # One more than the largest id, not the number of tokens: some vocabularies have holes.
    self._set_roles(roles, vocab_size=max(vocab.values()) + 1, special_ids=added_special)

  def _set_roles(self, roles: Mapping[str, str], *, vocab_size: int,
                 special_ids: Iterable[int]) -> None:
    """Sets `roles`, their ids, `vocab_size` and `special_ids` (which gain the role ids).

    Shared by the backends; needs `token_to_id` to work already.
    """
    unknown = set(roles) - set(ROLES)
    if unknown:
      raise UserError(f"Unknown tokenizer role(s) {sorted(unknown)}; valid roles are {ROLES}.")
    self.roles = dict(roles)
    role_ids = {}
    for role, token in self.roles.items():
      token_id = self.token_to_id(token)
      if token_id is None:
        raise UserError(f"The tokenizer has no token {token!r} for role {role!r}. Name a token "
                        f"of its vocabulary for that role, or drop the role.")
      role_ids[role] = token_id
    self._role_ids = role_ids
    self.vocab_size = vocab_size
    self.special_ids = frozenset(set(special_ids) | set(role_ids.values()))

  # -- roles ---------------------------------------------------------------------------------

  @property
  def pad_id(self) -> int:
    """Id of the pad token; else `eos_id`; else 0."""
    for role in ("pad", "eos"):
      if role in self._role_ids:
        return self._role_ids[role]
    return 0

  @property
  def eos_id(self) -> int | None:
    """Id of the end-of-sequence token, or None."""
    return self._role_ids.get("eos")

  @property
  def bos_id(self) -> int | None:
    """Id of the beginning-of-sequence token, or None."""
    return self._role_ids.get("bos")

  @property
  def mask_id(self) -> int | None:
    """Id of the mask token (masked-LM objectives, fill-mask), or None."""
    return self._role_ids.get("mask")

  @property
  def cls_id(self) -> int | None:
    """Id of the classification token (BERT's [CLS]), or None."""
    return self._role_ids.get("cls")

  @property
  def sep_id(self) -> int | None:
    """Id of the separator token (BERT's [SEP]), or None."""
    return self._role_ids.get("sep")

  @property
  def unk_id(self) -> int | None:
    """Id of the unknown token, or None."""
    return self._role_ids.get("unk")

  # -- encoding ------------------------------------------------------------------------------

  def encode(self, text: str, *, parse_special_tokens: bool = False,
             add_special_tokens: bool = False) -> list[int]:
    """Token ids of `text` -> list[int] of length num_tokens.

    By default text is only text: a literal "<eos>" in a document encodes as its characters,
    never as the eos id. `parse_special_tokens=True` maps special-token spellings in `text` to
    their ids (for prompts such as fill-mask's "... [MASK] ..."). `add_special_tokens=True`
    applies the tokenizer's own template (e.g. Llama's leading <|begin_of_text|>), as
    Hugging Face does for prompts; tokenizers made by lmjax have none.
    """
    self._set_parse_special(parse_special_tokens)
    if add_special_tokens or len(text) <= pieces.PIECE_CHARS:
      return self.hf.encode(text, add_special_tokens=add_special_tokens).ids
    return self.encode_batch([text], parse_special_tokens=parse_special_tokens)[0]

  def encode_batch(self, texts: Sequence[str], *,
                   parse_special_tokens: bool = False) -> list[list[int]]:
    """Token ids of each text, in parallel: [num_texts] -> [num_texts][num_tokens_i]. A long
    text goes to the library in bounded pieces (lmjax.data.tokenize.pieces)."""
    self._set_parse_special(parse_special_tokens)
    return pieces.encode_in_pieces(
        lambda batch: [e.ids for e in self.hf.encode_batch_fast(batch, add_special_tokens=False)],
        texts)

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    """The text of token ids [num_tokens] (special tokens left out unless asked for)."""
    return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  # -- examples (classification) ---------------------------------------------------------------

  def adds_special_tokens(self) -> bool:
    """Whether encoding an example adds special tokens of the tokenizer's own (a template such
    as BERT's [CLS] … [SEP])."""
    return self.hf.num_special_tokens_to_add(False) > 0

  def encode_example(self, text: str, pair: str | None = None, *, max_length: int
                     ) -> tuple[list[int], list[int], bool]:
    """(token ids, token type ids, whether it was cut) of one example: the text (and a second
    text) with the tokenizer's own special tokens, as `transformers` encodes it, truncated to
    `max_length` tokens from the right, the longer text first (HF's "longest_first")."""
    self._set_parse_special(False)
    first = self.hf.encode(text, add_special_tokens=False)
    second = None if pair is None else self.hf.encode(pair, add_special_tokens=False)
    budget = max_length - self.hf.num_special_tokens_to_add(second is not None)
    lengths = fit_longest_first(len(first), None if second is None else len(second), budget)
    cut = lengths[0] < len(first) or (second is not None and lengths[1] < len(second))
    first.truncate(lengths[0])
    if second is not None:
      second.truncate(lengths[1])
    encoding = self.hf.post_process(first, second, add_special_tokens=True)
    return encoding.ids, encoding.type_ids, cut

  def with_example_template(self, *, first: int, last: int, second_type: int) -> Tokenizer:
    """A copy whose examples encode as `first` text `last` (pairs: `first` a `last` b `last`,
    the second part of type `second_type`): lmjax's template for encoders whose tokenizer adds
    no special tokens itself; it is saved with the tokenizer, so transformers encodes alike."""
    hf = tokenizers.Tokenizer.from_str(self.hf.to_str())
    head, tail = self.id_to_token(first), self.id_to_token(last)
    hf.post_processor = processors.TemplateProcessing(
        single=f"{head} $A {tail}", pair=f"{head} $A {tail} $B:{second_type} {tail}:{second_type}",
        special_tokens=sorted({(head, first), (tail, last)}))
    return Tokenizer(hf, roles=self.roles, published=self._published)

  def token_to_id(self, token: str) -> int | None:
    """The id of a token string, or None when it is not in the vocabulary."""
    return self.hf.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    """The token string of an id, or None when the id is out of range."""
    return self.hf.id_to_token(int(token_id))

  def _set_parse_special(self, parse: bool) -> None:
    # `encode_special_tokens=True` means "encode special spellings as plain text"; it is a
    # runtime flag of the HF tokenizer, not saved in tokenizer.json.
    if self.hf.encode_special_tokens != (not parse):
      self.hf.encode_special_tokens = not parse

  def __repr__(self) -> str:
    roles = ", ".join(f"{r}={self._role_ids[r]}" for r in ROLES if r in self._role_ids)
    return f"{type(self).__name__}(vocab_size={self.vocab_size}, {roles})"

  # -- between processes ---------------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    """A JSON-able copy of this tokenizer (to send it to other processes); see `from_dict`."""
    return {"backend": self.backend_name, "tokenizer": self.hf.to_str(), "roles": self.roles,
            "published": self._published}

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer that `to_dict` described, of any backend."""
    for backend in cls._backends:
      if data["backend"] == backend.backend_name:
        return backend.from_dict(data)
    return Tokenizer(tokenizers.Tokenizer.from_str(data["tokenizer"]), roles=data["roles"],
                     published=data.get("published", {}))

  # -- construction --------------------------------------------------------------------------

  @staticmethod
  def byte_level() -> Tokenizer:
    """A tokenizer of raw UTF-8 bytes: the 5 lmjax specials, then byte b at id 5 + b.

    vocab_size is 261 and decode(encode(s)) == s for every string s.
    """
    vocab = {token: i for i, token in enumerate(LMJAX_SPECIALS.values())}
    for byte, char in enumerate(byte_to_unicode()):
      vocab[char] = len(LMJAX_SPECIALS) + byte
    # BPE without merges splits each pre-token into its characters, one per byte. No regex
    # splitting: with no merges to apply, word boundaries change nothing.
    hf = byte_level_pipeline(models.BPE(vocab=vocab, merges=[]), use_regex=False)
    return Tokenizer(hf, roles=LMJAX_SPECIALS)

  @staticmethod
  def train_bpe(documents: Iterable[str], *, vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2 style) trained on `documents`.

    The vocabulary holds the 5 lmjax specials, all 256 bytes (so any text encodes) and up to
    vocab_size - 261 merges; it is smaller than `vocab_size` when the corpus runs out of pairs.
    """
    minimum = len(LMJAX_SPECIALS) + 256
    if vocab_size < minimum:
      raise UserError(f"A byte-level BPE vocabulary needs at least {minimum} tokens (5 specials "
                      f"+ 256 bytes), but vocab_size is {vocab_size}. Raise it.")
    hf = byte_level_pipeline(models.BPE(), use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(LMJAX_SPECIALS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator(documents, trainer)
    return Tokenizer(hf, roles=LMJAX_SPECIALS)

  @classmethod
  def readable_in(cls, path: str | os.PathLike) -> bool:
    """Whether `from_file(path)` finds a file to read there (a tokenizer.json or a backend's
    file, such as a sentencepiece model; vocab.txt alone is not one)."""
    if is_remote(path):
      with local_copy(path) as local:
        return cls.readable_in(local)
    path = os.fspath(path)
    return (any(backend.file_in(path) is not None for backend in cls._backends)
            or os.path.isfile(os.path.join(path, TOKENIZER_FILE) if os.path.isdir(path) else path))

  @classmethod
  def from_file(cls, path: str | os.PathLike) -> Tokenizer:
    """The tokenizer at `path`: a `tokenizer.json`, a sentencepiece `.model`, or a directory.

    A directory's `tokenizer.json` is used where it has one, else its sentencepiece model
    (`tokenizer.model`, or its only `*.model`), which gives a `SentencePieceTokenizer`.
    Roles come from `tokenizer_config.json` / `special_tokens_map.json` beside the file when
    either exists (tokenizer_config wins where both name a role; roles naming a token missing
    from the vocabulary are ignored), else from common spellings ("</s>", "[MASK]",
    "<|endoftext|>", …); a sentencepiece model's own pad/eos/bos/unk ids come first.
    A gs:// or s3:// path is read through a temporary local copy of its small files.
    """
    if is_remote(path):
      with local_copy(path) as local:
        return cls.from_file(local)
    path = os.fspath(path)
    for backend in cls._backends:
      file = backend.file_in(path)
      if file is not None:
        return backend.load_file(file)
    file = os.path.join(path, TOKENIZER_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
      hints = "".join(backend.ambiguity_hint(path) for backend in cls._backends)
      raise UserError(f"No tokenizer file at {file!r}. Point to a `tokenizer.json`, a "
                      f"sentencepiece `.model`, or a Hugging Face tokenizer directory that "
                      f"contains one.{hints}")
    hf = _load_hf(file)
    roles = roles_from_hf_configs(os.path.dirname(file), _has_token(hf))
    if roles is None:
      roles = roles_from_spellings(_has_token(hf))
    return Tokenizer(hf, roles=roles)

  @staticmethod
  def load(directory: str | os.PathLike) -> Tokenizer:
    """The tokenizer that `save` wrote to `directory` (or any tokenizer directory, see
    `from_file`), of any backend."""
    return Tokenizer.from_file(directory)

  def save(self, directory: str | os.PathLike) -> None:
    """Writes `tokenizer.json` and a `tokenizer_config.json` naming the special tokens' roles.

    The pair is a standard Hugging Face fast-tokenizer directory: `transformers.AutoTokenizer`
    loads it as it is, and `load` reads the roles back from it. A tokenizer.json keeps the
    padding and truncation sections it was published with (lmjax never applies them).
    """
    if is_remote(directory):
      with local_output(directory) as local:
        return self.save(local)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    file = os.path.join(directory, TOKENIZER_FILE)
    if self._published:
      content = {**json.loads(self.hf.to_str()), **self._published}
      with open(file, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2, ensure_ascii=False)
    else:
      self.hf.save(file)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              **{f"{role}_token": token for role, token in self.roles.items()}}
    with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2, ensure_ascii=False)
      f.write("\n")


def _load_hf(file: str) -> tokenizers.Tokenizer:
  try:
    return tokenizers.Tokenizer.from_file(file)
  except Exception as e:  # the Rust side raises a plain Exception with a parse message
    raise UserError(
        f"Could not read the tokenizer file {file!r}: {e}. It must be a Hugging Face "
        f"`tokenizer.json` (as written by `tokenizers` or transformers).") from None


def _length_sections(hf: tokenizers.Tokenizer) -> dict[str, Any]:
  """The "padding" and "truncation" sections of `hf`'s tokenizer.json, where either is set."""
  if hf.padding is None and hf.truncation is None:
    return {}
  content = json.loads(hf.to_str())
  return {key: content[key] for key in ("padding", "truncation")}


def _has_token(hf: tokenizers.Tokenizer) -> Callable[[str], bool]:
  return lambda token: hf.token_to_id(token) is not None
