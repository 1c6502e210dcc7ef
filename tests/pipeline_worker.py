"""One JAX process of a two-process test run (tests/test_pipeline.py, test_hf_datasets.py):
reads its share of an epoch.

    python tests/pipeline_worker.py DATA_DIR OUT.npy ADDRESS PROCESS_ID NUM_PROCESSES [SOURCE]

Joins the others through `jax.distributed`, builds the training pipeline of a run on DATA_DIR
(`data.source` SOURCE, default prepared) on a data-parallel mesh over all processes, and saves
the input_ids rows it was given for one epoch of steps, [steps * rows per process, seq_len], in
OUT.npy and their positions in each global batch, [rows per process], in OUT.positions.npy.
"""

import pathlib
import sys

import numpy as np

from lmjax.config import load_config
from lmjax.data.pipeline.grain_pipeline import BatchIterator
from lmjax.sharding import mesh_rules
from lmjax.train.inputs import batch_sources, load_corpus
from lmjax.train.multihost import initialize_distributed
from tests.conftest import TINY


def main(data_dir: str, out: str, address: str, process_id: int, num_processes: int,
         kind: str = "prepared") -> None:
  config = load_config("tiny-gpt", TINY + [
      f"data.source={kind}", f"data.paths=[{data_dir}]", f"mesh.data={num_processes}",
      f"distributed.coordinator_address={address}", f"distributed.num_processes={num_processes}",
      f"distributed.process_id={process_id}", "distributed.initialization_timeout=60"])
  initialize_distributed(config.distributed)
  placement = mesh_rules(config.mesh)
  source, _ = batch_sources(config, load_corpus(config))
  positions = placement.process_batch_positions(source.batch_size)
  steps = source.num_rows // source.batch_size
  batches = BatchIterator(source, positions, num_steps=steps)
  rows = np.concatenate([next(batches)["input_ids"] for _ in range(steps)])
  batches.close()
  np.save(out, rows)
  np.save(pathlib.Path(out).with_suffix(".positions.npy"), positions)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), *sys.argv[6:])
