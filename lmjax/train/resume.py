"""Where a run starts: its newest checkpoint that restores, imported weights, or a fresh init.

A damaged newer checkpoint is reported and moved to RUN_DIR/corrupt_checkpoints/; an imported
run directory (weights only) and `model.init_from` start from those weights with a fresh
optimizer.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from lmjax.config import Config
from lmjax.run.checkpointer import Checkpointer
from lmjax.run.record import TrainState
from lmjax.run.run_dir import RunDir
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


def start_or_resume(config: Config, run: RunDir, setup: StepSetup, checkpointer: Checkpointer,
                    *, report: bool) -> Start:
  """The state to train from, with what the checkpoint recorded.

  `report` logs what fine-tuning loaded (on the writing process only).
  """
  def restore(step: int):
    record = checkpointer.restore_record(step)
    if record.params_only:  # an imported run directory: weights, no optimizer state yet
      return None, record
    return checkpointer.restore(step, setup.abstract_state)

  step, restored, skipped = checkpointer.restore_newest(restore)
  if skipped:
    checkpointer.quarantine([s.step for s in skipped], run.corrupt_checkpoints)
  state, record = restored or (None, None)
  if state is not None:
    return Start(state, step, record.elapsed_seconds, record.skipped_steps, record.data_iterator)
  # A new run, or an imported run directory.
  state = create_train_state(setup.model, setup.tx, setup.placement, seed=config.train.seed,
                             seq_len=config.train.seq_len)
  source = config.init_from or (str(run.path) if step is not None else None)
  if source:
    state, message = start_from_source(state, setup.tx, setup.shardings.opt_state, source,
                                       config.model)
    if report:
      log.info("%s", message)
  return Start(state, 0, 0.0, 0, None)
