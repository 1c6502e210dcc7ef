"""Perplexity of long documents: `lmjax eval --data` against a transformers loop (run by hand).

    .venv/bin/python benchmarks/perplexity.py [--layers 30] [--tokens 500 4232 16000]
                                              [--workdir /tmp/lmjax-perplexity-bench]

Writes a random Llama-style Hugging Face model with SmolLM2-135M's shape (hidden 576, 9 heads,
3 KV heads, MLP 1536, a 49,152-token vocabulary, tied embeddings, an 8,192-token context;
`--layers` of its 30) and a BPE tokenizer trained on the built-in corpus, then documents of
about `--tokens` tokens each. For each document, in child processes: `python -m lmjax eval --hf
DIR --data FILE` (float32, disjoint windows of the whole context), and a PyTorch (CPU) loop over
the same windows (`lmjax.infer.perplexity.window_requests`) that takes log_softmax of the model's
logits, as HF's perplexity guide and lm-evaluation-harness do. Reports each one's wall time
(process start to exit: imports, loading and, for lmjax, compiling included), peak resident
memory (ru_maxrss) and perplexity, which must agree.

Measured with the defaults on a 2-core CPU VM (no GPU) that ran other work too: 500 tokens,
lmjax 4.8 s / 1.29 GiB against transformers 6.4 s / 1.19 GiB; 4,232 tokens, 23.5 s / 2.07 GiB
against 13.5 s / 2.87 GiB (before windows were scored at nearly their length, a chunk of logits
at a time: 128.8 s / 7.79 GiB); 16,000 tokens, 93.5 s / 3.19 GiB against 86.6 s / 6.34 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
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


def write_model(directory: pathlib.Path, layers: int) -> None:
  import torch
  import transformers
  config = transformers.LlamaConfig(
      hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
      num_hidden_layers=layers, vocab_size=49152, max_position_embeddings=8192,
      rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=0,
      eos_token_id=0)
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(config).save_pretrained(directory)


def write_documents(work: pathlib.Path, tokenizer, sizes: list[int]) -> list[pathlib.Path]:
  """A plain text file per size: the built-in corpus' paragraphs, cut at about that many tokens."""
  from lmjax.data.sources.documents import builtin_corpus
  paragraphs = [p for text in builtin_corpus() for p in text.split("\n\n") if p.strip()]
  paths = []
  for size in sizes:
    text, n = "", 0
    while len(tokenizer.encode(text)) < size:
      text += paragraphs[n % len(paragraphs)].strip() + "\n\n"
      n += 1
    ids = tokenizer.encode(text)[:size]
    path = work / f"doc-{size}.txt"
    path.write_text(tokenizer.decode(ids), encoding="utf-8")
    paths.append(path)
  return paths


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, default=30)
  parser.add_argument("--tokens", type=int, nargs="+", default=[500, 4232, 16000])
  parser.add_argument("--workdir", default="/tmp/lmjax-perplexity-bench")
  args = parser.parse_args()
  from lmjax.data.sources.documents import builtin_corpus
  from lmjax.data.tokenize.tokenizer import Tokenizer
  from lmjax.infer.perplexity import prefix_id, window_requests

  work = pathlib.Path(args.workdir)
  shutil.rmtree(work, ignore_errors=True)
  model_dir = work / "hf"
  write_model(model_dir, args.layers)
  tokenizer = Tokenizer.train_bpe(builtin_corpus(), vocab_size=8192)
  tokenizer.save(model_dir)
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
  env["JAX_PLATFORMS"] = "cpu"
  print(f"model: random Llama, hidden 576, {args.layers} layers, vocab 49152, context 8192; "
        f"{os.cpu_count()} CPUs")
  gib = lambda b: f"{b / 2**30:.2f} GiB"
  for path in write_documents(work, tokenizer, args.tokens):
    text = path.read_text(encoding="utf-8")
    windows = window_requests(tokenizer.encode(text), prefix=prefix_id(tokenizer),
                              max_length=8192, stride=8192)
    windows_file = path.with_suffix(".windows.json")
    windows_file.write_text(json.dumps(windows))
    t_jax, rss_jax, out = measure([sys.executable, "-m", "lmjax", "eval", "--hf", str(model_dir),
                                   "--data", str(path)], env)
    lmjax = json.loads(out.splitlines()[-1])
    t_torch, rss_torch, out = measure([sys.executable, "-c", _TORCH_LOOP, str(model_dir),
                                       str(windows_file)], env)
    torch_result = json.loads(out.splitlines()[-1])
    torch_ppl = 2.718281828459045 ** (torch_result["nll"] / torch_result["tokens"])
    print(f"{lmjax['tokens']} tokens ({len(windows)} window(s)): "
          f"lmjax {t_jax:.1f} s, {gib(rss_jax)}, perplexity {lmjax['perplexity']:.4f} | "
          f"transformers {t_torch:.1f} s (load {torch_result['load_s']:.1f} s, score "
          f"{torch_result['score_s']:.1f} s), {gib(rss_torch)}, perplexity {torch_ppl:.4f} | "
          f"lmjax/transformers: time {t_jax / t_torch:.2f}x, memory {rss_jax / rss_torch:.2f}x",
          flush=True)


if __name__ == "__main__":
  main()
