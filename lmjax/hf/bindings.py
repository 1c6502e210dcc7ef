"""The generic half of conversion: params as dotted keys, and key-map rules bound to them.

A params tree flattens to dotted keys ("layers.attention.query.kernel"). A rule with `{i}` is
bound once per layer: with scanned layers to slice i of the stacked param (leading [layers]
axis), unrolled to the param of module `layers_{i}`. A rule whose HF name also has `{e}` is
bound once per expert of each layer, to slice e of the param's [experts] axis (after [layers]
where scanned): HF stores each expert's weights as tensors of their own. Binding against the
model's abstract params (`jax.eval_shape` of init, no memory) drops rules for params this
variant lacks and checks that every param has a rule.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np

from lmjax.errors import UserError
from lmjax.hf.key_maps import KeyMap
from lmjax.hf.transforms import Transform, hf_shape
from lmjax.model import ModelConfig, param_shapes


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": x}} -> {"a.b": x}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{"a.b": x} -> {"a": {"b": x}}."""
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def abstract_params(config: ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
  """Flat shapes of the params `Transformer(config)` creates (nothing is allocated)."""
  return flatten(nn.unbox(param_shapes(config)))


Index = int | tuple[int, ...] | None


def index_dims(index: Index) -> int:
  """How many leading dims a target's index selects."""
  return 0 if index is None else len(index) if isinstance(index, tuple) else 1


@dataclasses.dataclass(frozen=True)
class Binding:
  """One HF tensor and the lmjax arrays it becomes."""

  hf_name: str                             # body names relative to the base model
  in_body: bool
  layer: int | None
  # (flat lmjax key, index into it: None for the whole array, a layer's slice i, or a tuple of
  # leading indices (layer, expert) / (expert,))
  targets: tuple[tuple[str, Index], ...]
  transform: Transform

  def lmjax_shapes(self, params: Mapping[str, Any]) -> list[tuple[int, ...]]:
    """Shapes of the target arrays (one layer's or expert's slice where stacked)."""
    return [tuple(params[key].shape[index_dims(i):]) for key, i in self.targets]

  def hf_shape(self, params: Mapping[str, Any], config: ModelConfig) -> tuple[int, ...]:
    return hf_shape(self.transform, self.lmjax_shapes(params), np.float32, config)


def _target(path: str, layer: int | None, expert: int | None, config: ModelConfig
            ) -> tuple[str, Index]:
  if layer is None:
    return path, None
  if not config.scan_layers:                   # layers_3.attention…, layers_3.mlp.experts_up[e]
    return path.replace(".{i}", f"_{layer}"), expert
  path = path.replace(".{i}", "")              # layers.attention… [layers, …], slice i
  return path, layer if expert is None else (layer, expert)


def bind(key_map: KeyMap, config: ModelConfig) -> list[Binding]:
  """The key map's rules for `config`'s params, in file order (embeddings, each layer, head).

  Head rules (for this head) are bound first, and a body rule whose params a head rule took is
  left out. A per-layer rule binds from its `first_layer` on. Raises UserError if a param has no
  rule (a head or option HF cannot express).
  """
  params = abstract_params(config)
  bindings, covered, unused = [], set(), set()
  head_rules = [r for r in key_map.head if not r.heads or config.head in r.heads]
  # File order: embeddings, then layer by layer, then final norm and pooler, then the head.
  layer_at = next((i for i, r in enumerate(key_map.body) if "{i}" in r.hf), len(key_map.body))
  ordered = [(False, 3, r) for r in head_rules] + [
      (True, 1 if "{i}" in r.hf else (0 if i < layer_at else 2), r)
      for i, r in enumerate(key_map.body)]
  experts = range(config.moe.num_experts)
  for in_body, group, rule in ordered:
    per_layer = "{i}" in rule.hf
    layers = range(rule.first_layer, config.num_layers) if per_layer else [None]
    if per_layer and rule.first_layer:  # slices HF lacks: the param counts as covered
      unused.update(_target(path, 0, None, config)[0] for path in rule.lmjax)
    slots = [(layer, expert) for layer in layers
             for expert in (experts if "{e}" in rule.hf else [None])]
    for layer, expert in slots:
      targets = tuple(_target(path, layer, expert, config) for path in rule.lmjax)
      present = [key in params for key, _ in targets]
      if not any(present) or all(target in covered for target in targets):
        continue  # this variant has no such param (a bias, an untied head, …), or a head took it
      if not all(present):
        raise RuntimeError(f"key map rule {rule} matches only some of its params")
      hf_name = rule.hf.format(i=layer, e=expert) if per_layer else rule.hf
      bindings.append((group, layer or 0, Binding(hf_name, in_body, layer, targets,
                                                    rule.transform)))
      covered.update(targets)
  missing = sorted(set(params) - {key for key, _ in covered} - unused)
  if missing:
    raise UserError(f"lmjax param {missing[0]} has no Hugging Face counterpart in this model "
                    f"family's key map (head={config.head.value}, pooler={config.pooler}); "
                    f"such a model cannot be converted.")
  return [b for _, _, b in sorted(bindings, key=lambda item: item[:2])]  # stable


def param_groups(bindings: list[Binding]) -> list[tuple[list[str], list[Binding]]]:
  """(params, bindings) groups such that each binding's params lie in one group: a param with
  the bindings of its layers, or params one HF tensor fills together (GPT-2's q/k/v kernels).

  Groups come in order of their first binding in `bindings`, and bindings keep their order.
  """
  group_of: dict[str, int] = {}              # param -> index into `members`
  members: list[list[Binding]] = []
  for binding in bindings:
    keys = [key for key, _ in binding.targets]
    found = sorted({group_of[key] for key in keys if key in group_of})
    if not found:
      found = [len(members)]
      members.append([])
    first = found[0]
    for other in found[1:]:  # this binding joins groups: merge them into the first
      members[first] += members[other]
      members[other] = []
      group_of.update({key: first for key, g in group_of.items() if g == other})
    members[first].append(binding)
    group_of.update({key: first for key in keys})
  order = {id(b): i for i, b in enumerate(bindings)}
  return [([key for key, g in group_of.items() if g == i],
           sorted(group, key=lambda b: order[id(b)])) for i, group in enumerate(members) if group]


__all__ = ["Binding", "abstract_params", "bind", "flatten", "param_groups", "unflatten"]
