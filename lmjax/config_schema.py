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
