"""Sentencepiece `.model` tokenizers (such as Llama's or T5's `tokenizer.model`), used as they are.

    data.tokenizer: path/to/spm.model        # or a directory with tokenizer.model, no tokenizer.json

`SentencePieceTokenizer` is `Tokenizer`'s interface over `sentencepiece.SentencePieceProcessor`,
so encoding equals `SentencePieceProcessor.encode` exactly: there is no conversion to a
`tokenizer.json`, which can differ from sentencepiece on normalisation and rare text. It is
saved as the same model bytes, named `tokenizer.model`, beside a `tokenizer_config.json` that
names the roles.

Roles are the model's own pad/eos/bos/unk ids, plus a piece spelled "<mask>"/"[MASK]",
"[CLS]" or "[SEP]" where it has one; a `tokenizer_config.json` / `special_tokens_map.json`
beside the model overrides them role by role. That config's `add_bos_token` / `add_eos_token`
say what `encode(..., add_special_tokens=True)` adds, as in transformers (Llama: a leading <s>).
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sentencepiece

from lmjax.data.tokenize.special_tokens import (CONFIG_FILE, roles_from_hf_configs,
                                                roles_from_spellings)
from lmjax.data.tokenize.tokenizer import TOKENIZER_FILE, Tokenizer
from lmjax.data.tokenize.truncation import fit_longest_first
from lmjax.errors import UserError
from lmjax.files import read_json_object

MODEL_FILE = "tokenizer.model"
# Tokenizer classes of transformers whose `add_bos_token` is true when their config is silent.
_BOS_BY_DEFAULT = ("Llama", "Gemma")


@Tokenizer.register_backend
class SentencePieceTokenizer(Tokenizer):
  """A `Tokenizer` backed by a sentencepiece model; ids are sentencepiece's own.

  `special_ids` are the model's control pieces (<s>, </s>, <pad>, …), its unknown piece and
  the role pieces. User-defined pieces of the model (such as a "<mask>" it was trained with)
  are matched in text by sentencepiece itself, whatever `parse_special_tokens` says.
  """

  def __init__(self, model_proto: bytes, *, roles: Mapping[str, str] | None = None,
               add_bos_token: bool = False, add_eos_token: bool = False,
               source: str = "the sentencepiece model"):
    """Wraps the serialised model `model_proto` (a `.model` file's bytes).

    `roles` maps role names to pieces (None: the model's own, see `model_roles`);
    `add_bos_token` / `add_eos_token`: what `encode(..., add_special_tokens=True)` adds;
    `source` names the model in errors.
    """
    self.model_proto = model_proto
    self.processor = _load_processor(model_proto, source)
    self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
    sp = self.processor
    size = sp.get_piece_size()
    # Sentencepiece never produces these from text, so `parse_special_tokens` finds them itself.
    unparsed = [i for i in range(size) if sp.is_control(i) or sp.is_unknown(i)]
    self._set_roles(model_roles(sp) if roles is None else roles, vocab_size=size,
                    special_ids=unparsed)
    spellings = sorted({sp.id_to_piece(i) for i in unparsed} - {""}, key=len, reverse=True)
    self._unparsed_pattern = re.compile("(" + "|".join(map(re.escape, spellings)) + ")")

  # -- encoding ------------------------------------------------------------------------------

  def encode(self, text: str, *, parse_special_tokens: bool = False,
             add_special_tokens: bool = False) -> list[int]:
    """Token ids of `text` -> list[int]: `SentencePieceProcessor.encode(text)` by default.

    `parse_special_tokens=True` also maps spellings of control pieces ("</s>", "<unk>", …)
    to their ids; `add_special_tokens=True` adds bos/eos as `add_bos_token`/`add_eos_token` say.
    """
    if parse_special_tokens:
      ids = []
      for n, part in enumerate(self._unparsed_pattern.split(text)):
        if n % 2:  # odd parts are the separators: special spellings
          ids.append(self.processor.piece_to_id(part))
        elif part:
          ids.extend(self.processor.encode(part))
    else:
      ids = self.processor.encode(text)
    if add_special_tokens:
      bos = [self.bos_id] if self.add_bos_token and self.bos_id is not None else []
      eos = [self.eos_id] if self.add_eos_token and self.eos_id is not None else []
      ids = bos + ids + eos
    return ids

  def encode_batch(self, texts: Sequence[str], *,
                   parse_special_tokens: bool = False) -> list[list[int]]:
    """Token ids of each text, on all cores: [num_texts] -> [num_texts][num_tokens_i]."""
    if parse_special_tokens:
      return [self.encode(text, parse_special_tokens=True) for text in texts]
    return self.processor.encode(list(texts), num_threads=os.cpu_count() or 1)

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    """The text of token ids [num_tokens] (special tokens left out unless asked for).

    Ids past the vocabulary (the model's may be padded larger) decode to nothing.
    """
    ids = [i for i in map(int, ids) if 0 <= i < self.vocab_size]
    if skip_special_tokens:
      return self.processor.decode([i for i in ids if i not in self.special_ids])
    # Sentencepiece decodes control pieces to nothing: write them between the decoded runs of
    # other ids, as transformers' sentencepiece tokenizers do.
    text, run = "", []
    for i in ids:
      if self.processor.is_control(i):
        text += self.processor.decode(run) + self.processor.id_to_piece(i)
        run = []
      else:
        run.append(i)
    return text + self.processor.decode(run)

  def adds_special_tokens(self) -> bool:
    return (self.add_bos_token and self.bos_id is not None) or (
        self.add_eos_token and self.eos_id is not None)

  def encode_example(self, text: str, pair: str | None = None, *, max_length: int
                     ) -> tuple[list[int], list[int], bool]:
    """As `Tokenizer.encode_example`, with bos/eos around each text as `add_bos_token` /
    `add_eos_token` say (transformers' sentencepiece tokenizers' layout)."""
    bos = [self.bos_id] if self.add_bos_token and self.bos_id is not None else []
    eos = [self.eos_id] if self.add_eos_token and self.eos_id is not None else []
    first = self.processor.encode(text)
    second = None if pair is None else self.processor.encode(pair)
    specials = (len(bos) + len(eos)) * (1 if second is None else 2)
    lengths = fit_longest_first(len(first), None if second is None else len(second),
                                max_length - specials)
    cut = lengths[0] < len(first) or (second is not None and lengths[1] < len(second))
    ids = bos + first[:lengths[0]] + eos
    types = [0] * len(ids)
    if second is not None:
      tail = bos + second[:lengths[1]] + eos
      ids, types = ids + tail, types + [1] * len(tail)
    return ids, types, cut

  def with_example_template(self, *, first: int, last: int, second_type: int
                            ) -> SentencePieceTokenizer:
    """A copy that adds bos and eos around examples' texts (its only template)."""
    return SentencePieceTokenizer(self.model_proto, roles=self.roles, add_bos_token=True,
                                  add_eos_token=True)

  def token_to_id(self, token: str) -> int | None:
    """The id of a piece, or None when the model has no such piece."""
    return _piece_id(self.processor, token)

  def id_to_token(self, token_id: int) -> str | None:
    """The piece of an id, or None when the id is out of range."""
    token_id = int(token_id)
    return self.processor.id_to_piece(token_id) if 0 <= token_id < self.vocab_size else None

  # -- files and processes -------------------------------------------------------------------

  backend_name = "sentencepiece"

  @classmethod
  def file_in(cls, path: str) -> str | None:
    return model_file_in(path)

  @classmethod
  def ambiguity_hint(cls, path: str) -> str:
    return ambiguity_hint(path)

  @classmethod
  def load_file(cls, file: str) -> SentencePieceTokenizer:
    return cls.from_model_file(file)

  @staticmethod
  def from_model_file(path: str | os.PathLike) -> SentencePieceTokenizer:
    """The sentencepiece model at `path`, with roles and bos/eos templates as the module says."""
    path = os.fspath(path)
    with open(path, "rb") as f:
      model_proto = f.read()
    processor = _load_processor(model_proto, path)
    directory = os.path.dirname(path)
    roles = model_roles(processor)
    roles.update(roles_from_hf_configs(directory, lambda t: _piece_id(processor, t) is not None)
                 or {})
    config = read_json_object(os.path.join(directory, CONFIG_FILE)) or {}
    bos_by_default = any(name in str(config.get("tokenizer_class")) for name in _BOS_BY_DEFAULT)
    return SentencePieceTokenizer(
        model_proto, roles=roles, add_bos_token=bool(config.get("add_bos_token", bos_by_default)),
        add_eos_token=bool(config.get("add_eos_token", False)), source=path)

  def save(self, directory: str | os.PathLike) -> None:
    """Writes the model as `tokenizer.model` and a `tokenizer_config.json` naming its roles."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, MODEL_FILE), "wb") as f:
      f.write(self.model_proto)
    config = {"add_bos_token": self.add_bos_token, "add_eos_token": self.add_eos_token,
              "clean_up_tokenization_spaces": False,
              **{f"{role}_token": token for role, token in self.roles.items()}}
    with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2, ensure_ascii=False)
      f.write("\n")

  def to_dict(self) -> dict[str, Any]:
    """A JSON-able copy of this tokenizer (to send it to other processes); see `from_dict`."""
    return {"backend": self.backend_name, "roles": self.roles,
            "model": base64.b64encode(self.model_proto).decode("ascii"),
            "add_bos_token": self.add_bos_token, "add_eos_token": self.add_eos_token}

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> SentencePieceTokenizer:
    """The tokenizer that `to_dict` described."""
    return SentencePieceTokenizer(base64.b64decode(data["model"]), roles=data["roles"],
                                  add_bos_token=data["add_bos_token"],
                                  add_eos_token=data["add_eos_token"])


def model_roles(processor: sentencepiece.SentencePieceProcessor) -> dict[str, str]:
  """Roles the model defines: its pad/eos/bos/unk ids (-1 where it has none), and a mask, cls
  or sep piece of a common spelling ("<mask>", "[MASK]", "[CLS]", "[SEP]")."""
  roles = {}
  for role, token_id in (("pad", processor.pad_id()), ("eos", processor.eos_id()),
                         ("bos", processor.bos_id()), ("unk", processor.unk_id())):
    if token_id >= 0:
      roles[role] = processor.id_to_piece(token_id)
  spelled = roles_from_spellings(lambda t: _piece_id(processor, t) is not None)
  roles.update({role: spelled[role] for role in ("mask", "cls", "sep") if role in spelled})
  return roles


def model_file_in(path: str) -> str | None:
  """The sentencepiece model `path` names, or None: `path` itself if it is a `.model` file;
  for a directory without a tokenizer.json, its tokenizer.model or else its only `*.model`."""
  if os.path.isfile(path):
    return path if path.endswith(".model") else None
  if not os.path.isdir(path) or os.path.isfile(os.path.join(path, TOKENIZER_FILE)):
    return None
  names = _model_names(path)
  if MODEL_FILE in names:
    return os.path.join(path, MODEL_FILE)
  return os.path.join(path, names[0]) if len(names) == 1 else None


def ambiguity_hint(path: str) -> str:
  """For an error message: a note when directory `path` holds several `*.model` files."""
  names = _model_names(path) if os.path.isdir(path) else []
  if len(names) < 2:
    return ""
  return f" It holds several sentencepiece models ({', '.join(names)}): point to one of them."


def _model_names(directory: str) -> list[str]:
  return sorted(n for n in os.listdir(directory) if n.endswith(".model")
                and os.path.isfile(os.path.join(directory, n)))


def _piece_id(processor: sentencepiece.SentencePieceProcessor, piece: str) -> int | None:
  token_id = processor.piece_to_id(piece)  # the unknown id for a piece not in the model
  return token_id if processor.id_to_piece(token_id) == piece else None


def _load_processor(model_proto: bytes, source: str) -> sentencepiece.SentencePieceProcessor:
  processor = sentencepiece.SentencePieceProcessor()
  try:
    processor.LoadFromSerializedProto(model_proto)
    loaded = processor.get_piece_size() > 0
  except RuntimeError:  # sentencepiece's parse or validation error
    loaded = False
  if not loaded:
    raise UserError(f"{source!r} is not a sentencepiece model: sentencepiece could not load it. "
                    f"Point to a `.model` file written by sentencepiece (such as a Hugging Face "
                    f"checkpoint's tokenizer.model), or to a `tokenizer.json`.")
  return processor
