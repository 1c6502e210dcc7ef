"""Where a run starts: its newest checkpoint that restores, imported weights, or a fresh init.

A damaged newer checkpoint is reported and moved to RUN_DIR/corrupt_checkpoints/; an imported
run directory (weights only) and `model.init_from` start from those weights with a fresh
optimizer. A LoRA run's checkpoint that holds the trained params only is completed with its
base, found at `model.init_from` (or where it was) and checked by content hash.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from lmjax.config import Config
from lmjax.run.loader import frozen_params
from lmjax.model.trainable import combine, split, trained_part
from lmjax.run.base_ref import BaseRef, locate_base
from lmjax.run.checkpointer import Checkpointer
from lmjax.run.record import TrainState
from lmjax.run.run_dir import RunDir
from lmjax.storage import absolute
from lmjax.train.init_from import start_from_source
from lmjax.train.setup import StepSetup
from lmjax.train.state import create_train_state

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Start:
  state: TrainState
  step: int                        # steps already taken
  elapsed_seconds: float           # training time before this invocation
  skipped_steps: int               # non-finite updates skipped so far
  data_state: dict[str, Any] | None  # the input pipeline's saved position, if any
  base: BaseRef | None = None      # set: checkpoints hold the trained params only


def start_or_resume(config: Config, run: RunDir, setup: StepSetup, checkpointer: Checkpointer,
                    *, report: bool) -> Start:
  """The state to train from, with what the checkpoint recorded.

  `report` logs what fine-tuning loaded (on the writing process only).
  """
  trained_abstract = setup.abstract_state.replace(
      params=trained_part(setup.abstract_state.params, config.model))

  def restore(step: int):
    record = checkpointer.restore_record(step)
    if record.params_only:  # an imported run directory: weights, no optimizer state yet
      return None, record
    return checkpointer.restore(step, setup.abstract_state if record.base is None
                                else trained_abstract)

  step, restored, skipped = checkpointer.restore_newest(restore)
  if skipped:
    checkpointer.quarantine([s.step for s in skipped], run.corrupt_checkpoints)
  state, record = restored or (None, None)
  if state is not None:
    base = record.base
    if base is not None:  # the base where it is now (a copy elsewhere has the same hash)
      base = dataclasses.replace(base, source=absolute(locate_base(base, config.init_from)))
      frozen = frozen_params(base, None, config.model,
                             split(setup.abstract_state.params, config.model)[1])
      state = state.replace(params=combine(state.params, frozen))
    return Start(state, step, record.elapsed_seconds, record.skipped_steps, record.data_iterator,
                 base)
  # A new run, or an imported run directory.
  state = create_train_state(setup.model, setup.tx, setup.placement, seed=config.train.seed,
                             seq_len=config.train.seq_len)
  source = config.init_from or (str(run.path) if step is not None else None)
  base = None
  if source:
    state, message, base = start_from_source(state, setup.tx, setup.shardings.opt_state, source,
                                             config.model, run_path=run.path)
    if report:
      log.info("%s", message)
  return Start(state, 0, 0.0, 0, None, base)
