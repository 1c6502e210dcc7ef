"""A run on disk: its directory, checkpoints and their records, loading and inspecting them.

    run_dir.py          RunDir: the layout (config.yaml, checkpoints/, metrics.jsonl, …)
    record.py           TrainState (the checkpointed pytree) and CheckpointRecord (its JSON)
    checkpointer.py     the Orbax checkpointer: async saves, fallback past damaged steps
    streamed_arrays.py  arrays made one at a time as a checkpoint writes them (imports)
    restore.py          restoring a run's params from its checkpoints (past damaged steps)
    loader.py           THE loader: lmjax.load (run dir, HF dir, hub id), load_run, init_from's
    source_fields.py    what a run keeps of its HF source, and what its export writes
    base_ref.py         BaseRef: the base a LoRA run's adapter-only checkpoints refer to
    inspection.py       `lmjax checkpoints`: each step's size, position and whether it restores

Nothing here imports the trainer: what a checkpoint holds is defined here, and the trainer
builds on it.
"""

from lmjax.run.checkpointer import Checkpointer
from lmjax.run.loader import Loaded, load, load_run, load_run_at
from lmjax.run.record import CheckpointRecord, TrainState
from lmjax.run.run_dir import RunDir

__all__ = ["CheckpointRecord", "Checkpointer", "Loaded", "RunDir", "TrainState", "load",
           "load_run", "load_run_at"]
