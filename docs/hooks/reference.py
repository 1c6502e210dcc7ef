"""MkDocs hook: the reference pages generated from the code at build time, and a docstring check.

  reference/config.md   every config key: type, default, range and the comments beside its
                        field (lmjax.config_schema.describe over lmjax.config.Config)
  reference/cli.md      every command's --help (lmjax.cli.parser)

and, before the build, a warning (an error under --strict) for each name of the public API
(`lmjax.__all__`, `lmjax.infer.__all__`) that has no docstring of its own.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os

from mkdocs.structure.files import File

import lmjax
import lmjax.infer
from lmjax.cli.parser import parser
from lmjax.config import Config
from lmjax.config_schema import describe
from lmjax.model.presets import PRESET_NAMES

log = logging.getLogger("mkdocs.hooks.lmjax_reference")

# Keys the YAML puts elsewhere than the dataclass holding them.
_RENAMED = {"init_from": "model.init_from"}


def on_pre_build(config) -> None:
  for module in (lmjax, lmjax.infer):
    for name in module.__all__:
      value = getattr(module, name)
      if (inspect.isfunction(value) or inspect.isclass(value)) and not _documented(value):
        log.warning("%s.%s has no docstring: the API reference would show nothing for it",
                    module.__name__, name)


def _documented(value) -> bool:
  doc = value.__doc__ or ""
  generated = inspect.isclass(value) and doc.startswith(f"{value.__name__}(")  # a dataclass's
  return bool(doc.strip()) and not generated


def on_files(files, config):
  files.append(File.generated(config, "reference/config.md", content=config_reference()))
  files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
  return files


def _cell(text: str) -> str:
  return (text.replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")
          .replace("\n", " "))


def config_reference() -> str:
  lines = [
      "# Config keys",
      "",
      "Every key a run config may set, generated from the config classes when the site is "
      "built: its type, its default (blank: the preset, the family or `model.init_from` gives "
      "it), the values it may take, and the comments beside it in the code. "
      "See [Configs](../config.md) for how a config is put together.",
      "",
      f"`model.preset` (a string) starts from a named architecture: "
      f"{', '.join(f'`{n}`' for n in PRESET_NAMES)}.",
  ]
  section = None
  for info in describe(Config, ""):
    key = info.key.lstrip(".")
    key = _RENAMED.get(key, key)
    top = key.split(".")[0]
    if top != section:
      section = top
      lines += ["", f"## `{top}`", "", "| key | type | default | range | notes |",
                "|---|---|---|---|---|"]
    default = f"`{info.default}`" if info.default else ""
    lines.append(f"| `{key}` | {_cell(info.type)} | {_cell(default)} | {_cell(info.range)} | "
                 f"{_cell(info.doc)} |")
  return "\n".join(lines) + "\n"


def _commands(command: argparse.ArgumentParser, name: str):
  """(name, parser) of a command and of its subcommands, depth first."""
  yield name, command
  for action in command._actions:  # noqa: SLF001 -- argparse has no public walk
    if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
      for sub_name, sub in action.choices.items():
        yield from _commands(sub, f"{name} {sub_name}")


def cli_reference() -> str:
  os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width: a fixed one here
  lines = ["# Command line", "",
           "Each command's `--help`, generated from the parser when the site is built; what "
           "each exit code means is under [Reliability](../reliability.md#exit-codes).", ""]
  for name, command in _commands(parser(), "lmjax"):
    lines += [f"## `{name}`", "", "```text", command.format_help().rstrip(), "```", ""]
  return "\n".join(lines)
