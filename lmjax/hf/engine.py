"""Hugging Face checkpoints -> (Transformer, params) and back, for every family in one engine.

    model, params = from_hf("gpt2-dir")             # float32, scanned layers
    write_hf(model, params, "out-dir", dtype="bfloat16", tokenizer_dir="gpt2-dir")

`from_hf` reads config.json, checks every tensor name and shape against the family's key map
before reading any data, then fills preallocated params tensor by tensor (memory: the params
plus one HF tensor); `HfWeights` also makes one param at a time, for imports that write each
param as soon as it is made. `write_hf` builds each HF tensor only when its shard is written, in
a staging directory renamed into place on success; `export_params` does the same for params
read from disk a group at a time.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import pathlib
import re
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from lmjax.errors import UserError
from lmjax.files import read_json_object, staged_directory
from lmjax.hf.adapters import merged_view
from lmjax.hf.bindings import (Binding, abstract_params, bind, flatten, param_groups,
                                    unflatten)
from lmjax.hf.config import hf_config_to_model_config, model_config_to_hf_config
from lmjax.hf.family import model_type_named, model_type_of
from lmjax.hf.hub import resolve_hf_dir
from lmjax.hf.key_maps import KeyMap
from lmjax.hf.safetensors_files import CheckpointReader, TensorEntry, write_safetensors
from lmjax.hf.source_config import merge_source_config
from lmjax.hf.tokenizer_files import TOKENIZER_FILES, copy_tokenizer_files
from lmjax.model import Head, ModelConfig, Transformer
from lmjax.storage import as_path

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
_EXPORT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def read_hf_config(hf_dir: str | os.PathLike) -> dict[str, Any]:
  """The config.json of a Hugging Face model directory, as a dict."""
  config = read_json_object(as_path(hf_dir) / CONFIG_FILE)
  if config is None:
    raise UserError(f"{hf_dir} is not a Hugging Face model directory: it has no {CONFIG_FILE}.")
  return config


def _shown(names: list[str], limit: int = 5) -> str:
  more = f" and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def _relative_names(names, key_map: KeyMap) -> dict[str, str]:
  """Stored tensor names by their name relative to the base model (head names unchanged)."""
  prefix = key_map.base_prefix + "."
  return {name[len(prefix):] if name.startswith(prefix) else name: name for name in names}


def _check_tensors(bindings: list[Binding], stored: Mapping[str, str], reader: CheckpointReader,
                   key_map: KeyMap, config: ModelConfig) -> None:
  """Missing, unexpected and misshapen tensors -> UserError, before any data is read."""
  params = abstract_params(config)
  expected = {b.hf_name: b for b in bindings}
  missing = [name for name in expected if name not in stored]
  if missing:
    prefix = key_map.base_prefix + "."
    if not any(name.startswith(prefix) for name in stored.values()):
      prefix = ""  # a bare base-model checkpoint
    shapes = [f"{prefix if expected[n].in_body else ''}{n} "
              f"{list(expected[n].hf_shape(params, config))}" for n in missing]
    raise UserError(f"{reader.dir} is missing tensor(s) that its config.json implies: "
                    f"{_shown(shapes)}.")
  tolerated = [re.compile(pattern) for pattern in key_map.ignored]
  aliases = set(key_map.tied_aliases) if config.tie_embeddings else set()
  unexpected = [stored[name] for name in stored if name not in expected and name not in aliases
                and not any(p.fullmatch(name) for p in tolerated)]
  if unexpected:
    raise UserError(f"{reader.dir} holds tensor(s) this {config.family}-family model has no "
                    f"place for: {_shown(sorted(unexpected))}. Is config.json "
                    f"(architectures, sizes, tie_word_embeddings) the one these weights belong to?")
  for name, binding in expected.items():
    want, got = binding.hf_shape(params, config), reader.shapes[stored[name]]
    if want != got:
      raise UserError(f"tensor {stored[name]} in {reader.dir} has shape {list(got)}, but "
                      f"config.json implies {list(want)}.")


def _check_size(config: ModelConfig, reader: CheckpointReader) -> None:
  """A config.json that implies far more weights than the files hold (num_hidden_layers=10**6,
  hidden_size=10**9) is refused before anything is built for it (per-layer bindings, shapes):
  the implied count is a lower bound (the blocks' matmuls and one embedding)."""
  implied = config.num_layers * config.block_param_count() + config.embed_dim * config.vocab_size
  stored = sum(math.prod(shape) for shape in reader.shapes.values())
  if implied > 1.05 * stored + 4096:
    raise UserError(f"{reader.dir}/{CONFIG_FILE} implies at least {implied:,} weights "
                    f"({config.num_layers} layers of width {config.embed_dim}, vocabulary "
                    f"{config.vocab_size}), but its weight files hold {stored:,}: config.json "
                    f"does not describe these weights (check num_hidden_layers, hidden_size, "
                    f"intermediate_size and vocab_size).")


class HfWeights:
  """A Hugging Face model directory opened for import: its ModelConfig, and its tensors, checked
  against the family's key map before any data is read, made into lmjax params on request.

      with HfWeights(hf_dir) as weights:
        weights.config, weights.specs        # ModelConfig; flat key -> ShapeDtypeStruct
        flat = weights.read_params()         # every param: memory holds them and one HF tensor
        kernel = weights.read_param(key)     # one param: memory holds it and one HF tensor

  Raises UserError for unsupported configs and for missing, unexpected or misshapen tensors,
  naming them.
  """

  def __init__(self, hf_dir: str | os.PathLike, *, dtype: Any = jnp.float32,
               scan_layers: bool = True, allow_pickle: bool = False):
    hf_dir = as_path(resolve_hf_dir(hf_dir))  # a hub id: its snapshot in the local cache
    self.hf_config = read_hf_config(hf_dir)
    model_type = model_type_of(self.hf_config)
    key_map = model_type.key_map
    config = hf_config_to_model_config(self.hf_config, scan_layers=scan_layers)
    self.dtype = _dtype(dtype)
    if self.dtype not in (*_EXPORT_DTYPES.values(), np.dtype(np.float16)):
      raise UserError(f"dtype={dtype!r} is not a parameter dtype; use float32 (the default), "
                      f"bfloat16 or float16.")
    self._reader = CheckpointReader(hf_dir, allow_pickle=allow_pickle)  # reads headers only
    _check_size(config, self._reader)
    self._stored = _relative_names(self._reader.shapes, key_map)
    if model_type.optional_pooler and config.head is Head.NONE:  # saved with or without it
      config = dataclasses.replace(config, pooler=model_type.optional_pooler in self._stored)
    self.config = config
    self._bindings = bind(key_map, config)
    _check_tensors(self._bindings, self._stored, self._reader, key_map, config)
    self.specs = {key: jax.ShapeDtypeStruct(s.shape, self.dtype)
                  for key, s in abstract_params(config).items()}

  def _fill(self, flat: Mapping[str, np.ndarray], binding: Binding) -> None:
    """Reads `binding`'s HF tensor into those of its targets that `flat` holds."""
    arrays = binding.transform.to_lmjax(self._reader.read(self._stored[binding.hf_name]),
                                        self.config)
    for (key, layer), array in zip(binding.targets, arrays):
      if key in flat:
        destination = flat[key] if layer is None else flat[key][layer]
        destination[...] = array  # casts to the param dtype

  def read_params(self) -> dict[str, np.ndarray]:
    """Every param (flat keys), reading the weight files in turn, each once."""
    # Zeros (pages the OS gives on first write): slices a checkpoint lacks (ModernBERT's unused
    # layer-0 attention norm) stay defined.
    flat = {key: np.zeros(spec.shape, self.dtype) for key, spec in self.specs.items()}
    file_of = lambda b: self._reader.file_of(self._stored[b.hf_name])
    for _, group in itertools.groupby(sorted(self._bindings, key=file_of), key=file_of):
      for binding in group:
        self._fill(flat, binding)
    return flat

  def read_param(self, key: str) -> np.ndarray:
    """Param `key`, from the HF tensors it is made of (each layer's, where stacked)."""
    flat = {key: np.zeros(self.specs[key].shape, self.dtype)}
    for binding in self._bindings:
      if any(target == key for target, _ in binding.targets):
        self._fill(flat, binding)  # GPT-2's fused q/k/v tensor is read once per param
    return flat[key]

  def close(self) -> None:
    self._reader.close()

  def __enter__(self) -> HfWeights:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def from_hf(hf_dir: str | os.PathLike, *, dtype: Any = jnp.float32, scan_layers: bool = True,
            allow_pickle: bool = False) -> tuple[Transformer, dict[str, Any]]:
  """A Hugging Face model directory (or hub id in the local cache, lmjax.hf.hub) -> (Transformer,
  params) computing the same function.

  Params are `dtype` (float32 by default; bfloat16 keeps a bf16 checkpoint bit for bit) jax
  arrays, with a leading [layers] axis when `scan_layers`. Reads safetensors tensor by tensor;
  `pytorch_model.bin` only with `allow_pickle`. Raises UserError for unsupported configs and for
  missing, unexpected or misshapen tensors, naming them.
  """
  with HfWeights(hf_dir, dtype=dtype, scan_layers=scan_layers,
                 allow_pickle=allow_pickle) as weights:
    flat = weights.read_params()
  # One param at a time, each copy finished before the next begins (the copies are asynchronous
  # otherwise, and would hold every numpy array until the last is copied): memory holds the
  # params once, plus one.
  params = unflatten({key: jnp.asarray(flat.pop(key)).block_until_ready() for key in list(flat)})
  return Transformer(weights.config), params


def _dtype(dtype: Any) -> np.dtype:
  try:
    return np.dtype(dtype)
  except TypeError:
    raise UserError(f"dtype={dtype!r} is not a dtype; use float32 or bfloat16.") from None


def _export_dtype(dtype: Any, specs: Mapping[str, Any]) -> np.dtype:
  if dtype is None:
    found = {np.dtype(spec.dtype) for spec in specs.values()}
    if len(found) != 1 or next(iter(found)) not in _EXPORT_DTYPES.values():
      raise UserError(f"params have dtypes {sorted(map(str, found))}: pass dtype= one of "
                      f"{', '.join(_EXPORT_DTYPES)} to choose the file dtype.")
    return next(iter(found))
  name = dtype if isinstance(dtype, str) else str(_dtype(dtype))
  if name not in _EXPORT_DTYPES:
    raise UserError(f"dtype={dtype!r} is not supported for export; choose one of "
                    f"{', '.join(_EXPORT_DTYPES)}.")
  return _EXPORT_DTYPES[name]


def _check_params(specs: Mapping[str, Any], config: ModelConfig) -> None:
  expected = abstract_params(config)
  for key in sorted(set(expected) | set(specs)):
    if key not in specs:
      raise UserError(f"params lack {key} (shape {list(expected[key].shape)}), which a model "
                      f"with this config has: are these the params of this model?")
    if key not in expected:
      raise UserError(f"params hold {key}, which a model with this config does not have "
                      f"(scan_layers={config.scan_layers}): are these the params of this model?")
    if tuple(specs[key].shape) != tuple(expected[key].shape):
      raise UserError(f"param {key} has shape {list(specs[key].shape)}, but the config implies "
                      f"{list(expected[key].shape)}.")


class _OneGroupAtATime(Mapping[str, Any]):
  """Params by flat key, read a group at a time through `read`; the previous group is dropped
  before the next is read, so memory holds one group."""

  def __init__(self, read: Callable[[Sequence[str]], Mapping[str, Any]],
               groups: Sequence[Sequence[str]]):
    self._read = read
    self._group_of = {key: tuple(group) for group in groups for key in group}
    self._held: dict[str, Any] = {}

  def __getitem__(self, key: str) -> Any:
    if key not in self._held:
      self._held = {}
      self._held = dict(self._read(self._group_of[key]))
    return self._held[key]

  def __iter__(self):
    return iter(self._group_of)

  def __len__(self) -> int:
    return len(self._group_of)


def _hf_tensor(binding: Binding, flat: Mapping[str, Any], dtype: np.dtype,
               config: ModelConfig) -> np.ndarray:
  """One HF tensor in `dtype`, from its lmjax arrays (a layer's slice where stacked)."""
  arrays = [np.asarray(flat[key] if layer is None else flat[key][layer]).astype(dtype, copy=False)
            for key, layer in binding.targets]
  return binding.transform.to_hf(arrays, config)


def write_hf(model: Transformer, params: Mapping[str, Any], out_dir: str | os.PathLike, *,
             dtype: str | None = None, max_shard_size: int = 2 * 2**30,
             tokenizer_dir: str | os.PathLike | None = None,
             source_config: Mapping[str, Any] | None = None,
             generation: Mapping[str, Any] | None = None,
             config_overrides: Mapping[str, Any] | None = None,
             tokenizer_pad_token: str | None = None) -> None:
  """Writes `model`/`params` as a Hugging Face model directory `out_dir` (new or empty).

  Writes config.json (plus generation_config.json for causal LMs) and model.safetensors, or
  shards of at most `max_shard_size` bytes plus model.safetensors.index.json, in `dtype`
  ("float32" or "bfloat16"; default: the params' dtype), and copies the tokenizer files of
  `tokenizer_dir`. A LoRA model is written with its adapters merged into the weights
  (lmjax.hf.adapters; `lmjax convert lmjax-to-peft` writes them alone).

  config.json keeps every field of `source_config` (the config.json the model came from) that
  still describes the exported graph: special token ids, label names, dropout rates and the
  rest a ModelConfig does not hold (lmjax.hf.source_config); `generation` (the source's
  generation_config.json) is written as it is. `config_overrides` are merged in last (e.g.
  {"eos_token_id": 2}). Nothing appears at `out_dir` unless the whole conversion succeeds.
  The public `lmjax.to_hf` (lmjax.convert.export) also takes a loaded model with its source.
  """
  flat = flatten(nn.unbox(params))
  specs = {key: jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype) for key, leaf in flat.items()}
  export_params(model.config, specs, lambda keys: {key: flat[key] for key in keys}, out_dir,
                dtype=dtype, max_shard_size=max_shard_size, tokenizer_dir=tokenizer_dir,
                source_config=source_config, generation=generation,
                config_overrides=config_overrides, tokenizer_pad_token=tokenizer_pad_token)


def export_params(config: ModelConfig, specs: Mapping[str, jax.ShapeDtypeStruct],
                  read: Callable[[Sequence[str]], Mapping[str, Any]],
                  out_dir: str | os.PathLike, *, dtype: str | None = None,
                  max_shard_size: int = 2 * 2**30, tokenizer_dir: str | os.PathLike | None = None,
                  source_config: Mapping[str, Any] | None = None,
                  generation: Mapping[str, Any] | None = None,
                  config_overrides: Mapping[str, Any] | None = None,
                  tokenizer_pad_token: str | None = None) -> None:
  """`write_hf` for params that are read on demand, e.g. from a checkpoint on disk.

  `specs` gives each param's shape and dtype (flat keys); `read(keys)` returns those params as
  host arrays. Tensors are written param by param (all layers of a stacked param in a row), and
  `read` is called once per group of params that HF tensors need together (a single param, or
  GPT-2's query/key/value, fused in HF), the previous group dropped first: memory holds one
  group and one HF tensor. `tokenizer_pad_token` names the pad token in the copied
  tokenizer_config.json where it names none (a decoder classifier padding with its eos).
  """
  if config.lora.enabled:  # LoRA adapters are exported merged into the weights
    config, specs, read = merged_view(config, specs, read)
  hf_config = merge_source_config(model_config_to_hf_config(config), source_config)
  key_map = model_type_named(hf_config["model_type"]).key_map
  _check_params(specs, config)
  out_dtype = _export_dtype(dtype, specs)
  hf_config.update(config_overrides or {}, dtype=str(out_dtype))
  prefix = "" if config.head is Head.NONE else key_map.base_prefix + "."
  abstract = abstract_params(config)
  groups = param_groups(bind(key_map, config))
  flat = _OneGroupAtATime(read, [keys for keys, _ in groups])
  entries = []
  for _, bindings in groups:
    for binding in bindings:
      entries.append(TensorEntry(
          name=prefix + binding.hf_name if binding.in_body else binding.hf_name,
          shape=tuple(binding.hf_shape(abstract, config)), dtype=out_dtype,
          make=lambda b=binding: _hf_tensor(b, flat, out_dtype, config)))
  with staged_directory(out_dir) as staging:
    _write_json(staging / CONFIG_FILE, hf_config)
    if generation:  # the source's, as it was
      _write_json(staging / GENERATION_CONFIG_FILE, generation)
    elif config.head is Head.CAUSAL_LM:
      _write_json(staging / GENERATION_CONFIG_FILE, generation_config(hf_config))
    write_safetensors(staging, entries, max_shard_size=max_shard_size)
    if tokenizer_dir is not None and not copy_tokenizer_files(tokenizer_dir, staging):
      raise UserError(f"tokenizer_dir {tokenizer_dir} holds no tokenizer files (looked for "
                      f"{', '.join(TOKENIZER_FILES)}, *.model).")
    if tokenizer_pad_token is not None:
      tokenizer_config = read_json_object(staging / "tokenizer_config.json")
      if tokenizer_config is not None and tokenizer_config.get("pad_token") is None:
        tokenizer_config["pad_token"] = tokenizer_pad_token
        _write_json(staging / "tokenizer_config.json", tokenizer_config)


def generation_config(hf_config: Mapping[str, Any]) -> dict[str, Any]:
  """The generation_config.json of a causal LM: its special token ids, as transformers'
  `GenerationConfig.from_model_config` derives them from config.json."""
  ids = {key: hf_config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")
         if hf_config.get(key) is not None}
  return {"_from_model_config": True, **ids}


def _write_json(path: pathlib.Path, content: Mapping[str, Any]) -> None:
  path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


__all__ = ["HfWeights", "export_params", "from_hf", "generation_config", "read_hf_config",
           "write_hf"]
