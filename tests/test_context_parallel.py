"""Context parallelism: a sequence split over mesh.context computes what one device computes.

The 8-device work runs in one child (tests/context_parallel_worker.py), started once per
module; the tests below read what it recorded. Config checks run here, on the suite's device.
"""

import json

import numpy as np
import pytest

from lmjax.config import load_config
from lmjax.errors import UserError
from lmjax.model.context_parallel import zigzag_slots
from tests.context_parallel_worker import ATTENTION_CASES, GRADIENT_CASES, MODELS, REFUSALS
from tests.helpers import assert_refused, assert_resumed_as_uninterrupted, rows
from tests.processes import children, cpu_env

# Params as tests/test_sharding.py compares them: 1e-5 relative, plus 1e-6 absolute for leaves
# whose gradient is zero up to rounding (a key bias shifts every logit of a query alike, which
# the softmax ignores), so that Adam's steps on rounding noise differ between meshes.
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
  """(what the child recorded, its output directory)."""
  out = tmp_path_factory.mktemp("context_parallel")
  with children(out) as group:
    group.start("worker", ["-m", "tests.context_parallel_worker", str(out)], cpu_env(8))
    group.check(timeout=600)
  return json.loads((out / "results.json").read_text()), out


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_ring_and_all_gathered_attention_equal_dense_attention(recorded, case):
  """Grouped K/V, packed documents with padding, causal or bidirectional, with and without a
  sliding window: the values (and for some cases the gradients) of dense attention."""
  results, _ = recorded
  assert results["attention_errors"][case] <= 1e-5
  if case in GRADIENT_CASES:
    assert results["gradient_errors"][case] <= 1e-5
  assert results["padding_outputs"][case] == 0.0  # a query that sees nothing gives zeros


@pytest.mark.parametrize("layout", ["packed", "unpacked"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_context_parallel_training_matches_one_device(recorded, kind, layout):
  results, out = recorded
  one, split = f"{kind}-{layout}-one_device", f"{kind}-{layout}-context4"
  np.testing.assert_allclose(results["losses"][split], results["losses"][one], rtol=RTOL)
  expected, actual = np.load(out / f"{one}.npz"), np.load(out / f"{split}.npz")
  assert sorted(expected.files) == sorted(actual.files)
  for name in expected.files:
    np.testing.assert_allclose(actual[name], expected[name], rtol=RTOL, atol=ATOL, err_msg=name)
  assert results["losses"][one][-1] < results["losses"][one][0]  # the params moved


def test_a_run_on_a_context_mesh_resumes_on_a_data_mesh_as_if_uninterrupted(recorded):
  _, out = recorded
  whole, resumed = out / "whole", out / "resumed"
  assert_resumed_as_uninterrupted(whole, resumed, rows(whole), rows(resumed), 4, rtol=RTOL)
  history = (resumed / "config_history.jsonl").read_text()
  assert "mesh.context" in history


@pytest.mark.parametrize("case, expected", [
    ("indivisible", ["train.seq_len=30", "mesh.context=4", "4 divides 30"]),
    ("zigzag", ["train.seq_len=36", "mesh.context = 4", "2 x 4 = 8 chunks", "multiple of 8",
                "model.context_parallel=allgather"]),
    ("stages", ["mesh.stage=2", "mesh.context", "not supported yet"]),
])
def test_a_sequence_the_context_axis_cannot_split_or_a_pipeline_is_refused(recorded, case, expected):
  assert case in REFUSALS
  assert_refused(recorded[0]["refusals"][case], expected)


# -- on the suite's one device --------------------------------------------------------------


def test_an_unknown_strategy_is_refused_naming_the_choices(tiny):
  with pytest.raises(UserError, match="model.context_parallel='rign' is not one of auto, "
                                      "allgather, ring .did you mean ring"):
    load_config("tiny-llama", tiny + ["model.context_parallel=rign"])


def test_zigzag_order_gives_each_device_an_early_and_a_late_chunk():
  # 16 slots, 4 devices: chunks of 2; device i holds chunks i and 7 - i
  assert zigzag_slots(16, 4).reshape(4, 4).tolist() == [
      [0, 1, 14, 15], [2, 3, 12, 13], [4, 5, 10, 11], [6, 7, 8, 9]]
