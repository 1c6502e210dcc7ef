"""Pod entry point: every host runs the same command, e.g.

    python train/train.py configs/gpt2-small.yaml --run-dir gs://bucket/runs/gpt2 \
        --set distributed.coordinator_address=10.0.0.2:1234 distributed.num_processes=4 \
              distributed.process_id=$RANK

It is `lmjax train` under another name, so that launchers which expect a script path work.
"""

import sys

from lmjax.cli import main

if __name__ == "__main__":
  sys.exit(main(["train", *sys.argv[1:]]))
