"""Weights & Biases as a third metrics sink (`logging.wandb.*`), on the main process only.

The W&B run takes the run directory's name (or `logging.wandb.name`), the resolved config and
every scalar of every metrics row at its step. Its id is kept in RUN_DIR/wandb_run_id, so a
resumed run continues the same W&B run. Offline mode writes under RUN_DIR/wandb (upload later
with `wandb sync`). A W&B run that cannot start (no network, no API key, wandb not installed)
never stops training: a warning says why, and metrics.jsonl and TensorBoard go on as always.
"""

from __future__ import annotations

import logging
import pathlib
import uuid
from collections.abc import Mapping
from typing import Any

from lmjax.config import WandbConfig
from lmjax.extras import install_hint

log = logging.getLogger(__name__)

_ID_FILE = "wandb_run_id"
_INIT_TIMEOUT_SECONDS = 30  # online mode without a network gives up after this, not wandb's 90


class WandbLogger:
  """Logs metrics rows to W&B when `settings.project` is set and mode is not disabled."""

  def __init__(self, settings: WandbConfig, run_dir: pathlib.Path, config: Mapping[str, Any]):
    self._run = None
    if settings.project is None or settings.mode == "disabled":
      return
    try:
      import wandb  # noqa: PLC0415 -- an optional dependency (lmjax[wandb])
    except ImportError:
      log.warning("logging.wandb.project is set but wandb is not installed (%s); logging to "
                  "metrics.jsonl and TensorBoard only", install_hint("wandb"))
      return
    run_dir.mkdir(parents=True, exist_ok=True)
    id_file = run_dir / _ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    try:
      self._run = wandb.init(
          project=settings.project, entity=settings.entity, mode=settings.mode,
          name=settings.name or run_dir.resolve().name, id=run_id, resume="allow",
          dir=str(run_dir), config=dict(config),
          settings=wandb.Settings(init_timeout=_INIT_TIMEOUT_SECONDS, console="off",
                                  silent=True))
    except Exception as e:  # noqa: BLE001 -- whatever stops W&B must not stop training
      log.warning("Weights & Biases did not start (%s: %s); logging to metrics.jsonl and "
                  "TensorBoard only", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
      return
    if not id_file.is_file():
      id_file.write_text(run_id + "\n")
    where = f" in {run_dir / 'wandb'} (upload with `wandb sync`)" if settings.mode == "offline" \
        else ""
    log.info("logging to Weights & Biases run %s (%s)%s", run_id, settings.mode, where)

  @property
  def active(self) -> bool:
    return self._run is not None

  def log(self, row: Mapping[str, Any]) -> None:
    if self._run is None:
      return
    scalars = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))
               and not isinstance(v, bool)}
    try:
      self._run.log(scalars, step=int(row["step"]))
    except Exception as e:  # noqa: BLE001
      log.warning("Weights & Biases stopped logging (%s); metrics.jsonl goes on", e)
      self._run = None

  def close(self) -> None:
    if self._run is not None:
      try:
        self._run.finish()
      except Exception as e:  # noqa: BLE001
        log.warning("Weights & Biases did not finish cleanly (%s)", e)
      self._run = None
