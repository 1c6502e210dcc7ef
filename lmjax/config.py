"""Run configuration: frozen, validated dataclasses loaded from YAML plus dotted overrides.

A run config has five sections, `model`, `train`, `mesh`, `distributed` and `data`. Unknown
keys are errors that name the key and suggest the nearest valid one; values are checked against
the field's type (lmjax.config_schema). `model.preset` starts from a named architecture (see
lmjax.model.presets) that the other `model.*` keys then override; `model.init_from` (an lmjax
run directory or a Hugging Face model directory) starts from that model's architecture and
weights. Each layer owns its section's dataclass: `ModelConfig` (lmjax.model, the graph only),
`MeshConfig` (lmjax.sharding) and `DataConfig` (lmjax.data); this module adds the trainer's and
assembles them. `mesh: auto` leaves the mesh to the caller (`lmjax train`: the planner's).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import pathlib
from typing import Any, Callable, ClassVar, Mapping, Sequence

import yaml

from lmjax.config_objectives import GrpoConfig, PreferenceConfig, check_grpo_train
from lmjax.config_model import model_config_from_dict
from lmjax.config_schema import build, did_you_mean, plain
from lmjax.config_yaml import read_yaml
from lmjax.data.config import DataConfig
from lmjax.errors import UserError
from lmjax.files import read_json_object, special_file
from lmjax.hf.config import hf_config_to_model_config, hf_labels
from lmjax.hf.hub import resolve_hf_dir
from lmjax.model.config import Head, ModelConfig
from lmjax.model.presets import PRESET_NAMES
from lmjax.ranges import FRACTION, NON_NEGATIVE, POSITIVE, Range, check_ranges
from lmjax.sharding import MeshConfig
from lmjax.storage import as_path, check_path

log = logging.getLogger(__name__)

# The shipped configs: inside the package (a link to the repository's configs/ in a checkout,
# the files themselves in an installed wheel), else the checkout's configs/ beside it.
CONFIG_DIR = next((d for d in (pathlib.Path(__file__).parent / "configs",
                               pathlib.Path(__file__).resolve().parent.parent / "configs")
                   if d.is_dir()), pathlib.Path(__file__).parent / "configs")
RUN_CONFIG_FILE = "config.yaml"  # a run directory is a directory holding its config as this
HF_CONFIG_FILE = "config.json"


class ComputeDtype(enum.Enum):
  FLOAT32 = "float32"
  BFLOAT16 = "bfloat16"


class TrainObjective(enum.Enum):
  AUTO = "auto"            # what the head implies: causal LM, masked LM or classification
  CAUSAL_LM = "causal_lm"  # the others name it outright and must fit the head
  MASKED_LM = "masked_lm"
  CLASSIFY = "classify"
  SFT = "sft"              # instruction tuning of a causal LM: the loss on the answers only
  DPO = "dpo"              # preference pairs (train.preference): sigmoid DPO against a reference
  IPO = "ipo"              # the squared, length-normalised loss against a reference
  ORPO = "orpo"            # odds ratio + NLL of the chosen answer, reference-free
  SIMPO = "simpo"          # length-normalised margin with a target gap, reference-free
  GRPO = "grpo"            # RL on sampled completions scored by rewards (train.grpo)


class NanPolicy(enum.Enum):
  STOP = "stop"            # end the run (exit code 3) naming the step, the loss and the bad param
  SKIP_STEP = "skip_step"  # discard that update, count it in `skipped_steps`, carry on


_AT_LEAST_ONE = Range(1)
# The step counter is an int32 in the train state and its checkpoints.
_STEPS = Range(1, 2**31 - 1, why="steps are counted in int32")
_TRAIN_RANGES = {
    **dict.fromkeys(("batch_size", "seq_len", "grad_accum_steps", "microbatches", "log_every",
                     "keep_checkpoints", "checkpoint_every", "eval_batches"), _AT_LEAST_ONE),
    "steps": _STEPS,
    "learning_rate": NON_NEGATIVE,  # 0 trains nothing: a way to check a setup
    "warmup_steps": NON_NEGATIVE,
    "min_learning_rate_ratio": Range(0, 1, why="a fraction of the peak learning rate"),
    "weight_decay": NON_NEGATIVE,
    "grad_clip": Range(0, why="0 disables clipping"),
    "adam_b1": FRACTION,
    "adam_b2": FRACTION,
    "adam_eps": POSITIVE,
    "mlm_probability": Range(0, 1, low_open=True, high_open=True),
    "loss_chunk_size": Range(0, why="0: no chunking, else a number of positions"),
    "eval_every": Range(0, why="0 disables periodic eval"),
    "keep_every": Range(0, why="0 keeps no milestones, else a step interval"),
    "debug_nan_at_step": _STEPS,
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  RANGES: ClassVar[Mapping[str, Range]] = _TRAIN_RANGES  # lmjax.ranges: checked on creation

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
  microbatches: int = 1                # pipeline micro-batches (mesh.stage > 1) per accumulation
                                       # step; more shrink the bubble, (S-1)/(M+S-1)
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
  objective: TrainObjective = TrainObjective.AUTO
  preference: PreferenceConfig = PreferenceConfig()  # dpo, ipo, orpo, simpo
  grpo: GrpoConfig = GrpoConfig()  # lmjax.config_objectives

  def __post_init__(self):
    check_ranges(self, "train", self.RANGES)
    if self.batch_size % self.grad_accum_steps:
      raise UserError(f"train.batch_size={self.batch_size} is not divisible by "
                      f"train.grad_accum_steps={self.grad_accum_steps}.")
    if self.objective is TrainObjective.GRPO:
      check_grpo_train(self)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  RANGES: ClassVar[Mapping[str, Range]] = {"initialization_timeout": Range(1, why="seconds")}

  coordinator_address: str | None = None   # host:port of process 0; None for one process
  num_processes: int | None = None
  process_id: int | None = None
  # true: let JAX find the job from its environment (TPU pod slices, SLURM, Open MPI, GKE);
  # keys given above still win over what it detects.
  auto: bool = False
  initialization_timeout: int = 300        # seconds to wait for all processes to join

  def __post_init__(self):
    check_ranges(self, "distributed", self.RANGES)
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


WANDB_MODES = ("online", "offline", "disabled")


@dataclasses.dataclass(frozen=True)
class WandbConfig:
  """Weights & Biases, beside metrics.jsonl and TensorBoard (`logging.wandb.*`); on when
  `project` is set. Only the main process logs."""

  project: str | None = None
  entity: str | None = None
  mode: str = "online"        # online | offline (files in RUN_DIR/wandb, `wandb sync` later)
                              # | disabled
  name: str | None = None     # the run's name (default: the run directory's name)

  def __post_init__(self):
    if self.mode not in WANDB_MODES:
      raise UserError(f"logging.wandb.mode={self.mode!r} is not one of {', '.join(WANDB_MODES)}.")


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
  wandb: WandbConfig = WandbConfig()


@dataclasses.dataclass(frozen=True)
class Config:
  """A run config: its sections (`model`, `train`, `mesh`, `distributed`, `data`, `logging`)
  and the source of the initial weights; made by `load_config`, frozen and validated."""

  model: ModelConfig
  train: TrainConfig = TrainConfig()
  mesh: MeshConfig = MeshConfig()
  distributed: DistributedConfig = DistributedConfig()
  data: DataConfig = DataConfig()
  logging: LoggingConfig = LoggingConfig()
  # Where the initial weights come from (`model.init_from` in YAML): an lmjax run directory or a
  # Hugging Face model directory (fine-tuning; a hub id or a GGUF file is recorded as the
  # directory it resolves to); `model` already has its architecture.
  init_from: str | None = None

  def __post_init__(self):
    if self.train.seq_len > self.model.max_seq_len:
      raise UserError(
          f"train.seq_len={self.train.seq_len} is longer than the model's positions "
          f"(model.max_seq_len={self.model.max_seq_len}): lower train.seq_len or raise "
          f"model.max_seq_len.")
    if self.model.head is Head.CLASSIFICATION and self.data.labels:
      labels, num_labels = self.data.labels, self.model.num_labels
      if num_labels is None:
        object.__setattr__(self, "model", dataclasses.replace(self.model, num_labels=len(labels)))
      elif num_labels != len(labels):
        raise UserError(f"model.num_labels={num_labels} disagrees with the {len(labels)} labels "
                        f"({', '.join(labels)}) of data.labels or the training data: drop "
                        f"model.num_labels (it follows the labels), or fix data.labels.")

  def with_labels(self, labels: Sequence[str]) -> Config:
    """This config with the label set `labels` (the training data's, for a classifier whose
    config names none); UserError when model.num_labels disagrees."""
    if not labels or self.data.labels == tuple(labels):
      return self
    return dataclasses.replace(self, data=dataclasses.replace(self.data, labels=tuple(labels)))

  def to_dict(self) -> dict[str, Any]:
    """A plain, YAML-ready dict (enums as their values) that `from_dict` reads back."""
    sections = {name: plain(dataclasses.asdict(getattr(self, name)))
                for name in ("model", *_SECTIONS)}
    sections["model"]["init_from"] = self.init_from
    return sections

  @property
  def tokenizer_choice(self) -> str | None:
    """`data.tokenizer`, else the tokenizer of `model.init_from` when fine-tuning, else None
    (a BPE trained on the corpus)."""
    if self.data.tokenizer is not None or self.init_from is None:
      return self.data.tokenizer
    source = pathlib.Path(self.init_from)
    return str(source / "tokenizer" if is_run_directory(source) else source)


_SECTIONS = {"train": TrainConfig, "mesh": MeshConfig, "distributed": DistributedConfig,
             "data": DataConfig, "logging": LoggingConfig}


def is_run_directory(path: str | os.PathLike) -> bool:
  """Whether `path` is an lmjax run directory (it holds the run's config.yaml)."""
  return (as_path(path) / RUN_CONFIG_FILE).is_file()


def load_config(path_or_name: str | pathlib.Path, overrides: Sequence[str] = (), *,
                auto_mesh: Callable[[Config], Config] | None = None) -> Config:
  """Reads a YAML file (or a name in configs/, e.g. "tiny-gpt") and applies `key.path=value`s.
  `mesh: auto` is refused unless `auto_mesh` takes the config (on the default mesh) to the one
  it chooses (`lmjax train`: lmjax.train.plan's)."""
  raw = read_yaml(resolve_config_path(path_or_name))
  for item in overrides:
    apply_override(raw, item)
  if raw.get("mesh") != "auto":
    return from_dict(raw)
  if auto_mesh is None:
    raise UserError("mesh: auto (the mesh planner's choice) is for `lmjax train` and `lmjax plan`: "
                    "give the sizes here (mesh.data, mesh.fsdp, …), e.g. a run's config.yaml's.")
  return auto_mesh(from_dict({**raw, "mesh": {}}))


def resolve_config_path(path_or_name: str | pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(path_or_name)
  if path.is_file():
    return path
  if special_file(path):
    raise UserError(f"config {str(path_or_name)!r} is {special_file(path)}, not a YAML file: "
                    f"pass a file (or the name of a shipped config).")
  for candidate in (CONFIG_DIR / f"{path_or_name}.yaml", pathlib.Path("configs") / f"{path_or_name}.yaml"):
    if candidate.is_file():
      return candidate
  names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
  raise UserError(f"config {str(path_or_name)!r} is neither a YAML file nor a name in configs/ "
                  f"({', '.join(names) or 'none found'}){did_you_mean(str(path_or_name), names)}.")


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


def from_dict(raw: Mapping[str, Any], *, resolved: bool = False) -> Config:
  """Builds and validates a Config from nested plain values. A `resolved` one (a run's saved
  config.yaml) has every model field already: its `model.init_from` is not read again (so a
  base that has moved does not make the run unreadable)."""
  sections = {"model", *_SECTIONS}
  for name in raw:
    if name not in sections:
      raise UserError(f"unknown config section {name!r}{did_you_mean(name, sections)}; "
                      f"sections are {', '.join(sorted(sections))}.")
  if "model" not in raw:
    raise UserError("the config has no `model` section: give model.preset "
                    f"({', '.join(PRESET_NAMES)}) or model.family and its sizes.")
  model = raw["model"]
  if not isinstance(model, Mapping):
    raise UserError(f"config section `model` must be a mapping, got {model!r}.")
  init_from = model.get("init_from")
  check_path(init_from, what="model.init_from")
  # A hub id (its cached snapshot) or a GGUF file (the HF directory it is imported into) is
  # recorded as that directory.
  if init_from and not resolved:
    init_from = resolve_hf_dir(str(init_from), what="model.init_from")
  source_fields, source_labels = source_model(str(init_from)) if init_from and not resolved \
      else ({}, ())
  kwargs = {name: build(cls, raw.get(name) or {}, name) for name, cls in _SECTIONS.items()}
  model_config = model_config_from_dict(model, source_fields)
  if model_config.head is Head.CLASSIFICATION and not kwargs["data"].labels and source_labels:
    # Fine-tuning a classifier further keeps its labels in their order (its head's rows).
    kwargs["data"] = dataclasses.replace(kwargs["data"], labels=source_labels)
  return Config(model=model_config, init_from=None if init_from is None else str(init_from),
                **kwargs)


def source_model(source: str) -> tuple[dict[str, Any], tuple[str, ...]]:
  """(the `model.*` fields, the classifier's labels or ()) of an lmjax run directory or a
  Hugging Face model directory (local or on a bucket)."""
  path = as_path(source)
  if is_run_directory(path):
    raw = read_yaml(path / RUN_CONFIG_FILE)
    fields = dict(raw.get("model") or {})
    labels = tuple(map(str, (raw.get("data") or {}).get("labels") or ()))
  elif (path / HF_CONFIG_FILE).is_file():
    hf_config = read_json_object(path / HF_CONFIG_FILE)
    fields = plain(dataclasses.asdict(hf_config_to_model_config(hf_config)))
    labels = hf_labels(hf_config) if fields["head"] == Head.CLASSIFICATION.value else ()
  else:
    raise UserError(f"model.init_from={source!r} is neither an lmjax run directory (with "
                    f"{RUN_CONFIG_FILE}) nor a Hugging Face model directory (with "
                    f"{HF_CONFIG_FILE}).")
  fields.pop("init_from", None)
  return fields, labels


def dump_config(config: Config) -> str:
  return yaml.safe_dump(config.to_dict(), sort_keys=False)
