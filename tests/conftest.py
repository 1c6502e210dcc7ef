"""Shared helpers: tiny, fast run configs on the built-in corpus."""

import json
import os

from tests.processes import XLA_CPU_FLAGS

# Tests run on CPU; keep XLA from grabbing every core in every xdist worker.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# PyTorch (the transformers, peft and trl references) and numpy's OpenBLAS on one thread each:
# the suite runs 3 workers and their children on 2 cores, and OpenMP's threads spin waiting for
# work the other workers' cores hold. Training the 60-step reference GPT-2 took 13-15 CPU-s and
# 30-47 s with torch's 2 threads on the loaded machine, 0.8 CPU-s and 2.7 s with one. Read when
# torch and numpy load, so set before any test module imports them; children inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Compiling dominates these tiny models' tests: compile with XLA's fastest-compiling CPU flags
# (they change no result a test compares; child processes use the same ones, see
# tests/processes.py) and keep compiled programs in a persistent cache that all test processes
# share, so the many tests that train the same tiny model compile it once. Set before JAX
# starts; children inherit both.
os.environ.setdefault("XLA_FLAGS", XLA_CPU_FLAGS)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# `datasets` (lm-eval's local tasks, hf_datasets sources) caches what it reads from local files:
# in the repository's pytest cache, not the user's home. Nothing here reaches the Hub.
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "hf_datasets"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

# The helper modules shared by the test modules assert too: rewrite their asserts as pytest
# does a test module's, so that a failing check in them reports its values.
pytest.register_assert_rewrite("tests.helpers", "tests.hf_models")

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


@pytest.fixture(scope="session")
def trained_gpt(tmp_path_factory):
  """A tiny-gpt run trained for 10 steps (a byte tokenizer), shared by the modules that read
  a trained run: trained once per test process."""
  from lmjax.config import load_config
  from lmjax.train.loop import train
  run_dir = tmp_path_factory.mktemp("gpt")
  train(load_config("tiny-gpt", TINY + ["train.steps=10"]), run_dir)
  return run_dir


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
  """A JSON Lines file of real paragraphs labelled by the corpus they come from
  (tests/labelled_text.py)."""
  from tests.labelled_text import two_corpora
  path = tmp_path_factory.mktemp("labelled") / "two_corpora.jsonl"
  path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in two_corpora()),
                  encoding="utf-8")
  return path


# The modules that take longest, longest first. `make test` hands whole modules to its two
# workers (`--dist loadfile --no-loadscope-reorder`) in collection order: starting these first
# keeps one of them from being the last module left while the others idle (xdist's own
# order, by number of tests, put the few-test, minutes-long ones last). The 8-device children
# of test_sharding.py lead: they keep both cores busy for minutes. Approximate, from cold runs
# on 2 cores; a module not named here keeps its place after them.
SLOW_MODULES = [
    "test_sharding.py", "test_model.py", "test_classification.py", "test_evaluation.py",
    "test_notebooks.py", "test_lora.py", "test_reference_training.py", "test_multihost.py",
    "test_convert.py", "test_hostile.py", "test_generation_parity.py", "test_checkpoints.py",
    "test_pipeline_parallel.py", "test_train.py", "test_plan.py", "test_object_storage.py",
    "test_quantization.py", "test_generate.py", "test_convert_cli.py", "test_preference.py",
    "test_context_parallel.py", "test_moe.py", "test_modernbert.py", "test_splash.py",
]


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_MODULES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest in order
