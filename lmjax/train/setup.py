"""What one config needs to take steps on a mesh: the model, its objective, the optimizer, the
sharded abstract state and the jitted step, built and checked before anything is allocated."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

import jax.numpy as jnp
import optax

from lmjax.config import ComputeDtype, Config, TrainObjective
from lmjax.data.spec import Objective
from lmjax.errors import UserError
from lmjax.model import Head, PipelineSchedule, Transformer
from lmjax.model.context_parallel import check_length, context_split
from lmjax.model.quant_config import QuantMode
from lmjax.config_objectives import GrpoLoss, Reference
from lmjax.objectives import GrpoSettings, Settings, default_objective
from lmjax.run.record import TrainState
from lmjax.sharding import MeshRules, check_divisible, describe_axes, mesh_axes_size
from lmjax.train.optimizer import make_optimizer, schedule_values
from lmjax.train.reference import reference_kind
from lmjax.train.state import state_shardings
from lmjax.train.step import jit_train_step


@dataclasses.dataclass(frozen=True)
class StepSetup:
  """What one config needs to take steps on a mesh; nothing allocated yet."""

  model: Transformer
  objective: Objective
  tx: optax.GradientTransformation  # its state's structure; the step builds it from `hyper`
  hyper: dict[str, Any]         # the schedule's numbers as replicated arrays: step_fn's 3rd arg
  placement: MeshRules
  abstract_state: TrainState    # ShapeDtypeStructs carrying their shardings
  shardings: TrainState         # NamedShardings
  step_fn: Callable             # jitted, donating (state, global batch, hyper) -> (state, metrics)
  preference: Settings | None = None  # a preference objective's settings, for the eval step too
  frozen_reference: bool = False  # dpo, ipo, GRPO's KL: a frozen copy of the initial params
  reference: Any = None         # those params, once the start is known (`with_reference`)

  def step(self, state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
    """One train step with this config's schedule."""
    if self.frozen_reference:
      if self.reference is None:
        raise ValueError("this step compares with a frozen copy: call with_reference first")
      return self.step_fn(state, batch, self.hyper, self.reference)
    return self.step_fn(state, batch, self.hyper)

  def with_reference(self, params: Any) -> StepSetup:
    """This setup stepping against the frozen reference `params` (lmjax.train.reference)."""
    return dataclasses.replace(self, reference=params)


def make_model(config: Config, pipeline: PipelineSchedule | None = None) -> Transformer:
  """The model in the run's compute dtype (params stay float32), its layers run as `pipeline`
  stages where given."""
  dtype = jnp.bfloat16 if config.train.compute_dtype is ComputeDtype.BFLOAT16 else jnp.float32
  return Transformer(config.model, dtype=dtype, pipeline=pipeline)


def pipeline_schedule(config: Config, placement: MeshRules) -> PipelineSchedule | None:
  """The pipeline that `mesh.stage` and `train.microbatches` ask for (None: no stages); a
  UserError, naming the values and the fix, where the model or the batch cannot be staged."""
  stages, micro, model = placement.mesh.shape["stage"], config.train.microbatches, config.model
  if stages == 1:
    if micro > 1:
      raise UserError(f"train.microbatches={micro} feeds pipeline stages, and mesh.stage=1 has "
                      f"none: set mesh.stage (a divisor of model.num_layers={model.num_layers}) "
                      f"to pipeline the layers, or train.grad_accum_steps={micro} to split the "
                      f"batch without stages.")
    return None
  where = f"mesh.stage={stages} splits the layer stack into pipeline stages"
  if not model.scan_layers:
    raise UserError(f"{where}, which needs model.scan_layers=true (one stacked layer axis to "
                    f"split); set it, or mesh.stage=1.")
  if model.num_layers % stages:
    raise UserError(f"{where} of equal depth, which model.num_layers={model.num_layers} is not: "
                    f"choose a mesh.stage that divides {model.num_layers}.")
  if model.moe.enabled:
    raise UserError(f"{where}, which Mixture-of-Experts models do not support yet (their "
                    f"load-balancing loss is a whole-batch statistic): set mesh.stage=1 and "
                    f"shard the experts over mesh.expert.")
  rows = config.train.batch_size // config.train.grad_accum_steps
  batch_axes = placement.batch_sharding().spec[0]  # a stage splits a micro-batch over the rest
  within = tuple(a for a in ((batch_axes,) if isinstance(batch_axes, str) else batch_axes or ())
                 if a != "stage")
  shards = mesh_axes_size(placement.mesh, within)
  if rows % (shards * micro):
    accum = config.train.grad_accum_steps
    raise UserError(
        f"train.microbatches={micro} splits the batch into pipeline micro-batches that each "
        f"stage splits over {describe_axes(placement.mesh, within)}: train.batch_size="
        f"{config.train.batch_size}" + (f" / train.grad_accum_steps={accum}" if accum > 1 else "")
        + f" = {rows} rows do not make {micro} micro-batches of a multiple of {shards} rows. "
        f"Make it a multiple of {shards * micro} rows, or choose train.microbatches to divide "
        f"{rows // shards}.")  # check_batch_fits_mesh saw to rows % shards == 0
  return PipelineSchedule(stages, micro)


_HEAD_OF = {**{o: Head.CAUSAL_LM for o in Objective
               if o in (Objective.SFT, Objective.GRPO) or o.is_preference},
            Objective.CAUSAL_LM: Head.CAUSAL_LM, Objective.MASKED_LM: Head.MASKED_LM,
            Objective.CLASSIFY: Head.CLASSIFICATION}


def objective_of(config: Config) -> Objective:
  """`train.objective`, or (auto) the one the model's head implies; UserError when the named
  objective needs another head."""
  if config.train.objective is TrainObjective.AUTO:
    return default_objective(config.model.head)
  objective = Objective(config.train.objective.value)
  if config.model.head is not _HEAD_OF[objective]:
    what = "tunes a causal LM" if _HEAD_OF[objective] is Head.CAUSAL_LM else \
        f"needs model.head={_HEAD_OF[objective].value}"
    raise UserError(f"train.objective={objective.value} {what}; this model's head is "
                    f"{config.model.head.value}.")
  reference_kind(config, objective)  # adapters_off without LoRA is refused
  return objective


def preference_settings(config: Config) -> Settings | GrpoSettings | None:
  """A preference objective's settings, or GRPO's (None for the others)."""
  objective = objective_of(config)
  if objective is Objective.GRPO:
    grpo = config.train.grpo
    return GrpoSettings(grpo.epsilon, grpo.epsilon if grpo.epsilon_high is None
                        else grpo.epsilon_high, grpo.beta, grpo.loss_type is GrpoLoss.GRPO,
                        grpo.num_iterations == 1,
                        grpo.max_new_tokens if grpo.loss_type is GrpoLoss.DR_GRPO else 0)
  if not objective.is_preference:
    return None
  pref = config.train.preference
  loss = pref.loss_type.value
  if loss != "sigmoid" and objective is not Objective.DPO:
    raise UserError(f"train.preference.loss_type={loss} is a loss of train.objective=dpo, and "
                    f"this run's objective is {objective.value}: remove loss_type, or set "
                    f"train.objective=dpo.")
  if pref.label_smoothing and objective is Objective.DPO and loss not in ("sigmoid", "robust"):
    raise UserError(f"train.preference.label_smoothing={pref.label_smoothing} smooths the dpo "
                    f"losses sigmoid and robust only, and train.preference.loss_type={loss} "
                    f"ignores it: set label_smoothing=0, or loss_type=robust.")
  return Settings(pref.beta, pref.label_smoothing, pref.simpo_gamma, pref.loss_type)


def setup_step(config: Config, placement: MeshRules) -> StepSetup:
  """Checks that the config fits the mesh, then builds the sharded, jitted train step for it."""
  check_batch_fits_mesh(config, placement)
  pipeline = pipeline_schedule(config, placement)
  quantization = config.model.quantization
  held = quantization.enabled and quantization.mode is QuantMode.WEIGHTS
  if held and not config.model.lora.enabled:
    raise UserError(
        f"model.quantization.scheme={quantization.scheme.value} stores the weights as integers, "
        f"which training cannot update: set model.lora.rank (e.g. 16) to train adapters on the "
        f"quantized base (QLoRA), model.quantization.mode=training for int8 matmuls over float "
        f"weights, or remove the model.quantization section to train the float weights, then "
        f"quantize when you generate, score or evaluate (--quantize {quantization.scheme.value}).")
  model, objective = make_model(config, pipeline), objective_of(config)
  preference = preference_settings(config)
  frozen = reference_kind(config, objective) is Reference.FROZEN_COPY
  tx = make_optimizer(config.train)
  abstract_state, shardings = state_shardings(model, tx, placement, seq_len=config.train.seq_len)
  replicated = placement.replicated()
  hyper = {name: jax.make_array_from_callback((), replicated, lambda _, v=value: v)
           for name, value in schedule_values(config.train).items()}
  step_fn = jit_train_step(model, objective, lambda h: make_optimizer(config.train, h), placement,
                           shardings, seed=config.train.seed,
                           grad_accum_steps=config.train.grad_accum_steps,
                           nan_at_step=config.train.debug_nan_at_step,
                           loss_chunk=config.train.loss_chunk_size, preference=preference,
                           frozen_reference=frozen)
  return StepSetup(model, objective, tx, hyper, placement, abstract_state, shardings, step_fn,
                   preference, frozen)


def check_batch_fits_mesh(config: Config, placement: MeshRules) -> None:
  """Refuses a (micro-)batch or sequence length that the mesh axes sharding it do not divide."""
  train = config.train
  per_micro = train.batch_size // train.grad_accum_steps
  names = (f"train.batch_size={train.batch_size}" + (
      f" / train.grad_accum_steps={train.grad_accum_steps} (rows per micro-batch)"
      if train.grad_accum_steps > 1 else ""), f"train.seq_len={train.seq_len}")
  check_divisible((per_micro, train.seq_len), placement.batch_sharding(),
                  describe_dim=lambda i: names[i])
  with placement.activation_context():  # the sequence split as the model will see it
    split = context_split(config.model)
  if split is not None:
    check_length(split, train.seq_len, what="train.seq_len")
    if placement.mesh.shape.get("stage", 1) > 1:
      raise UserError(f"mesh.stage={placement.mesh.shape['stage']} with the sequence split over "
                      f"{split.size} devices ({', '.join(f'mesh.{a}' for a in split.axes)}): "
                      f"context parallelism inside pipeline stages is not supported yet; set "
                      f"mesh.stage=1 or mesh.context=1.")


def residual_bytes(config: Config, placement: MeshRules, *, kept: int, micro_batches: int = 1
                   ) -> int:
  """Bytes one device holds of a (micro-)batch's residual stream kept at `kept` points (the
  backward pass keeps every layer's input and the last output whatever the remat policy: the
  layers + 1; a forward pass, a block's input and output: 2). A lower bound on activations."""
  rows_spec, length_spec = (*placement.batch_sharding().spec, None, None)[:2]
  shards = mesh_axes_size(placement.mesh, rows_spec)
  rows = -(-config.train.batch_size // (micro_batches * shards))
  tokens = -(-config.train.seq_len // mesh_axes_size(placement.mesh, length_spec))  # mesh.context
  itemsize = jnp.dtype(config.train.compute_dtype.value).itemsize
  return rows * tokens * config.model.embed_dim * itemsize * kept
