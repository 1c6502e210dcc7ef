"""Run configuration: frozen, validated dataclasses loaded from YAML plus dotted overrides.

A run config has five sections, `model`, `train`, `mesh`, `distributed` and `data`. Unknown
keys are errors that name the key and suggest the nearest valid one; values are checked against
the field's type. `model.preset` starts from a named architecture (see lmjax.model.presets) that
the other `model.*` keys then override.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import pathlib
import types
import typing
from typing import Any, Mapping, Sequence

import yaml

from lmjax.errors import UserError
from lmjax.model.config import FAMILY_DEFAULTS, Family, ModelConfig
from lmjax.model.presets import PRESET_NAMES, preset_fields

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"


class ComputeDtype(enum.Enum):
  FLOAT32 = "float32"
  BFLOAT16 = "bfloat16"


class NanPolicy(enum.Enum):
  STOP = "stop"            # end the run (exit code 3) naming the step, the loss and the bad param
  SKIP_STEP = "skip_step"  # discard that update, count it in `skipped_steps`, carry on


class EncodingErrors(enum.Enum):
  STRICT = "strict"    # a file that is not UTF-8 is an error naming it
  REPLACE = "replace"  # undecodable bytes become U+FFFD


class BadRecords(enum.Enum):
  ERROR = "error"      # a bad JSON Lines record is an error naming its file and line
  SKIP = "skip"        # it is left out and counted (`skipped_records` in metrics.jsonl)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 1000
  batch_size: int = 16                 # global, in sequences
  seq_len: int = 128
  learning_rate: float = 1e-3          # peak, after warmup
  warmup_steps: int = 100
  min_learning_rate_ratio: float = 0.1  # cosine decays to this fraction of the peak
  weight_decay: float = 0.1            # not applied to biases and norm scales
  grad_clip: float = 1.0               # global-norm clipping; 0 disables
  adam_b1: float = 0.9
  adam_b2: float = 0.95
  adam_eps: float = 1e-8
  grad_accum_steps: int = 1            # micro-batches per step; batch_size must divide evenly
  mlm_probability: float = 0.15
  loss_chunk_size: int = 0             # LM heads: project to the vocabulary this many positions
                                       # at a time (0: all), bounding logits memory
  seed: int = 0
  log_every: int = 10
  eval_every: int = 200                # 0 disables periodic eval
  eval_batches: int = 4
  checkpoint_every: int = 200
  keep_checkpoints: int = 3             # the newest K are kept…
  keep_every: int = 0                  # …plus every step divisible by this, forever; 0: none
  nan_policy: NanPolicy = NanPolicy.STOP  # what a non-finite loss or gradient norm does
  debug_nan_at_step: int | None = None  # testing hook: multiplies that step's loss by NaN
  compute_dtype: ComputeDtype = ComputeDtype.FLOAT32


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1    # -1: all devices not used by the other axes
  fsdp: int = 1
  tensor: int = 1
  # [[logical_name, mesh_axis | [mesh_axis, ...] | null], ...] replacing the default table
  # (lmjax.sharding.LOGICAL_AXIS_RULES); null keeps the default.
  rules: Any = None

  def __post_init__(self):
    if self.rules is not None:
      from lmjax.sharding import parse_rules  # sharding imports this module
      object.__setattr__(self, "rules", parse_rules(self.rules))


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  coordinator_address: str | None = None   # host:port of process 0; None for one process
  num_processes: int | None = None
  process_id: int | None = None
  # true: let JAX find the job from its environment (TPU pod slices, SLURM, Open MPI, GKE);
  # keys given above still win over what it detects.
  auto: bool = False
  initialization_timeout: int = 300        # seconds to wait for all processes to join

  def __post_init__(self):
    if self.initialization_timeout < 1:
      raise UserError(f"distributed.initialization_timeout must be at least 1 (seconds), got "
                      f"{self.initialization_timeout}.")
    if self.auto:
      return
    given = [self.coordinator_address is not None, self.num_processes is not None,
             self.process_id is not None]
    if any(given) and not all(given):
      raise UserError(
          "distributed.coordinator_address, distributed.num_processes and "
          "distributed.process_id go together: set all three (process_id differs per process), "
          "or set distributed.auto=true on a TPU pod slice or under SLURM.")
    if all(given):
      address = self.coordinator_address
      host, _, port = address.rpartition(":")
      if not host or not port.isdigit():
        raise UserError(f"distributed.coordinator_address={address!r} must be host:port of "
                        f"process 0, e.g. 10.0.0.2:1234.")
      if self.num_processes < 1 or not 0 <= self.process_id < self.num_processes:
        raise UserError(
            f"distributed.process_id={self.process_id} must be in [0, "
            f"distributed.num_processes={self.num_processes}).")


@dataclasses.dataclass(frozen=True)
class DataSource:
  """One component of a weighted mixture (`data.mixture`)."""
  source: str = "builtin"
  paths: tuple[str, ...] = ()
  field: str = "text"
  split: str = "train"
  data_dir: str | None = None
  weight: float = 1.0                  # relative share of training rows drawn from it


@dataclasses.dataclass(frozen=True)
class DataConfig:
  source: str = "builtin"              # builtin (CPython's pydoc) | text | jsonl | parquet | tfds
                                       # | prepared (a directory `lmjax data prepare` wrote)
  paths: tuple[str, ...] = ()          # files or globs; for tfds: names name[/config][:version]
  field: str = "text"                  # JSON field, Parquet column or TFDS feature with the text
  split: str = "train"                 # TFDS split (slicing works: train[:90%])
  data_dir: str | None = None          # TFDS data_dir (default: TFDS's own)
  tokenizer: str | None = None         # byte | bpe (trained on the corpus) | a tokenizer.json,
                                       # sentencepiece .model or
                                       # HF tokenizer dir; unset: model.init_from's, else bpe
  encoding_errors: EncodingErrors = EncodingErrors.STRICT
  bad_records: BadRecords = BadRecords.ERROR  # error | skip (and count) a bad JSON Lines record
  workers: int = 0                     # Grain worker processes assembling batches (0: a thread)
  eval_fraction: float = 0.05          # packed rows held out for evaluation (of each source)
  # A weighted mixture replaces source/paths/field: [{source, paths, field, weight}, ...]; each
  # training row comes from source i with probability weight_i / sum(weights).
  mixture: tuple[DataSource, ...] = ()

  @property
  def sources(self) -> tuple[DataSource, ...]:
    """The mixture, or the single source as a one-component mixture."""
    return self.mixture or (DataSource(source=self.source, paths=self.paths, field=self.field,
                                       split=self.split, data_dir=self.data_dir),)


@dataclasses.dataclass(frozen=True)
class Config:
  model: ModelConfig
  train: TrainConfig = TrainConfig()
  mesh: MeshConfig = MeshConfig()
  distributed: DistributedConfig = DistributedConfig()
  data: DataConfig = DataConfig()

  def __post_init__(self):
    if self.train.seq_len > self.model.max_seq_len:
      raise UserError(
          f"train.seq_len={self.train.seq_len} is longer than the model's positions "
          f"(model.max_seq_len={self.model.max_seq_len}): lower train.seq_len or raise "
          f"model.max_seq_len.")
    for name in ("steps", "batch_size", "seq_len", "grad_accum_steps", "log_every", "keep_checkpoints",
                 "checkpoint_every", "eval_batches"):
      if getattr(self.train, name) < 1:
        raise UserError(f"train.{name} must be at least 1, got {getattr(self.train, name)}.")
    if self.train.keep_every < 0:
      raise UserError(f"train.keep_every must be 0 (keep no milestones) or a step interval, got "
                      f"{self.train.keep_every}.")
    if self.train.batch_size % self.train.grad_accum_steps:
      raise UserError(
          f"train.batch_size={self.train.batch_size} is not divisible by "
          f"train.grad_accum_steps={self.train.grad_accum_steps}.")
    if self.train.loss_chunk_size < 0:
      raise UserError(f"train.loss_chunk_size must be 0 (no chunking) or a number of positions, "
                      f"got {self.train.loss_chunk_size}.")
    if not 0 < self.train.mlm_probability < 1:
      raise UserError(f"train.mlm_probability must be in (0, 1), got {self.train.mlm_probability}.")
    for i, component in enumerate(self.data.mixture):
      if not component.weight > 0:
        raise UserError(f"data.mixture[{i}].weight must be positive, got {component.weight}.")
    if self.data.mixture and (self.data.paths or self.data.source != DataConfig.source):
      raise UserError("data.mixture replaces data.source and data.paths: give the sources inside "
                      "the mixture only.")
    if self.data.workers < 0:
      raise UserError(f"data.workers must be 0 (a background thread) or a number of worker "
                      f"processes, got {self.data.workers}.")
    if not 0 < self.data.eval_fraction < 1:
      raise UserError(f"data.eval_fraction must be in (0, 1), got {self.data.eval_fraction}.")

  def to_dict(self) -> dict[str, Any]:
    """A plain, YAML-ready dict (enums as their values) that `from_dict` reads back."""
    return _plain(dataclasses.asdict(self))


_SECTIONS = {"train": TrainConfig, "mesh": MeshConfig, "distributed": DistributedConfig,
             "data": DataConfig}


def load_config(path_or_name: str | pathlib.Path, overrides: Sequence[str] = ()) -> Config:
  """Reads a YAML file (or a name in configs/, e.g. "tiny-gpt") and applies `key.path=value`s."""
  raw = read_yaml(resolve_config_path(path_or_name))
  for item in overrides:
    apply_override(raw, item)
  return from_dict(raw)


def resolve_config_path(path_or_name: str | pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(path_or_name)
  if path.is_file():
    return path
  for candidate in (CONFIG_DIR / f"{path_or_name}.yaml", pathlib.Path("configs") / f"{path_or_name}.yaml"):
    if candidate.is_file():
      return candidate
  names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
  raise UserError(f"config {str(path_or_name)!r} is neither a YAML file nor a name in configs/ "
                  f"({', '.join(names) or 'none found'}){_did_you_mean(str(path_or_name), names)}.")


def read_yaml(path: pathlib.Path) -> dict[str, Any]:
  try:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
  except yaml.YAMLError as e:
    raise UserError(f"config {path} is not valid YAML: {e}") from None
  if raw is None:
    return {}
  if not isinstance(raw, dict):
    raise UserError(f"config {path} must be a mapping of sections (model, train, …), "
                    f"got a {type(raw).__name__}.")
  return raw


def apply_override(raw: dict[str, Any], item: str) -> None:
  """Sets `a.b=value` in the nested dict `raw`; the value is parsed as YAML (1, 1e-3, true, [a])."""
  key, sep, value = item.partition("=")
  if not sep or not key.strip():
    raise UserError(f"--set expects key.path=value, got {item!r} (e.g. --set train.steps=100).")
  parts = key.strip().split(".")
  node = raw
  for part in parts[:-1]:
    child = node.setdefault(part, {})
    if not isinstance(child, dict):
      raise UserError(f"--set {item!r}: {part!r} is a value, not a section.")
    node = child
  try:
    node[parts[-1]] = yaml.safe_load(value)
  except yaml.YAMLError:
    node[parts[-1]] = value


def from_dict(raw: Mapping[str, Any]) -> Config:
  """Builds and validates a Config from nested plain values."""
  sections = {"model", *_SECTIONS}
  for name in raw:
    if name not in sections:
      raise UserError(f"unknown config section {name!r}{_did_you_mean(name, sections)}; "
                      f"sections are {', '.join(sorted(sections))}.")
  if "model" not in raw:
    raise UserError("the config has no `model` section: give model.preset "
                    f"({', '.join(PRESET_NAMES)}) or model.family and its sizes.")
  kwargs = {name: _build(cls, raw.get(name) or {}, name) for name, cls in _SECTIONS.items()}
  return Config(model=model_config_from_dict(raw["model"]), **kwargs)


def model_config_from_dict(raw: Mapping[str, Any]) -> ModelConfig:
  """ModelConfig from `model.*` values: preset fields, then family defaults, then the rest."""
  if not isinstance(raw, Mapping):
    raise UserError(f"config section `model` must be a mapping, got {raw!r}.")
  raw = dict(raw)
  fields: dict[str, Any] = {}
  name = raw.pop("preset", None)
  if name is not None:
    if name not in PRESET_NAMES:
      raise UserError(f"unknown model.preset {name!r}{_did_you_mean(str(name), PRESET_NAMES)}; "
                      f"presets are {', '.join(PRESET_NAMES)}.")
    fields = preset_fields(name)
  if raw.get("init_from"):  # the source's architecture overrides the preset's
    fields.update(source_model_fields(str(raw["init_from"])))
  fields.update(raw)
  if "family" not in fields:
    raise UserError(f"model.family is missing: set it to one of "
                    f"{', '.join(f.value for f in Family)}, or give model.preset.")
  family = _coerce(fields["family"], Family, "model.family")
  return _build(ModelConfig, {**_plain(FAMILY_DEFAULTS[family]), **fields}, "model")


def source_model_fields(source: str) -> dict[str, Any]:
  """The `model.*` fields of an lmjax run directory or a Hugging Face model directory."""
  path = pathlib.Path(source)
  if (path / "config.yaml").is_file():
    fields = read_yaml(path / "config.yaml").get("model") or {}
  elif (path / "config.json").is_file():
    from lmjax.convert.engine import read_hf_config  # local: conversion is only needed here
    from lmjax.convert.hf_config import hf_config_to_model_config
    fields = _plain(dataclasses.asdict(hf_config_to_model_config(read_hf_config(path))))
  else:
    raise UserError(f"model.init_from={source!r} is neither an lmjax run directory (with "
                    f"config.yaml) nor a Hugging Face model directory (with config.json).")
  fields.pop("init_from", None)
  return fields


def _build(cls, raw: Mapping[str, Any], section: str):
  if not isinstance(raw, Mapping):
    raise UserError(f"config section `{section}` must be a mapping, got {raw!r}.")
  hints = typing.get_type_hints(cls)
  names = [f.name for f in dataclasses.fields(cls)]
  for key in raw:
    if key not in names:
      raise UserError(f"unknown config key {section}.{key}{_did_you_mean(key, names, section)}.")
  values = {key: _coerce(value, hints[key], f"{section}.{key}") for key, value in raw.items()}
  return cls(**values)


def _coerce(value: Any, hint: Any, where: str) -> Any:
  """Checks `value` against type `hint`, converting lossless cases (int -> float, str -> Enum)."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (types.UnionType, typing.Union):
    if value is None and type(None) in args:
      return None
    (inner,) = [a for a in args if a is not type(None)]
    return _coerce(value, inner, where)
  if origin is tuple:
    if isinstance(value, str):
      value = [value]
    if not isinstance(value, (list, tuple)):
      raise UserError(f"{where} must be a list, got {value!r}.")
    return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
  if dataclasses.is_dataclass(hint):
    return value if isinstance(value, hint) else _build(hint, value, where)
  if isinstance(hint, type) and issubclass(hint, enum.Enum):
    if isinstance(value, hint):
      return value
    choices = [m.value for m in hint]
    if value not in choices:
      raise UserError(f"{where}={value!r} is not one of {', '.join(map(str, choices))}"
                      f"{_did_you_mean(str(value), [str(c) for c in choices])}.")
    return hint(value)
  if hint is bool:
    if isinstance(value, bool):
      return value
  elif hint is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
  elif hint is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
      try:
        return float(value)
      except ValueError:
        pass
  elif hint is str:
    if isinstance(value, str):
      return value
  else:
    return value
  raise UserError(f"{where} must be {_type_name(hint)}, got {value!r} ({type(value).__name__}).")


def _type_name(hint) -> str:
  return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _did_you_mean(word: str, options, section: str | None = None) -> str:
  close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
  if not close:
    return ""
  return f" (did you mean {section + '.' if section else ''}{close[0]}?)"


def _plain(value: Any) -> Any:
  if isinstance(value, enum.Enum):
    return value.value
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def dump_config(config: Config) -> str:
  return yaml.safe_dump(config.to_dict(), sort_keys=False)
