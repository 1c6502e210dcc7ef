"""Low-rank adapters (LoRA, Hu et al. 2021) on the blocks' projections, as `peft` defines them.

A targeted projection `y = x W` gains two small matrices, `lora_a` [*in, rank] and `lora_b`
[rank, *out], and computes

    y = x W + scale * dropout(x) lora_a lora_b,   scale = alpha / rank  (rsLoRA: alpha / sqrt(rank))

with `lora_b` initialised to zero (a fresh adapter is the identity) and `lora_a` as peft's
kaiming-uniform (bound 1/sqrt(fan_in)). The adapters carry the logical axis names of the
kernel's in and out dims plus "lora_rank", so FSDP and tensor parallelism shard them with the
kernel. Training then updates only `lora_*` params (lmjax.model.trainable); `merge_lora` folds
them into the kernels for an ordinary export.

Hand-written rather than Google's qwix: qwix intercepts `dot_general` and recovers the kernel
from the traced operands, which fails inside our 2-D `matmul` (params created in an inner jit
trace), names the adapters of multi-dimensional kernels (heads x head_dim) with the wrong
logical axes, silently skips kernels it cannot trace back, and keeps LoRA dropout on at eval.
One branch in `DenseGeneral` has none of those problems.

Targets name the blocks' projections: lmjax's names (`query key value out wi wi_gate wi_up
wo`), `all-linear`, Hugging Face's (`q_proj k_proj v_proj o_proj gate_proj up_proj down_proj`;
GPT-2's `c_attn c_fc c_proj`, where `c_proj` is both the attention's and the MLP's output, as
in peft; DistilBERT's `q_lin k_lin v_lin out_lin lin1 lin2`; ModernBERT's `Wqkv Wi Wo`), or a regular expression matched against a module's path below its layer
("attention/query", "mlp/w.*").
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

import numpy as np

from lmjax.errors import UserError

HF_ALIASES = {
    "q_proj": ("attention/query",), "k_proj": ("attention/key",), "v_proj": ("attention/value",),
    "o_proj": ("attention/out",), "gate_proj": ("mlp/wi_gate",), "up_proj": ("mlp/wi_up",),
    "down_proj": ("mlp/wo",), "c_attn": ("attention/query", "attention/key", "attention/value"),
    "c_fc": ("mlp/wi",), "c_proj": ("attention/out", "mlp/wo"),
    # DistilBERT's
    "q_lin": ("attention/query",), "k_lin": ("attention/key",), "v_lin": ("attention/value",),
    "out_lin": ("attention/out",), "lin1": ("mlp/wi",), "lin2": ("mlp/wo",),
    # ModernBERT's, whose `Wo` is both the attention's and the MLP's output, as GPT-2's c_proj
    "Wqkv": ("attention/query", "attention/key", "attention/value"),
    "Wi": ("mlp/wi_gate", "mlp/wi_up"), "Wo": ("attention/out", "mlp/wo"),
}
ADAPTER_NAMES = ("lora_a", "lora_b")


def block_projections(gated_mlp: bool) -> tuple[str, ...]:
  """Every projection of a block, as a path below the layer."""
  mlp = ("mlp/wi_gate", "mlp/wi_up") if gated_mlp else ("mlp/wi",)
  return ("attention/query", "attention/key", "attention/value", "attention/out", *mlp, "mlp/wo")


def matches(target: str, module: str) -> bool:
  """Whether `target` names `module` (a path below the layer, e.g. "attention/query")."""
  if target == "all-linear":
    return True
  if target in HF_ALIASES:
    return module in HF_ALIASES[target]
  return module.split("/")[-1] == target or re.fullmatch(target, module) is not None


def targeted(targets: Iterable[str], module: str) -> bool:
  return any(matches(t, module) for t in targets)


def layer_module(path: tuple[str, ...]) -> str | None:
  """The path below its layer of a module at `path` (("layers", "attention", "query") ->
  "attention/query"), or None for a module outside the blocks (heads, pooler)."""
  for i, name in enumerate(path):
    if name == "layers" or re.fullmatch(r"layers_\d+", name):
      return "/".join(path[i + 1:])
  return None


def check_targets(targets: tuple[str, ...], projections: dict[str, tuple[int, int]], *,
                  key: str = "model.lora.targets", rank: int | None = None) -> None:
  """UserError for a target (of config `key`) that names no projection, or a LoRA `rank` no
  projection can take; `projections` maps each block projection to its (fan_in, fan_out)."""
  if not targets:
    raise UserError(f"{key} is empty: name the projections, e.g. [query, value] or "
                    f"[all-linear].")
  for target in targets:
    if target not in HF_ALIASES and target != "all-linear":
      try:
        re.compile(target)
      except re.error as e:
        raise UserError(f"{key}: {target!r} is not a valid pattern ({e}).") from None
    if not any(matches(target, m) for m in projections):
      raise UserError(f"{key}: {target!r} matches no projection of this model; "
                      f"they are {', '.join(projections)} (or all-linear, or the Hugging Face "
                      f"names {', '.join(HF_ALIASES)}).")
  if rank is None:
    return
  adapted = {m: fans for m, fans in projections.items() if targeted(targets, m)}
  module = min(adapted, key=lambda m: min(adapted[m]))  # the narrowest adapted projection
  fan_in, fan_out = adapted[module]
  if rank > min(fan_in, fan_out):
    raise UserError(f"model.lora.rank={rank} is larger than {module} ({fan_in} -> {fan_out}) "
                    f"can use: at most {min(fan_in, fan_out)}.")


def scale(alpha: float, rank: int, rslora: bool) -> float:
  return alpha / math.sqrt(rank) if rslora else alpha / rank


def is_adapter(path: Iterable[Any]) -> bool:
  """Whether a param path (keys, or jax path entries) is a LoRA adapter's."""
  return any(getattr(k, "key", k) in ADAPTER_NAMES for k in path)


def adapter_delta(lora_a: np.ndarray, lora_b: np.ndarray, kernel_shape: tuple[int, ...],
                  factor: float) -> np.ndarray:
  """factor * lora_a @ lora_b shaped like the kernel, stacked layers included.

  lora_a [L?, *in, r] and lora_b [L?, r, *out] for a kernel [L?, *in, *out]; L is the scanned
  layers' axis when present.
  """
  stacked = lora_a.ndim + lora_b.ndim - 2 - len(kernel_shape)  # 1 with a layers axis, else 0
  rank = lora_a.shape[-1]
  layers = tuple(kernel_shape[:stacked])
  a = np.asarray(lora_a, np.float32).reshape(*layers, -1, rank)
  b = np.asarray(lora_b, np.float32).reshape(*layers, rank, -1)
  return (factor * np.matmul(a, b)).reshape(kernel_shape)


def merge_lora(params: dict, rank: int, alpha: float, rslora: bool) -> dict:
  """`params` with every adapter folded into its kernel and the `lora_*` params removed: the
  same function as the adapted model, as a model without LoRA."""
  factor = scale(alpha, rank, rslora)

  def merge(node):
    if not isinstance(node, dict):
      return node
    if "lora_a" in node:
      kernel = np.asarray(node["kernel"], np.float32)
      merged = {k: v for k, v in node.items() if k not in ADAPTER_NAMES}
      merged["kernel"] = (kernel + adapter_delta(node["lora_a"], node["lora_b"], kernel.shape,
                                                 factor)).astype(np.asarray(node["kernel"]).dtype)
      return merged
    return {k: merge(v) for k, v in node.items()}
  return merge(dict(params))
