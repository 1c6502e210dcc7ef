"""The pure train and eval steps, and their jitted, sharded forms.

`train_step(state, batch, hyper) -> (state, metrics)` splits the global batch into
`grad_accum_steps` micro-batches, sums losses and gradients over them under `lax.scan`, and
divides once by the number of tokens that counted, so the update is the same token-weighted
mean whatever the accumulation. Dropout keys derive from (seed, step), so a resumed run draws
the same masks as an uninterrupted one without storing RNG state.

With LoRA only the adapters are differentiated and updated (lmjax.train.trainable); the
gradient norm and the first non-finite leaf are then the adapters'.

A step whose loss or gradient norm is not finite applies no update: it returns the old params
and optimizer state (only `step` advances) with `finite: False` and the index of the first
non-finite gradient leaf, and the loop decides what to do (`train.nan_policy`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lmjax.data.spec import PER_EXAMPLE, Objective, batch_fields
from lmjax.model import Transformer, trainable
from lmjax.model.lora import is_adapter
from lmjax.model.moe import load_balancing_loss
from lmjax.objectives import (GRPO_SUMS, REWARD_SUMS, GrpoSettings, LossSums, Settings,
                              causal_lm_targets, chunked_objective_loss, chunked_token_log_probs,
                              confusion_counts, grpo_sums, objective_loss, pair_log_probs,
                              preference_sums, sft_targets, token_log_probs)
from lmjax.run.record import TrainState
from lmjax.sharding import MeshRules
from lmjax.train.optimizer import Hyper, learning_rate_at

Batch = Mapping[str, jax.Array]

_MODEL_INPUTS = ("segment_ids", "positions", "token_type_ids")


_TOKEN_OBJECTIVES = (Objective.CAUSAL_LM, Objective.MASKED_LM, Objective.SFT)


def _forward_sums(model: Transformer, objective: Objective, params, batch: Batch, *, train: bool,
                  dropout_rng: jax.Array | None = None, loss_chunk: int = 0,
                  preference: Settings | GrpoSettings | None = None, reference=None
                  ) -> tuple[LossSums, jax.Array, dict[str, jax.Array]]:
  """The objective's loss sums, a Mixture-of-Experts model's load-balancing loss (0.0 without
  experts) and a preference objective's reward sums, or GRPO's KL and clipping sums ({} for the
  others); `loss_chunk` > 0 (token-level, preference and GRPO objectives) projects to the
  vocabulary that many positions at a time, never holding the whole batch's logits.
  `preference` holds a preference objective's or GRPO's settings; `reference` the frozen copy
  that dpo and ipo compare with (None: the LoRA base, `adapters_off(params)`)."""
  inputs = {k: batch[k] for k in _MODEL_INPUTS if k in batch}
  rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
  apply = functools.partial(_apply, model)
  log_probs = functools.partial(_target_log_probs, model, batch=batch, loss_chunk=loss_chunk)
  variables = {"params": params}
  if objective is Objective.GRPO:
    token_logps, aux = log_probs(variables, train=train, rngs=rngs)
    _, mask = sft_targets(batch["input_ids"], batch["segment_ids"], batch["loss_mask"])
    sums, extra = grpo_sums(token_logps, batch["old_logps"], batch["ref_logps"],
                            batch["advantages"], mask, preference)
    return sums, aux, extra
  if objective.is_preference:
    token_logps, aux = log_probs(variables, train=train, rngs=rngs)
    ref_pairs = None
    if objective.needs_reference:  # without a frozen copy, the LoRA base: the adapters off
      reference = adapters_off(params) if reference is None else reference
      ref_logps, _ = log_probs({"params": jax.lax.stop_gradient(reference)}, train=False)
      ref_pairs = pair_log_probs(ref_logps, batch)
    sums, rewards = preference_sums(objective, preference, pair_log_probs(token_logps, batch),
                                    ref_pairs)
    return sums, aux, rewards
  if loss_chunk and objective in _TOKEN_OBJECTIVES:
    hidden, aux = apply(variables, batch["input_ids"], train=train, rngs=rngs,
                        method=Transformer.features, **inputs)
    logits_fn = lambda h: model.apply(variables, h, method=Transformer.decode)
    return chunked_objective_loss(objective, hidden, logits_fn, batch, loss_chunk), aux, {}
  logits, aux = apply(variables, batch["input_ids"], train=train, rngs=rngs, **inputs)
  return objective_loss(objective, logits, batch), aux, {}


def _apply(model: Transformer, variables, *args, **kwargs) -> tuple[Any, jax.Array]:
  """model.apply, and a Mixture-of-Experts model's load-balancing loss (0.0 without experts)."""
  if not model.config.moe.enabled:
    return model.apply(variables, *args, **kwargs), jnp.zeros((), jnp.float32)
  out, state = model.apply(variables, *args, mutable=["intermediates"], **kwargs)
  return out, load_balancing_loss(state["intermediates"])


def _target_log_probs(model: Transformer, variables, *, batch: Batch, loss_chunk: int,
                      **kwargs) -> tuple[jax.Array, jax.Array]:
  """The log-prob of what each position predicts ([batch, len], as `causal_lm_targets` pairs
  positions with targets) and the load-balancing loss; `loss_chunk` positions at a time."""
  inputs = {k: batch[k] for k in _MODEL_INPUTS if k in batch}
  targets, _ = causal_lm_targets(batch["input_ids"], batch["segment_ids"])
  if loss_chunk:
    hidden, aux = _apply(model, variables, batch["input_ids"], method=Transformer.features,
                         **kwargs, **inputs)
    logits_fn = lambda h: model.apply(variables, h, method=Transformer.decode)
    return chunked_token_log_probs(hidden, logits_fn, targets, loss_chunk), aux
  logits, aux = _apply(model, variables, batch["input_ids"], **kwargs, **inputs)
  return token_log_probs(logits, targets), aux


def adapters_off(params):
  """`params` with every LoRA adapter zeroed: the base model's function (peft's
  `disable_adapter`), from the same params; only the adapters, a small tree, are new."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if is_adapter(path) else x, params)


def train_step(state: TrainState, batch: Batch, hyper: Hyper, reference=None, *,
               model: Transformer,
               objective: Objective, make_tx: Callable[[Hyper], optax.GradientTransformation],
               grad_accum_steps: int, seed: int, nan_at_step: int | None = None,
               loss_chunk: int = 0, preference: Settings | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on a global batch; returns the new state and scalar metrics.

  `hyper` holds the learning-rate schedule's numbers (lmjax.train.optimizer.schedule_values) as
  arguments of the step, and `make_tx(hyper)` is the optimizer.

  `nan_at_step` (a testing hook) multiplies the loss of the step numbered so (1-based, as
  logged) by NaN. `preference` holds a preference objective's settings; its metrics add the
  mean implicit rewards of the chosen and rejected answers and their margin. `reference`: the
  frozen copy that dpo and ipo compare with (lmjax.train.reference), None for the others.
  """
  rng = jax.random.fold_in(jax.random.key(seed), state.step)
  trained, frozen = trainable.split(state.params, model.config)  # LoRA: adapters only

  def sums_and_grads(micro_batch, micro_rng):
    def loss_fn(trained_params):
      params = trainable.combine(trained_params, frozen)
      sums, aux, rewards = _forward_sums(model, objective, params, micro_batch, train=True,
                                         dropout_rng=micro_rng, loss_chunk=loss_chunk,
                                         preference=preference, reference=reference)
      if nan_at_step is not None:
        poison = jnp.where(state.step + 1 == nan_at_step, jnp.nan, 1.0)
        sums = sums._replace(loss=sums.loss * poison)
      # The loss is a sum that the step divides by the tokens counted: the load-balancing
      # loss joins it weighted by this micro-batch's tokens, so the step's loss is the token
      # mean plus aux_loss_coef times the (token-weighted) load-balancing loss, as HF adds it.
      total = sums.loss + model.config.moe.aux_loss_coef * aux * sums.weight
      return total, (sums, aux * sums.weight, rewards)
    grads, (sums, aux, rewards) = jax.grad(loss_fn, has_aux=True)(trained)
    return (sums, aux, rewards), grads

  if grad_accum_steps == 1:
    (sums, aux, rewards), grads = sums_and_grads(batch, rng)
  else:
    # Micro-batch i takes rows i, i + n, i + 2n, …: each device keeps feeding its own rows, so
    # splitting the global batch moves no data between devices.
    micro = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps,
                                         *x.shape[1:]), 0, 1), batch)  # [accum, batch/accum, …]
    micro = nn.with_logical_constraint(micro, jax.tree.map(
        lambda x: (None, "batch", *(None,) * (x.ndim - 2)), micro))

    def accumulate(carry, xs):
      micro_batch, i = xs
      sums, grads = sums_and_grads(micro_batch, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (sums, grads)), None

    scalar = jnp.zeros((), jnp.float32)
    no_rewards = dict.fromkeys(extra_sums(objective), scalar)
    zeros = jax.tree.map(jnp.zeros_like, ((LossSums(*(scalar,) * 3), scalar, no_rewards), trained))
    ((sums, aux, rewards), grads), _ = jax.lax.scan(accumulate, zeros,
                                                    (micro, jnp.arange(grad_accum_steps)))

  weight = jnp.maximum(sums.weight, 1.0)
  grads = jax.tree.map(lambda g: g / weight, grads)
  loss, grad_norm = sums.loss / weight, optax.tree.norm(grads)  # the loss without aux
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def update(_):
    updates, opt_state = make_tx(hyper).update(grads, state.opt_state, trained)
    return (trainable.combine(optax.apply_updates(trained, updates), frozen), opt_state,
            jnp.int32(-1))

  def keep(_):  # never apply a non-finite update; name the first bad gradient instead
    return state.params, state.opt_state, first_nonfinite_leaf(grads)

  # A conditional, not a select over the whole state: only the branch taken runs.
  params, opt_state, bad_leaf = jax.lax.cond(finite, update, keep, None)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  metrics = {
      "loss": loss,
      "accuracy": sums.correct / weight,
      "grad_norm": grad_norm,
      "learning_rate": learning_rate_at(state.step, hyper),
      "target_tokens": sums.weight,
      "finite": finite,
      "first_nonfinite_grad": bad_leaf,
  }
  if model.config.moe.enabled:
    metrics["moe_aux_loss"] = aux / weight
  metrics.update(reward_metrics(rewards, weight))
  return new_state, metrics


def extra_sums(objective: Objective) -> tuple[str, ...]:
  """The names of the sums beside the loss's that the objective's step adds up."""
  return REWARD_SUMS if objective.is_preference else \
      GRPO_SUMS if objective is Objective.GRPO else ()


def reward_metrics(rewards: Mapping[str, jax.Array], pairs) -> dict[str, jax.Array]:
  """The mean implicit rewards of a preference objective and their margin, from the sums over
  `pairs` pairs; GRPO's mean KL and clip fraction per completion token ({} for the other
  objectives)."""
  if not rewards:
    return {}
  if "kl" in rewards:
    tokens = jnp.maximum(rewards["completion_tokens"], 1.0)
    return {"kl": rewards["kl"] / tokens, "clip_fraction": rewards["clipped"] / tokens}
  chosen, rejected = rewards["chosen_reward"] / pairs, rewards["rejected_reward"] / pairs
  return {"rewards_chosen": chosen, "rewards_rejected": rejected,
          "rewards_margin": chosen - rejected}


def first_nonfinite_leaf(tree) -> jax.Array:
  """Index (in `jax.tree.leaves` order) of the first leaf holding a NaN or inf; -1 if none."""
  finite = jnp.stack([jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)])  # [leaves]
  return jnp.where(finite.all(), -1, jnp.argmin(finite)).astype(jnp.int32)


def eval_step(params, batch: Batch, reference=None, *, model: Transformer, objective: Objective,
              loss_chunk: int = 0, preference: Settings | None = None) -> dict[str, jax.Array]:
  """Sums on one batch without dropout: `loss`, `weight` and `correct` (LossSums), and for a
  classifier its `confusion` counts [true, predicted]; callers add them over batches.
  `reference`: dpo's and ipo's frozen copy, as for `train_step`."""
  if objective is Objective.CLASSIFY:
    inputs = {k: batch[k] for k in _MODEL_INPUTS if k in batch}
    logits = model.apply({"params": params}, batch["input_ids"], **inputs)
    sums = objective_loss(objective, logits, batch)
    return {**sums._asdict(), "confusion": confusion_counts(logits, batch["labels"])}
  sums, _, rewards = _forward_sums(model, objective, params, batch, train=False,
                                   loss_chunk=loss_chunk, preference=preference,
                                   reference=reference)
  return {**sums._asdict(), **rewards}  # the evaluation loss is the objective's alone


def batch_shardings(placement: MeshRules, objective: Objective) -> dict[str, Any]:
  """Where each array of the objective's batches lives: rows over the batch axes."""
  return {name: placement.example_sharding() if name in PER_EXAMPLE else placement.batch_sharding()
          for name in batch_fields(objective)}


def jit_train_step(model: Transformer, objective: Objective,
                   make_tx: Callable[[Hyper], optax.GradientTransformation], placement: MeshRules,
                   state_shardings: Any, *, grad_accum_steps: int, seed: int,
                   nan_at_step: int | None = None, loss_chunk: int = 0,
                   preference: Settings | None = None, frozen_reference: bool = False
                   ) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
  """train_step jitted with explicit shardings; the input state is donated, the schedule's
  numbers (`hyper`) are replicated arguments; with `frozen_reference`, a 4th argument, the
  reference params, sharded like the state's.

  Activations follow the model's logical constraints under the placement's rules; metrics are
  replicated.
  """
  step = _with_activation_sharding(
      functools.partial(train_step, model=model, objective=objective, make_tx=make_tx,
                        grad_accum_steps=grad_accum_steps, seed=seed, nan_at_step=nan_at_step,
                        loss_chunk=loss_chunk, preference=preference),
      placement)
  reference = (state_shardings.params,) if frozen_reference else ()
  return jax.jit(step, in_shardings=(state_shardings, batch_shardings(placement, objective),
                                     placement.replicated(), *reference),
                 out_shardings=(state_shardings, placement.replicated()), donate_argnums=0)


def jit_eval_step(model: Transformer, objective: Objective, placement: MeshRules,
                  params_shardings: Any, *, loss_chunk: int = 0,
                  preference: Settings | None = None, reference: Any = None
                  ) -> Callable[[Any, Batch], dict[str, jax.Array]]:
  """eval_step jitted with explicit shardings; the loss sums come back replicated. `reference`
  (dpo's and ipo's frozen copy, sharded like the params) is bound in."""
  step = _with_activation_sharding(
      functools.partial(eval_step, model=model, objective=objective, loss_chunk=loss_chunk,
                        preference=preference),
      placement)
  shardings = (params_shardings, batch_shardings(placement, objective))
  if reference is None:
    return jax.jit(step, in_shardings=shardings, out_shardings=placement.replicated())
  jitted = jax.jit(step, in_shardings=(*shardings, params_shardings),
                   out_shardings=placement.replicated())
  return lambda params, batch: jitted(params, batch, reference)


def jit_log_probs(model: Transformer, placement: MeshRules, params_shardings: Any, *,
                  reference: bool, loss_chunk: int = 0) -> Callable[[Any, Batch], jax.Array]:
  """The log-prob of what each position of a GRPO batch predicts, [batch, len] float32, under
  `params` (`reference`: the LoRA base, the adapters off), jitted like the train step: what
  the sampling policy and the reference give the completions, for the steps of a round."""
  def log_probs(params, batch):
    params = adapters_off(params) if reference else params
    return _target_log_probs(model, {"params": params}, batch=batch, loss_chunk=loss_chunk,
                             train=False)[0]
  step = _with_activation_sharding(log_probs, placement)
  shardings = batch_shardings(placement, Objective.GRPO)
  return jax.jit(step, in_shardings=(params_shardings, shardings),
                 out_shardings=placement.batch_sharding())


def _with_activation_sharding(fn: Callable, placement: MeshRules) -> Callable:
  @functools.wraps(fn)
  def traced_with_rules(*args):
    with placement.activation_context():
      return fn(*args)
  return traced_with_rules
