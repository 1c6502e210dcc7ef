"""The family registry: a model family is a name and the architectural switches it fills in
(`ModelConfig.for_family`); every switch can still be set on its own.

The model layer names no family. Each is defined, with everything it means to Hugging Face, in
one file of lmjax/hf/families/, which registers it here when lmjax is imported; a family of
one's own registers the same way (`lmjax.hf.family.register`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from lmjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family: its name (`model.family`) and the ModelConfig fields it implies."""

  name: str
  defaults: Mapping[str, Any]
  # Fields a sequence classifier of this family has unless the config sets them (BERT's pooled
  # first token: {"pooler": True}).
  classifier_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  # Other `model.family` spellings for this graph, each with the fields it implies (RoBERTa:
  # BERT's graph with positions offset); a config names the family itself once resolved.
  aliases: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  # A Mixture-of-Experts family: model.moe must give it experts.
  experts: bool = False


_FAMILIES: dict[str, Family] = {}
_ALIASES: dict[str, tuple[str, Mapping[str, Any]]] = {}


def register_family(family: Family) -> None:
  """Adds `family` (and its aliases) to the names `model.family` accepts. Registering the same
  family twice is a no-op; another family under a taken name is an error."""
  for name in (family.name, *family.aliases):
    owner = _ALIASES[name][0] if name in _ALIASES else name if name in _FAMILIES else None
    if owner is not None and _FAMILIES[owner] != family:
      raise ValueError(f"model family {name!r} is already registered (by {owner!r}).")
  _FAMILIES[family.name] = family
  for alias, fields in family.aliases.items():
    _ALIASES[alias] = (family.name, fields)


def family_names() -> tuple[str, ...]:
  """Every name `model.family` accepts, aliases included, sorted."""
  return tuple(sorted({*_FAMILIES, *_ALIASES}))


def resolve_family(name: Any) -> tuple[Family, dict[str, Any]]:
  """(the family `name` denotes, the fields its alias implies: {} for the family itself).

  Raises UserError naming the value and every registered name."""
  if isinstance(name, str) and name in _ALIASES:
    owner, fields = _ALIASES[name]
    return _FAMILIES[owner], dict(fields)
  if not isinstance(name, str) or name not in _FAMILIES:
    raise UserError(f"model.family={name!r} is not a model family; lmjax builds "
                    f"{', '.join(family_names())}.")
  return _FAMILIES[name], {}


def dense_twins(family: Family) -> tuple[str, ...]:
  """The families whose graph is `family`'s without experts."""
  dense = {k: v for k, v in family.defaults.items() if k != "moe"}
  return tuple(sorted(name for name, f in _FAMILIES.items() if not f.experts and f.defaults == dense))


def family_fields(name: Any) -> tuple[str, dict[str, Any]]:
  """(the family's own name, its defaults with the alias's fields on top)."""
  family, alias_fields = resolve_family(name)
  return family.name, {**family.defaults, **alias_fields}


__all__ = ["Family", "dense_twins", "family_fields", "family_names", "register_family", "resolve_family"]
