"""A fine-tuned model keeps the tokenizer it was pretrained with.

Weights from `model.init_from` (a run, an HF directory, a hub id, a GGUF file) learnt what each
id means under the source's tokenizer: the run uses that tokenizer, its special tokens and chat
template (`Config.tokenizer_choice`), and saves it in the run directory. A `data.tokenizer` that
makes or names another one (a BPE trained on the corpus, bytes, another file) would feed the
weights ids that mean other words, and training would go on without a sign of it: refused,
unless `data.replace_tokenizer` says the replacement is meant; the new vocabulary must then
have as many tokens as the source's (every id an embedding row that was trained for one).
"""

from __future__ import annotations

import pathlib

from lmjax.config import Config, is_run_directory
from lmjax.data.tokenize.chat import own_template, save_template
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.hf.tokenizer_files import tokenizer_file_names
from lmjax.storage import as_path


def source_tokenizer(config: Config) -> tuple[pathlib.Path, Tokenizer] | None:
  """(directory, tokenizer) of `model.init_from`'s own tokenizer; None without a source or
  where the source has no tokenizer files."""
  if config.init_from is None:
    return None
  source = as_path(config.init_from)
  directory = source / "tokenizer" if is_run_directory(source) else source
  if not tokenizer_file_names(directory):
    return None
  return directory, Tokenizer.from_file(directory)


def _named(choice: str, directory: pathlib.Path) -> bool:
  """Whether the path `data.tokenizer=choice` names the source's tokenizer directory or file."""
  return pathlib.Path(choice).resolve() in (directory.resolve(),
                                            (directory / "tokenizer.json").resolve())


def check_tokenizer_of_source(config: Config) -> None:
  """UserError when fine-tuning from a source with its own tokenizer while `data.tokenizer`
  makes or names another, unless `data.replace_tokenizer` (then, for bytes or a tokenizer file,
  the sizes must agree here; a BPE trained on the corpus is checked by `check_replacement`)."""
  choice, found = config.data.tokenizer, source_tokenizer(config)
  if choice is None or found is None:
    return  # the source's own, or the source has none: the config's is the only one there is
  directory, theirs = found
  if choice not in ("bpe", "byte") and _named(choice, directory):
    return
  ours = None if choice == "bpe" else (
      Tokenizer.byte_level() if choice == "byte" else Tokenizer.from_file(choice))
  if ours is not None and ours.to_dict() == theirs.to_dict():
    return  # the same vocabulary, normalisation and special tokens
  if config.data.replace_tokenizer:
    if ours is not None:
      _check_sizes(ours, directory, theirs)
    return
  what = ("would make a new one" if choice in ("bpe", "byte") else "is another one")
  raise UserError(
      f"model.init_from={config.init_from} brings its own tokenizer ({directory}, "
      f"{theirs.vocab_size} tokens), but data.tokenizer={choice!r} {what} whose ids mean other "
      f"words to its embeddings. Use the source's: --set data.tokenizer=null (or name its "
      f"directory). To replace it on purpose, --set data.replace_tokenizer=true (the new "
      f"vocabulary must then have {theirs.vocab_size} tokens).")


def check_replacement(config: Config, tokenizer: Tokenizer) -> None:
  """UserError when a tokenizer replacing the source's (`data.replace_tokenizer`) has another
  number of tokens than the source's."""
  found = source_tokenizer(config) if config.data.replace_tokenizer else None
  if found is not None:
    _check_sizes(tokenizer, *found)


def _check_sizes(tokenizer: Tokenizer, directory: pathlib.Path, theirs: Tokenizer) -> None:
  if tokenizer.vocab_size != theirs.vocab_size:
    raise UserError(
        f"data.replace_tokenizer: the new tokenizer has {tokenizer.vocab_size} tokens but "
        f"model.init_from's ({directory}) has {theirs.vocab_size}; a replacement must have as "
        f"many (each id keeps an embedding row that was trained for one). Use a tokenizer of "
        f"{theirs.vocab_size} tokens, or the source's (--set data.tokenizer=null).")


def save_run_tokenizer(tokenizer: Tokenizer, config: Config, directory: pathlib.Path) -> None:
  """Saves a new run's tokenizer with the chat template of the directory it came from (the
  source's, or data.tokenizer's), so the run directory holds what `--chat` renders with."""
  tokenizer.save(directory)
  choice = config.tokenizer_choice
  template = own_template(choice) if choice and pathlib.Path(choice).is_dir() else None
  if template is not None:
    save_template(template, directory)
