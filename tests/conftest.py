"""Shared helpers: tiny, fast run configs on the built-in corpus."""

import os

# Tests run on CPU; keep XLA from grabbing every core in every xdist worker.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

# A model and schedule small enough that a few dozen steps take seconds on 2 cores.
TINY = [
    "model.num_layers=2", "model.embed_dim=32", "model.num_heads=4", "model.mlp_dim=64",
    "model.vocab_size=288", "model.max_seq_len=64", "data.tokenizer=byte",
    "train.seq_len=32", "train.batch_size=8", "train.warmup_steps=5", "train.log_every=5",
    "train.eval_every=10", "train.eval_batches=2", "train.checkpoint_every=10",
]


@pytest.fixture
def tiny():
  """Overrides that shrink tiny-gpt/tiny-bert/tiny-llama to a seconds-long run."""
  return list(TINY)
