"""The reference model of dpo and ipo, and of GRPO's KL term (`train.preference.reference`).

`adapters_off` (a LoRA run's default) is the LoRA base: the policy's own params with the
adapters zeroed, no second copy (lmjax.train.step.adapters_off). `frozen_copy` (full
fine-tuning's) is a copy of the initial params, sharded like the policy's, outside the
optimizer and never differentiated: it costs one more set of weights on the devices and no
extra compute beyond the reference's forward pass, which adapters_off pays too.

Checkpoints do not hold the copy: a fresh start copies the params it starts from, and a resume
rebuilds them as a fresh start would, from `model.init_from` or else from `train.seed`'s
initialisation (both deterministic), so a resumed run compares with the same reference as an
uninterrupted one. A run whose initial weights were imported into its own directory (`lmjax
convert hf-to-lmjax`, no `model.init_from`) is refused: nothing outside the run would say what
the reference was once that import is no longer the newest checkpoint.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lmjax.config import Config
from lmjax.config_objectives import Reference
from lmjax.data.spec import Objective
from lmjax.errors import UserError
from lmjax.model import Transformer
from lmjax.sharding import MeshRules
from lmjax.train.init_from import start_from_source
from lmjax.train.state import create_train_state, state_shardings


def reference_kind(config: Config, objective: Objective) -> Reference | None:
  """The reference `objective` compares with under this config (auto resolved), None when it
  needs none; UserError for adapters_off without LoRA."""
  grpo_kl = objective is Objective.GRPO and config.train.grpo.beta > 0
  if not (objective.needs_reference or grpo_kl):
    return None
  chosen, lora = config.train.preference.reference, config.model.lora.enabled
  if chosen is Reference.AUTO:
    return Reference.ADAPTERS_OFF if lora else Reference.FROZEN_COPY
  if chosen is Reference.ADAPTERS_OFF and not lora:
    raise UserError(
        f"train.preference.reference=adapters_off takes the reference as the LoRA base with the "
        f"adapters off, and this config has no LoRA (model.lora.rank=0): set model.lora.rank "
        f"(e.g. 16), or train.preference.reference=frozen_copy (or auto) to compare "
        f"train.objective={objective.value} with a frozen copy of the initial weights"
        + (f" (or train.grpo.beta=0: no KL term, no reference)." if grpo_kl else "."))
  return chosen


def reference_params(config: Config, model: Transformer, placement: MeshRules,
                     run_path: pathlib.Path, *, start: Any = None) -> Any:
  """The frozen copy: the params a fresh start of this run begins from, sharded like the train
  state's. `start`: a fresh start's params, copied; None: rebuilt (the seed's initialisation
  with `model.init_from`'s weights loaded, no optimizer state)."""
  if config.init_from is None and (run_path / "checkpoints" / "0").is_dir():
    raise UserError(
        f"train.preference.reference=frozen_copy compares with the run's initial weights, here "
        f"imported into {run_path} itself; a resume could not rebuild them once newer "
        f"checkpoints replace that import. Set model.init_from to the directory the weights "
        f"came from (e.g. the Hugging Face directory) and train in a new run directory.")
  if start is not None:  # the train step donates, and so frees, the state's own buffers
    return jax.jit(lambda p: jax.tree.map(jnp.copy, p))(start)
  tx = optax.identity()  # no optimizer state: the reference is never updated
  state = create_train_state(model, tx, placement, seed=config.train.seed,
                             seq_len=config.train.seq_len)
  if config.init_from is not None:
    shardings = state_shardings(model, tx, placement, seq_len=config.train.seq_len)[1]
    state = start_from_source(state, tx, shardings.opt_state, config.init_from, config.model,
                              run_path=run_path)[0]
  return state.params


def with_frozen_reference(config: Config, setup, run_path: pathlib.Path, params: Any,
                          step: int):
  """`setup` (lmjax.train.setup.StepSetup) stepping against its frozen copy, when it takes one:
  a copy of `params` at a fresh start (`step` 0), else rebuilt; else `setup` as it is."""
  if not setup.frozen_reference:
    return setup
  return setup.with_reference(reference_params(config, setup.model, setup.placement, run_path,
                                               start=None if step else params))
