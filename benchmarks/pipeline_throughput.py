"""Input-pipeline throughput next to the trainer's consumption (run by hand).

    .venv/bin/python benchmarks/pipeline_throughput.py [CONFIG] [--steps 200] [--set k=v ...]

Reports, for a config (default: the demo, tiny-gpt): tokenizer training, tokenization and
packing speed over the whole corpus, how fast step-indexed batches are produced afterwards
(tokens/s, MLM masking included for MLM configs) directly and through the Grain iterator the
trainer uses (one prefetch thread, or 2 worker processes), `lmjax data prepare` speed and
batches read back from its array_record shards, and the trainer's own tokens/s from a short
run on the same config, so the rates can be compared.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from lmjax.config import load_config
from lmjax.data.pipeline.batches import pack_for
from lmjax.data.pipeline.corpus import Corpus
from lmjax.data.pipeline.grain_pipeline import BatchIterator
from lmjax.data.rows import MemoryRows
from lmjax.data.sources.documents import read_documents
from lmjax.data.tokenize.setup import build_tokenizer
from lmjax.train.inputs import batch_sources, batch_spec, load_corpus, prepare_data
from lmjax.train.loop import train


def iterator_rate(source, positions, steps: int, workers: int) -> float:
  """Tokens/s handed out by the trainer's Grain iterator, after its first batch."""
  batches = BatchIterator(source, positions, num_steps=steps + 1, workers=workers)
  next(batches)
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)
  elapsed = time.perf_counter() - start
  batches.close()
  return steps * len(positions) * source.rows.take(np.arange(1))["input_ids"].shape[1] / elapsed


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("config", nargs="?", default="tiny-gpt")
  parser.add_argument("--steps", type=int, default=200, help="batches to draw / steps to train")
  parser.add_argument("--set", dest="overrides", nargs="*", default=[])
  args = parser.parse_args()
  config = load_config(args.config, args.overrides)
  source = config.data.sources[0]

  t0 = time.perf_counter()
  documents = read_documents(source=source.source, paths=source.paths, field=source.field,
                             split=source.split, data_dir=source.data_dir)
  t1 = time.perf_counter()
  spec = batch_spec(config)
  tokenizer = build_tokenizer(config.tokenizer_choice, documents, vocab_size=spec.vocab_size)
  t2 = time.perf_counter()
  token_docs = tokenizer.encode_batch(documents)
  t3 = time.perf_counter()
  rows = pack_for(spec.objective, tokenizer, token_docs, spec.seq_len)
  t4 = time.perf_counter()
  num_tokens = sum(map(len, token_docs))
  num_bytes = sum(len(d.encode()) for d in documents)
  print(f"corpus: {len(documents)} documents, {num_bytes / 1e6:.2f} MB, {num_tokens} tokens")
  print(f"read {t1 - t0:.2f} s | tokenizer ({config.data.tokenizer or 'bpe'}) {t2 - t1:.2f} s | "
        f"tokenize {num_tokens / (t3 - t2):,.0f} tokens/s | pack {num_tokens / (t4 - t3):,.0f} tokens/s")

  memory_rows = MemoryRows(rows, np.zeros(len(rows["input_ids"]), np.int32))
  train_source, _ = batch_sources(config, Corpus(tokenizer, memory_rows, memory_rows))
  t5 = time.perf_counter()
  for step in range(args.steps):
    train_source.batch(step)
  t6 = time.perf_counter()
  tokens_per_step = config.train.batch_size * config.train.seq_len
  print(f"batches: {args.steps * tokens_per_step / (t6 - t5):,.0f} tokens/s "
        f"({(t6 - t5) / args.steps * 1e3:.2f} ms per batch of {tokens_per_step} tokens)")

  positions = np.arange(config.train.batch_size)
  for workers in (0, 2):
    print(f"grain iterator, {workers or 'no'} worker processes: "
          f"{iterator_rate(train_source, positions, args.steps, workers):,.0f} tokens/s")

  with tempfile.TemporaryDirectory() as data_dir:
    for workers in (0, 2):
      t7 = time.perf_counter()
      prepare_data(config, f"{data_dir}/w{workers}", workers=workers)
      print(f"data prepare, {workers or 'no'} worker processes: "
            f"{num_tokens / (time.perf_counter() - t7):,.0f} tokens/s (tokenizer training included)")
    prepared = load_corpus(load_config(args.config, args.overrides + [
        "data.source=prepared", f"data.paths=[{data_dir}/w0]"]))
    prepared_source, _ = batch_sources(config, prepared)
    for workers in (0, 2):
      print(f"grain iterator over prepared shards, {workers or 'no'} worker processes: "
            f"{iterator_rate(prepared_source, positions, args.steps, workers):,.0f} tokens/s")

  with tempfile.TemporaryDirectory() as run_dir:
    result = train(load_config(args.config, args.overrides + [
        f"train.steps={args.steps}", f"train.log_every={args.steps}", "train.eval_every=0",
        f"train.checkpoint_every={args.steps}"]), run_dir)
  print(f"trainer: {result.last_row['tokens_per_second']:,.0f} tokens/s consumed")


if __name__ == "__main__":
  main()  # under a main guard: Grain's worker processes start by importing this module
