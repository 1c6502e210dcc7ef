"""Weighted mixtures of sources: config, held-out data per source, observed proportions."""

import json

import numpy as np
import pytest

from lmjax.config import load_config
from lmjax.train.inputs import batch_sources, load_corpus
from lmjax.errors import UserError
from tests.conftest import TINY


def write_jsonl(path, texts):
  path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  return str(path)


@pytest.fixture
def mixture_overrides(tmp_path):
  small = write_jsonl(tmp_path / "small.jsonl", [f"small document number {i}." for i in range(60)])
  return TINY + [f"data.mixture=[{{source: jsonl, paths: [{small}], weight: 3}}, "
                 f"{{source: builtin, weight: 1}}]"]


def test_observed_proportions_match_the_weights(mixture_overrides):
  config = load_config("tiny-gpt", mixture_overrides)
  corpus = load_corpus(config)
  assert set(np.unique(corpus.held_out.source_ids)) == {0, 1}  # each source keeps held-out rows
  source, _ = batch_sources(config, corpus)
  rows = np.concatenate([source.row_indices(step) for step in range(400)])
  share = np.mean(corpus.train.source_ids[rows] == 0)
  assert abs(share - 0.75) < 0.02  # 3200 draws: the standard error is 0.008
  # Every draw is a real row: the batch holds exactly the rows the indices name.
  np.testing.assert_array_equal(source.batch(3)["input_ids"],
                                corpus.train.take(source.row_indices(3))["input_ids"])


def test_mixture_batches_are_a_function_of_the_step(mixture_overrides):
  config = load_config("tiny-gpt", mixture_overrides)
  corpus = load_corpus(config)
  a, _ = batch_sources(config, corpus)
  b, _ = batch_sources(config, corpus)
  for step in (0, 7, 123):
    np.testing.assert_array_equal(a.batch(step)["input_ids"], b.batch(step)["input_ids"])
  assert not np.array_equal(a.batch(1)["input_ids"], a.batch(2)["input_ids"])


@pytest.mark.parametrize("override, expected", [
    ("data.mixture=[{source: builtin, weight: 0}]", "data.mixture[0].weight=0 is out of range: it must be in (0, inf)"),
    ("data.mixture=[{source: builtin, wieght: 2}]", "did you mean data.mixture[0].weight?"),
    ("data.mixture=[{source: builtin}]\ndata.source=text", "replaces data.source"),
])
def test_mixture_mistakes_are_explained(override, expected):
  with pytest.raises(UserError) as info:
    load_config("tiny-gpt", TINY + override.split("\n"))
  assert expected in str(info.value)
