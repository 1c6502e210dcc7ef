"""THE loader: a model with everything it came with, from wherever a command or a script points.

    m = lmjax.load("runs/demo")     # a run dir, an HF dir, a hub id in the local cache or a
                                    # .gguf file (imported once as an HF dir, lmjax.hf.gguf)
    m.model, m.params, m.tokenizer, m.config, m.chat_template, m.source, m.step
    model, params = lmjax.load_run("runs/demo", step=100, mesh=mesh)   # thin alias

Every reader of a model goes through here: generate, predict, eval, eval-harness, score,
fill-mask, export, verify and `model.init_from` (`load_source`, which wants the params only, in
a config's layer layout). A LoRA run fine-tuned from a base saves only its adapters
(lmjax.run.base_ref); loading it brings the base too, checked by content hash, so that every
reader sees the whole model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from lmjax.config import is_run_directory
from lmjax.config_schema import build
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.hf.engine import from_hf, read_hf_config
from lmjax.hf.gguf.materialise import is_gguf_source
from lmjax.hf.gguf.quantized import BLOCK, file_quantized, stores_q8_0
from lmjax.hf.hub import resolve_hf_dir
from lmjax.model import ModelConfig, Transformer, param_shapes
from lmjax.model.lora import merge_lora
from lmjax.model.quant_config import QuantizationConfig, QuantScheme
from lmjax.model.quantize import dequantize_params, is_quantized, quantize_like, quantize_params
from lmjax.model.trainable import frozen_dtype
from lmjax.run.base_ref import BaseRef, check_base
from lmjax.run.restore import restore_params
from lmjax.run.run_dir import RunDir
from lmjax.run.source_fields import export_fields
from lmjax.storage import as_path

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A model with what came with it: params, tokenizer, and where it came from."""

  model: Transformer
  params: Any
  tokenizer: Tokenizer | None  # None only where the source has no tokenizer files
  directory: pathlib.Path      # the run or HF directory it was read from
  is_run: bool
  origin: str = ""             # what was asked for: a path, or a hub id
  step: int | None = None      # a run's checkpoint step

  @property
  def config(self) -> ModelConfig:
    """The model's config (the graph)."""
    return self.model.config

  @property
  def source(self) -> str:
    """Where it came from: the run or Hugging Face directory."""
    return str(self.directory)

  @property
  def tokenizer_dir(self) -> pathlib.Path:
    """The directory holding the tokenizer's files."""
    return RunDir(self.directory).tokenizer_dir if self.is_run else self.directory

  @property
  def chat_template(self) -> str | None:
    """The chat template source `--chat` renders with: a run's data.chat_template, else its
    tokenizer directory's (or the HF directory's) own (lmjax.data.tokenize.chat.load_template)."""
    if not self.is_run:
      return str(self.directory)
    return RunDir(self.directory).require_config().data.chat_template or str(self.tokenizer_dir)

  def generation_config(self) -> dict[str, Any]:
    """The directory's `generation_config.json` (HF's sampling defaults), {} when absent."""
    path = self.directory / "generation_config.json"
    if not path.is_file():
      return {}
    try:
      settings = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      raise UserError(f"{path} is not readable JSON ({e}): fix or delete it.") from None
    if not isinstance(settings, dict):
      raise UserError(f"{path} holds a {type(settings).__name__}, not a JSON object: fix or "
                      f"delete it.")
    return settings

  @functools.cached_property
  def export_fields(self) -> dict[str, Any]:
    """What an export writes beside the ModelConfig (`write_hf`'s source_config, generation,
    config_overrides and tokenizer_pad_token): the source's config.json fields, generation
    defaults, special-token ids and label names (lmjax.run.source_fields). Read on first use:
    a model that is never exported never needs them."""
    if self.is_run:
      run = RunDir(self.directory)
      return export_fields(run, run.require_config(), self.tokenizer)
    return dict(source_config=read_hf_config(self.directory),
                generation=self.generation_config() or None, config_overrides={},
                tokenizer_pad_token=None)

  @property
  def hf_config(self) -> dict[str, Any]:
    """The source's config.json fields an export keeps (with a run's tokenizer ids and labels)."""
    fields = self.export_fields
    return {**(fields["source_config"] or {}), **fields["config_overrides"]}


def load(source: str | pathlib.Path, *, step: int | None = None, dtype: str = "float32",
         mesh: Mesh | None = None, rules: Any = None, require_tokenizer: bool = False,
         kind: str | None = None, quantization: Mapping[str, Any] | None = None) -> Loaded:
  """The model at `source`: a run directory (checkpoint `step`, default the newest that
  restores), a Hugging Face model directory, a hub id in the local cache or a GGUF file (read
  as the Hugging Face directory it is imported into, `directory`; lmjax.hf.gguf).

  `dtype="bfloat16"` casts the floating-point params and computes in bfloat16 (half the memory;
  on CPU often slower). A run's params are placed on `mesh` by `rules` (see `load_run`).
  `require_tokenizer` makes a source without tokenizer files an error (else `tokenizer=None`).
  `kind` ("run" or "hf") is what the caller was told `source` is (`--run-dir`, `--hf`): a
  source of the other kind is then refused, naming both. `quantization` holds `model.quantization`
  keys (`{"scheme": "int8"}`): the projections it targets are then held quantized
  (lmjax.model.quantize), and the float copy is dropped.
  """
  if dtype not in DTYPES:
    raise UserError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
  is_run = is_run_directory(source)
  if kind == "run" and not is_run:
    RunDir(source).require_config()  # its message: not a run directory, and what to do
  if kind == "hf" and is_run:
    raise UserError(f"{source} is an lmjax run directory, not a Hugging Face model: pass it as "
                    f"--run-dir {source}.")
  if is_run:
    model, params, step = load_run_at(source, step, mesh=mesh, rules=rules)
    directory = RunDir(source).path
    tokenizer_dir = RunDir(source).tokenizer_dir
  else:
    if step is not None:
      raise UserError(f"--step {step} selects a run's checkpoint, but {source} is a Hugging "
                      f"Face model: drop --step.")
    directory = as_path(resolve_hf_dir(source))
    model, params = from_hf(directory)
    tokenizer_dir = directory
  tokenizer = (Tokenizer.from_file(tokenizer_dir)
               if require_tokenizer or Tokenizer.readable_in(tokenizer_dir) else None)
  if dtype == "bfloat16":
    model = Transformer(model.config, jnp.bfloat16)
    params = jax.tree.map(
        lambda a: a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
  if quantization:
    gguf = None if is_run or not is_gguf_source(source) else source
    model, params = quantized(model, params, quantization, gguf=gguf)
  return Loaded(model, params, tokenizer, directory, is_run, origin=str(source), step=step)


def quantized(model: Transformer, params: Any, keys: Mapping[str, Any], *,
              gguf: str | pathlib.Path | None = None) -> tuple[Transformer, Any]:
  """The model with `keys` as its `model.quantization` section, and `params` quantized for it;
  those of GGUF file `gguf` whose blocks are that scheme already kept as the file holds them."""
  config = with_quantization(model.config, keys)
  if config is model.config:  # a QLoRA run's base: quantized already
    return model, params
  if gguf is not None:  # Q8_0 as int8 in groups of 32: the file's own numbers, not re-rounded
    spec = config.quantization
    if spec.scheme is QuantScheme.INT8 and spec.group_size is None and stores_q8_0(gguf):
      config = dataclasses.replace(  # --quantize int8 of a Q8_0 file: its groups
          config, quantization=dataclasses.replace(spec, group_size=BLOCK))
    params = file_quantized(gguf, config, params)
  return Transformer(config, model.dtype), quantize_params(params, param_shapes(config))


def with_quantization(config: ModelConfig, keys: Mapping[str, Any]) -> ModelConfig:
  """`config` with `keys` (`{"scheme": "int8"}`, as --quantize gives) as its `model.quantization`
  section; `config` itself where it holds that scheme already (a QLoRA run's base, which stays
  as trained); UserError for another scheme there."""
  spec = build(QuantizationConfig, keys, "model.quantization")
  held = config.quantization
  if held.enabled:
    if spec.scheme is not held.scheme:
      raise UserError(f"--quantize {spec.scheme.value}: this model's base is held quantized "
                      f"already ({held.scheme.value}, model.quantization of a QLoRA run): drop "
                      f"--quantize.")
    return config
  return dataclasses.replace(config, quantization=spec)


def check_vocabulary(tokenizer: Tokenizer, config: ModelConfig, where: Any) -> None:
  """UserError when `tokenizer` (of directory `where`) makes ids the model has no rows for
  (they would silently read other rows of the embedding: its lookup clips)."""
  if tokenizer.vocab_size > config.vocab_size:
    raise UserError(f"the tokenizer in {where} makes ids up to {tokenizer.vocab_size - 1}, but "
                    f"the model's vocabulary has {config.vocab_size} rows (vocab_size): is it "
                    f"this model's tokenizer? Put the model's own tokenizer files there.")


def load_run(run_dir: str | pathlib.Path, step: int | None = None, *, mesh: Mesh | None = None,
             rules: Any = None) -> tuple[Transformer, Any]:
  """The run's float32 model and params at `step` (default: the latest complete checkpoint).

  Params are placed on `mesh` (default: all devices, data parallel) by `rules` (a table as
  `mesh.rules` takes, e.g. [["embed", "fsdp"], ["heads", "tensor"]]; default: the run's own
  `mesh.rules`, else the standard one, lmjax.sharding.LOGICAL_AXIS_RULES). With `step=None`,
  a newest checkpoint that cannot be restored (a torn or damaged write) is skipped with a
  warning and the next older one is loaded. A LoRA run whose checkpoints hold only its adapters
  comes with its base, loaded from `model.init_from` once its content hash matches.
  """
  model, params, _ = load_run_at(run_dir, step, mesh=mesh, rules=rules)
  return model, params


def load_run_at(run_dir: str | pathlib.Path, step: int | None = None, *, mesh: Mesh | None = None,
                rules: Any = None) -> tuple[Transformer, Any, int]:
  """`load_run`, also returning the step it loaded."""
  config = RunDir(run_dir).require_config()
  return restore_params(run_dir, step, mesh=mesh, rules=rules, base=lambda ref, abstract:
                        frozen_params(ref, config.init_from, config.model, abstract))


def load_source(source: str | pathlib.Path, config: ModelConfig, step: int | None = None
                ) -> tuple[Any, int | None]:
  """(params, the checkpoint step read) of run or HF directory `source` in `config`'s layer
  layout (host or device arrays; the step is None for an HF directory): `model.init_from`'s
  weights. A run's own LoRA adapters, if they are not `config`'s, are merged into its weights."""
  if is_run_directory(source):
    model, params, step = load_run_at(source, step)
    params = dequantize_params(params)  # a QLoRA run's base: float, as this config takes it
    spec = model.config.lora
    if spec.enabled and spec != config.lora:  # another adapter: fold it into the base weights
      params = merge_lora(jax.device_get(params), spec.rank, spec.alpha, spec.rslora)
  else:
    _, params = from_hf(resolve_hf_dir(source), scan_layers=config.scan_layers)
  return to_layer_layout(params, scanned=config.scan_layers, num_layers=config.num_layers), step


def to_layer_layout(params: dict, *, scanned: bool, num_layers: int) -> dict:
  """Stacks `layers_i` into `layers` (scanned) or splits `layers` into `layers_i`."""
  params = dict(params)
  if scanned and "layers_0" in params:
    per_layer = [params.pop(f"layers_{i}") for i in range(num_layers)]
    params["layers"] = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *per_layer)
  elif not scanned and "layers" in params:
    stacked = params.pop("layers")
    for i in range(num_layers):
      params[f"layers_{i}"] = jax.tree.map(lambda x: x[i], stacked)
  return params


def frozen_params(ref: BaseRef, configured: str | None, config: ModelConfig, abstract: Any) -> Any:
  """The frozen params `abstract` (ShapeDtypeStructs, sharded or not) names, read from the base
  `ref` refers to (at `configured`, the run's `model.init_from`, else where it was), checked
  to be the one trained on, as training held them (rounded to `model.lora.base_dtype`)."""
  source = check_base(ref, configured)
  loaded = traverse_util.flatten_dict(load_source(source, config, ref.step)[0], sep="/")
  stored = frozen_dtype(config)
  placed = {}
  for path, spec in traverse_util.flatten_dict(abstract, sep="/").items():
    value = loaded.get(path)
    if value is None or tuple(value.shape) != tuple(spec.shape):
      raise UserError(f"the base model {source} has no param {path} of shape "
                      f"{list(spec.shape)}, which this run's model needs.")
    if is_quantized(spec):  # QLoRA: quantized from float32 as training did, never rounded
      placed[path] = quantize_like(value, spec)
      continue
    array = np.asarray(value).astype(stored).astype(spec.dtype)
    sharding = getattr(spec, "sharding", None)
    placed[path] = jax.device_put(array, sharding) if sharding is not None else array
  return traverse_util.unflatten_dict(placed, sep="/")


__all__ = ["DTYPES", "Loaded", "frozen_params", "load", "load_run", "load_run_at", "load_source",
           "to_layer_layout"]
