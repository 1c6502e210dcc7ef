"""`lmjax serve` under load: throughput and latency at 1, 8 and 32 concurrent clients, beside
the same requests one by one through transformers' `generate` and in batches through
`lmjax.generate` (run by hand).

    .venv/bin/python benchmarks/serve.py [--width 256] [--layers 4] [--vocab 8192] [--prompt 32]
                                         [--new 128] [--clients 1 8 32] [--requests 2]
                                         [--adapters N]

One random GPT-2 (as benchmarks/decode_throughput.py) with a BPE trained on the built-in corpus,
saved as Hugging Face saves it. The server (`--max-batch` = the most clients) runs in its own
process; each client sends `--requests` streamed greedy completions in turn (token-id prompts of
`--prompt` tokens, `--new` tokens each, through the `openai` client), after one warm-up request
per prompt bucket. Tokens/s counts every client's new tokens over the wall time of the round;
time to first token (TTFT) and whole-request latency are per request, p50 and p99. Baselines:
transformers' `generate` on the same prompts one at a time (what a server without batching
does; the faster of 1 thread and all cores: on a busy machine PyTorch's thread pool can be 20x
slower with 2 threads than with 1), and `lmjax.generate` on all of a round's prompts as one
batch (offline, no server). The `openai` clients run in this process, beside the server's.
`--adapters N` also serves N random PEFT LoRA adapters (rank 8 on c_attn and c_fc), and the
clients take turns over the base and the adapters, so every batch mixes them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from decode_throughput import add_model_arguments, random_gpt2  # beside this file

ROOT = pathlib.Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
  return float(np.percentile(np.asarray(values), q))


def random_adapters(hf_model, directory: str, count: int) -> list[str]:
  """`count` random PEFT LoRA adapters of `hf_model` under `directory`: their --adapter flags."""
  import copy

  import peft
  import torch
  flags = []
  for n in range(count):
    torch.manual_seed(n)
    adapted = peft.get_peft_model(copy.deepcopy(hf_model), peft.LoraConfig(
        r=8, lora_alpha=16, target_modules=["c_attn", "c_fc"], init_lora_weights=False,
        fan_in_fan_out=True))
    adapted.save_pretrained(f"{directory}/adapter{n}")
    flags += ["--adapter", f"adapter{n}={directory}/adapter{n}"]
  return flags


def start_server(model_dir: str, max_batch: int, max_seq_len: int, log: pathlib.Path,
                 flags: list[str] = ()):
  out = open(log, "w")
  process = subprocess.Popen(
      [sys.executable, "-m", "lmjax", "serve", "--hf", model_dir, "--port", "0",
       "--max-batch", str(max_batch), "--max-seq-len", str(max_seq_len), "--model-name", "bench",
       *flags],
      cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
      env={**os.environ, "PYTHONPATH": str(ROOT)})
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline:
    found = re.search(r"at (http://[\d.]+:\d+/v1)", log.read_text())
    if found:
      return process, found.group(1)
    if process.poll() is not None:
      sys.exit(f"the server exited:\n{log.read_text()}")
    time.sleep(0.2)
  process.kill()
  sys.exit("the server did not start in 300 s")


async def one_request(client, prompt: list[int], new: int, model: str = "bench"
                      ) -> tuple[float, float, int]:
  """(time to first token, latency, new tokens) of one streamed greedy completion."""
  start = time.perf_counter()
  first, tokens = None, 0
  stream = await client.completions.create(
      model=model, prompt=prompt, max_tokens=new, temperature=0, stream=True,
      stream_options={"include_usage": True})
  async for chunk in stream:
    if first is None and chunk.choices:
      first = time.perf_counter() - start
    if chunk.usage is not None:
      tokens = chunk.usage.completion_tokens
  return first, time.perf_counter() - start, tokens


async def round_of(url: str, prompts: list[list[int]], clients: int, requests: int, new: int,
                   models: list[str] = ("bench",)):
  """Tokens/s, TTFTs and latencies of `clients` clients sending `requests` requests each,
  client c asking for models[c % len(models)]."""
  import openai
  client = openai.AsyncOpenAI(base_url=url, api_key="none", timeout=600, max_retries=0)

  async def one_client(c: int):
    return [await one_request(client, prompts[(c * requests + r) % len(prompts)], new,
                              models[c % len(models)])
            for r in range(requests)]

  start = time.perf_counter()
  results = [r for rs in await asyncio.gather(*(one_client(c) for c in range(clients)))
             for r in rs]
  wall = time.perf_counter() - start
  await client.close()
  return (sum(r[2] for r in results) / wall, [r[0] for r in results], [r[1] for r in results])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_model_arguments(parser)
  parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
  parser.add_argument("--requests", type=int, default=2, help="requests per client")
  parser.add_argument("--baseline-requests", type=int, default=4,
                      help="requests timed one by one through transformers")
  parser.add_argument("--adapters", type=int, default=0,
                      help="random LoRA adapters served too, the clients taking turns over them")
  args = parser.parse_args()

  import torch

  import lmjax
  from lmjax.data.sources.documents import builtin_corpus
  from lmjax.data.tokenize.tokenizer import Tokenizer

  max_seq_len = args.prompt + args.new
  hf_model = random_gpt2(args)  # its EOS id, 50256, lies outside the vocabulary: never generated
  rng = np.random.default_rng(0)
  prompts = rng.integers(2, args.vocab, (max(args.clients) * args.requests, args.prompt)).tolist()
  print(f"GPT-2 {args.layers} layers x {args.width}, vocab {args.vocab}; {args.prompt}-token "
        f"prompts, {args.new} new tokens, greedy; {os.cpu_count()} cores", flush=True)
  with tempfile.TemporaryDirectory() as directory:
    Tokenizer.train_bpe(builtin_corpus(), vocab_size=args.vocab).save(directory)
    hf_model.save_pretrained(directory)
    loaded = lmjax.load(directory, kind="hf")
    flags = random_adapters(hf_model, directory, args.adapters)
    models = ["bench"] + [f"adapter{n}" for n in range(args.adapters)]
    process, url = start_server(directory, max(args.clients), max_seq_len,
                                pathlib.Path(directory) / "server.log", flags)
    try:
      asyncio.run(round_of(url, prompts, 1, 1, args.new))  # warm-up
      rows = []
      for clients in args.clients:
        rate, ttfts, latencies = asyncio.run(round_of(url, prompts, clients, args.requests,
                                                      args.new, models))
        round_prompts = prompts[:clients * args.requests]
        lmjax.generate(loaded.model, loaded.params, round_prompts[:clients],
                       max_new_tokens=args.new, temperature=0)  # compiles this batch size
        start = time.perf_counter()
        lmjax.generate(loaded.model, loaded.params, round_prompts[:clients],
                       max_new_tokens=args.new, temperature=0)
        batch_rate = clients * args.new / (time.perf_counter() - start)
        rows.append((clients, rate, ttfts, latencies, batch_rate))
        print(f"{clients:>3} clients: serve {rate:,.0f} tok/s, TTFT p50 "
              f"{percentile(ttfts, 50) * 1e3:.0f} ms p99 {percentile(ttfts, 99) * 1e3:.0f} ms, "
              f"latency p50 {percentile(latencies, 50):.2f} s p99 "
              f"{percentile(latencies, 99):.2f} s | lmjax.generate batch {clients}: "
              f"{batch_rate:,.0f} tok/s", flush=True)
    finally:
      process.send_signal(signal.SIGTERM)
      process.wait(60)
  hf_rate = 0.0
  for threads in sorted({1, os.cpu_count() or 1}):  # the faster: a busy machine slows the pool
    torch.set_num_threads(threads)
    times = []
    for prompt in prompts[:args.baseline_requests + 1]:
      ids = torch.tensor([prompt])
      start = time.perf_counter()
      with torch.no_grad():
        hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          max_new_tokens=args.new, min_new_tokens=args.new, pad_token_id=0)
      times.append(time.perf_counter() - start)
    rate = args.new / statistics.median(times[1:])  # the first call warms PyTorch up
    print(f"transformers generate, one request at a time, {threads} thread(s): {rate:,.0f} "
          f"tok/s", flush=True)
    hf_rate = max(hf_rate, rate)
  for clients, rate, _, _, _ in rows:
    print(f"{clients:>3} clients: lmjax serve is {rate / hf_rate:.1f}x transformers one by one",
          flush=True)


if __name__ == "__main__":
  main()
