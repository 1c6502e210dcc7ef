"""The key maps' vocabulary: lmjax param paths <-> HF tensor names, one table per model type
(each in its family file, lmjax/hf/families/).

A rule reads: these lmjax params (dotted paths, `{i}` for the layer) are this HF tensor after
`transform`. A table lists every param any variant of the family can have; the engine keeps the
rules whose params the model at hand has (no biases in Llama, an `lm_head` only when untied,
a pooler only when present), so one table covers all heads and options of a family. A head
rule may be limited to some heads (`heads`); head rules win over body rules for the same params
(RoBERTa's classifier holds the pooler as `classifier.dense`).

Body names are relative to the HF base model; head models nest the body under `base_prefix`
(e.g. `model.`) while bare base models (as sentence-embedding checkpoints are saved) do not.
Head names are absolute.
"""

from __future__ import annotations

import dataclasses

from lmjax.hf.transforms import IDENTITY, TRANSPOSE, Transform
from lmjax.model import Head


@dataclasses.dataclass(frozen=True)
class Rule:
  lmjax: tuple[str, ...]  # dotted lmjax param paths, e.g. "layers.{i}.attention.query.kernel"
  hf: str                 # HF tensor name, e.g. "h.{i}.attn.c_attn.weight"
  transform: Transform
  heads: frozenset[Head] = frozenset()  # the heads it applies to; empty: all
  # Per-layer rules: the first layer HF has the tensor in (ModernBERT's layer 0 has no attention
  # norm); the lmjax params' slices of the layers before it are left unused, zero on import.
  first_layer: int = 0


def rule(lmjax: str | tuple[str, ...], hf: str, transform: Transform = IDENTITY,
         heads: tuple[Head, ...] = (), first_layer: int = 0) -> Rule:
  return Rule((lmjax,) if isinstance(lmjax, str) else lmjax, hf, transform, frozenset(heads),
              first_layer)


def norm(lmjax: str, hf: str, first_layer: int = 0) -> list[Rule]:
  """A norm's scale (HF `weight`) and, for LayerNorm, its bias; RMSNorm has no bias param."""
  return [rule(f"{lmjax}.scale", f"{hf}.weight", first_layer=first_layer),
          rule(f"{lmjax}.bias", f"{hf}.bias", first_layer=first_layer)]


def dense(lmjax: str, hf: str, transform: Transform = TRANSPOSE,
          bias: Transform = IDENTITY, heads: tuple[Head, ...] = ()) -> list[Rule]:
  """A projection's kernel and (when the model has one) bias."""
  return [rule(f"{lmjax}.kernel", f"{hf}.weight", transform, heads),
          rule(f"{lmjax}.bias", f"{hf}.bias", bias, heads)]


# Sequence classifiers: encoders' `classifier`, decoders' bias-free `score`.
CLASSIFIER = tuple(dense("classifier", "classifier"))
SCORE = tuple(dense("classifier", "score"))
QKV = ("attention.query", "attention.key", "attention.value")


@dataclasses.dataclass(frozen=True)
class KeyMap:
  base_prefix: str             # HF `base_model_prefix`
  body: tuple[Rule, ...]       # names relative to the base model
  head: tuple[Rule, ...]       # absolute names
  tied_aliases: tuple[str, ...] = ()  # names a checkpoint may hold as copies of tied weights
  ignored: tuple[str, ...] = ()       # regexes: buffers and heads HF itself drops on load
  conv1d: bool = False                # kernels stored in x out (GPT-2's Conv1D): PEFT's
                                      # fan_in_fan_out


__all__ = ["CLASSIFIER", "QKV", "SCORE", "KeyMap", "Rule", "dense", "norm", "rule"]
