"""Plain values (from YAML or `--set`) checked against a frozen dataclass's field types.

`build(cls, raw, section)` makes a `cls` from a mapping, refusing unknown keys (with the nearest
valid one) and values of the wrong type; lossless conversions are made (int -> float, a string
to its enum member, a list to a tuple, a mapping to a nested dataclass).
"""

from __future__ import annotations

import dataclasses
import difflib
import decimal
import enum
import inspect
import types
import typing
from typing import Any, Mapping

from lmjax.errors import UserError

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def build(cls, raw: Mapping[str, Any], section: str):
  """`cls(**raw)` with every value coerced to its field's type; `section` names it in errors."""
  if not isinstance(raw, Mapping):
    raise UserError(f"config section `{section}` must be a mapping, got {raw!r}.")
  hints = typing.get_type_hints(cls)
  names = [f.name for f in dataclasses.fields(cls)]
  for key in raw:
    if key not in names:
      raise UserError(f"unknown config key {section}.{key}{did_you_mean(key, names, section)}.")
  return cls(**{key: coerce(value, hints[key], f"{section}.{key}") for key, value in raw.items()})


def coerce(value: Any, hint: Any, where: str) -> Any:
  """Checks `value` against type `hint`, converting lossless cases; `where` names the key."""
  origin = typing.get_origin(hint)
  if origin in (types.UnionType, typing.Union):
    return _coerce_optional(value, hint, where)
  if origin is tuple:
    return _coerce_tuple(value, hint, where)
  if dataclasses.is_dataclass(hint):
    return value if isinstance(value, hint) else build(hint, value, where)
  if isinstance(hint, type) and issubclass(hint, enum.Enum):
    return coerce_enum(value, hint, where)
  if hint in _TYPE_NAMES:
    return _coerce_scalar(value, hint, where)
  return value  # Any: checked by the dataclass itself


def _coerce_optional(value: Any, hint: Any, where: str) -> Any:
  args = typing.get_args(hint)
  if value is None and type(None) in args:
    return None
  (inner,) = [a for a in args if a is not type(None)]
  return coerce(value, inner, where)


def _coerce_tuple(value: Any, hint: Any, where: str) -> tuple:
  if isinstance(value, str):  # one path where a list of them is expected
    value = [value]
  if not isinstance(value, (list, tuple)):
    raise UserError(f"{where} must be a list, got {value!r}.")
  (item,) = typing.get_args(hint)[:1]
  return tuple(coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))


def coerce_enum(value: Any, kind: type[enum.Enum], where: str) -> enum.Enum:
  """The member of `kind` whose value is `value`; UserError listing the choices otherwise."""
  if isinstance(value, kind):
    return value
  choices = [m.value for m in kind]
  if value not in choices:
    raise UserError(f"{where}={value!r} is not one of {', '.join(map(str, choices))}"
                    f"{did_you_mean(str(value), [str(c) for c in choices])}.")
  return kind(value)


def _coerce_scalar(value: Any, hint: type, where: str) -> Any:
  is_bool = isinstance(value, bool)  # a bool is an int to Python, not to a config
  if is_bool == (hint is bool) and isinstance(value, hint):
    return value
  if hint is float and not is_bool and isinstance(value, int):
    return float(value)
  if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
    try:
      return float(value)
    except ValueError:
      pass
  if hint is int and not is_bool and isinstance(value, (float, str)):  # 1e4, 1.0e4, 2048.0
    whole = _whole_number(value)
    if whole is not None:
      return whole
  raise UserError(f"{where} must be {_TYPE_NAMES[hint]}, got {value!r} ({type(value).__name__}).")


def _whole_number(value: float | str) -> int | None:
  """The int a float or a numeric string such as '1e4' (YAML 1.1 reads a number without a dot
  as a string) stands for exactly, else None."""
  try:
    number = decimal.Decimal(str(value).strip())  # exact: '1e23' is 10**23, not float's
  except decimal.InvalidOperation:
    return None
  return int(number) if number.is_finite() and number == number.to_integral_value() else None


def did_you_mean(word: str, options, section: str | None = None) -> str:
  """' (did you mean section.option?)' for the option closest to `word`, or ''."""
  close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
  if not close:
    return ""
  return f" (did you mean {section + '.' if section else ''}{close[0]}?)"


def plain(value: Any) -> Any:
  """`value` with enums as their values and tuples as lists: what YAML writes."""
  if isinstance(value, enum.Enum):
    return value.value
  if isinstance(value, dict):
    return {k: plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [plain(v) for v in value]
  return value


# -- the schema described (the config reference page of the documentation) ------------------


@dataclasses.dataclass(frozen=True)
class KeyInfo:
  """One config key as the documentation lists it."""

  key: str      # dotted: train.steps, model.lora.rank, data.mixture[].weight
  type: str     # as a user writes it: an integer, true or false, one of: a | b, a list of …
  default: str  # as YAML writes it; "" for a key without a default
  range: str    # the allowed values of a number (lmjax.ranges), "" where any
  doc: str      # the comments beside and above the field in its dataclass


def describe(cls, section: str) -> list[KeyInfo]:
  """Every key of the config section `cls` (a dataclass) and of its nested sections, in field
  order: the type, the default, the range (`cls.RANGES`) and the field's comments."""
  hints, comments = typing.get_type_hints(cls), _field_comments(cls)
  ranges = getattr(cls, "RANGES", {})
  keys = []
  for field in dataclasses.fields(cls):
    key, hint = f"{section}.{field.name}", hints[field.name]
    nested = _nested_section(hint)
    if nested is not None and nested is hint:
      keys += describe(nested, key)
      continue
    keys.append(KeyInfo(key, _type_name(hint), _default(field), str(ranges.get(field.name, "")),
                        comments.get(field.name, "")))
    if nested is not None:  # a list of sections: data.mixture[].source, …
      keys += describe(nested, f"{key}[]")
  return keys


def _nested_section(hint: Any):
  """The dataclass a field holds (itself, or as the items of a tuple), or None."""
  if dataclasses.is_dataclass(hint):
    return hint
  args = typing.get_args(hint)
  if typing.get_origin(hint) is tuple and args and dataclasses.is_dataclass(args[0]):
    return args[0]
  return None


def _type_name(hint: Any) -> str:
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (types.UnionType, typing.Union):
    return " or ".join(_type_name(a) if a is not type(None) else "null" for a in args)
  if origin is tuple:
    item = _nested_section(hint)
    if item is not None:
      return "a list of mappings (keys below)"
    return "a list" + ("" if args[0] is Any else
                       f" of {_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s")
  if isinstance(hint, type) and issubclass(hint, enum.Enum):
    return "one of: " + " | ".join(str(m.value) for m in hint)
  return _TYPE_NAMES.get(hint, "any")


def _default(field: dataclasses.Field) -> str:
  if field.default is not dataclasses.MISSING:
    value = field.default
  elif field.default_factory is not dataclasses.MISSING:
    value = field.default_factory()
  else:
    return ""
  value = plain(value)
  return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _field_comments(cls) -> dict[str, str]:
  """The comments of each field in the source of `cls` and its bases: the comment lines just
  above it and the one beside it (continued on the lines below, indented past the field)."""
  names, comments = {f.name for f in dataclasses.fields(cls)}, {}
  for klass in reversed(cls.__mro__):
    try:
      lines = inspect.getsourcelines(klass)[0]
    except (OSError, TypeError):  # a base without source (object), or none shipped
      continue
    above, last, indent = [], None, None
    body = next(n for n, line in enumerate(lines) if line.lstrip().startswith("class ")) + 1
    for line in lines[body:]:
      text, column = line.strip(), len(line) - len(line.lstrip())
      if not text:
        above, last = [], None
        continue
      indent = column if indent is None else indent
      if text.startswith("#"):
        if last is not None and column > indent:
          comments[last] += " " + text[1:].strip()
        else:
          above, last = above + [text[1:].strip()], None
        continue
      if column == indent and text.startswith("def "):
        break
      name = text.split(":", 1)[0].strip()
      if column == indent and name in names:
        beside = text.split("  # ", 1)[1].strip() if "  # " in text else ""
        comments[name] = " ".join(above + [beside]).strip()
        last = name if beside else None
      else:
        last = None
      above = []
  return comments
