"""Reading a run config's YAML: safe constructors only, a key given twice refused, and every
way a file can fail to be a config (not YAML, not UTF-8, a directory, nested without end, not a
mapping) a UserError naming the file."""

from __future__ import annotations

import pathlib
from typing import Any

import yaml

from lmjax.errors import UserError


class _UniqueKeyLoader(yaml.SafeLoader):
  """yaml.safe_load's loader, refusing a key given twice in one mapping (YAML says keys are
  unique; PyYAML silently keeps the last, so one of two settings would be ignored unseen)."""

  def construct_mapping(self, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
      key = self.construct_object(key_node, deep=deep)
      if isinstance(key, (str, int, float, bool)) and key in seen:
        raise yaml.constructor.ConstructorError(
            None, None, f"key {key!r} appears twice in one mapping; keep one",
            key_node.start_mark)
      seen.add(key)
    return super().construct_mapping(node, deep=deep)


def read_yaml(path: pathlib.Path) -> dict[str, Any]:
  try:
    raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
  except yaml.YAMLError as e:
    raise UserError(f"config {path} is not valid YAML: {e}") from None
  except UnicodeDecodeError as e:
    raise UserError(f"config {path} is not UTF-8 text (byte {e.start} is {e.object[e.start]:#x}); "
                    "save it as UTF-8.") from None
  except IsADirectoryError:
    raise UserError(f"config {path} is a directory; pass a YAML file.") from None
  except RecursionError:
    raise UserError(f"config {path} nests deeper than a config can (thousands of levels of "
                    f"brackets or indentation): a run config is a few levels deep.") from None
  if raw is None:
    return {}
  if not isinstance(raw, dict):
    raise UserError(f"config {path} must be a mapping of sections (model, train, …), "
                    f"got a {type(raw).__name__}.")
  return raw


__all__ = ["read_yaml"]
