"""Training throughput with frequent checkpoints: asynchronous vs blocking writes (run by hand).

    .venv/bin/python benchmarks/checkpoint_throughput.py [--config tiny-gpt] [--steps 60]
        [--every 5] [--set key=value ...] [--workdir /tmp/ckpt-bench]

Trains the same run three times from scratch in this process: checkpointing only at the end
(the baseline), every `--every` steps with Orbax's asynchronous writes (the default), and every
`--every` steps blocking on each write. Reports tokens/s over steps 2..N (the first step
compiles), as the loop itself measures it, and the cost of checkpointing relative to the
baseline. The final write is waited for after the clock stops in every mode.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil

from lmjax.config import load_config
from lmjax.train.loop import train

# The test suite's tiny run, widened: a ~3M-parameter GPT on bytes.
SMALL = ["model.num_layers=4", "model.embed_dim=256", "model.num_heads=4", "model.mlp_dim=1024",
         "model.vocab_size=288", "model.max_seq_len=64", "data.tokenizer=byte",
         "train.seq_len=64", "train.batch_size=16", "train.warmup_steps=5", "train.eval_every=0",
         "train.eval_batches=2"]


def tokens_per_second(config_name: str, overrides: list[str], run_dir: pathlib.Path, *,
                      steps: int, every: int, async_checkpoints: bool) -> float:
  """The loop's tokens/s over steps 2..`steps` of a fresh run in `run_dir`."""
  shutil.rmtree(run_dir, ignore_errors=True)
  config = load_config(config_name, overrides + [f"train.steps={steps}", f"train.log_every={steps}",
                                                 f"train.checkpoint_every={every}"])
  result = train(config, run_dir, async_checkpoints=async_checkpoints)
  return result.last_row["tokens_per_second"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="tiny-gpt")
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--every", type=int, default=5, help="checkpoint every N steps")
  parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                      help="extra config overrides (default: a ~3M-parameter GPT on bytes)")
  parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/ckpt-bench"))
  args = parser.parse_args()
  overrides = SMALL + args.overrides
  modes = {"final checkpoint only": (args.steps, True),
           f"every {args.every} steps, async": (args.every, True),
           f"every {args.every} steps, blocking": (args.every, False)}
  results = {}
  for name, (every, use_async) in modes.items():
    results[name] = tokens_per_second(args.config, overrides, args.workdir / "run", steps=args.steps,
                                      every=every, async_checkpoints=use_async)
  baseline = results["final checkpoint only"]
  for name, value in results.items():
    print(f"{name:<32} {value:>10.0f} tokens/s  ({value / baseline:.0%} of baseline)")
  print(json.dumps({"config": args.config, "steps": args.steps, "every": args.every,
                    "tokens_per_second": results}))


if __name__ == "__main__":
  main()
