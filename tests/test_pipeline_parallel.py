"""Pipeline parallelism (`mesh.stage`, `train.microbatches`) computes what one device computes.

The 8-device work runs in one child, tests/pipeline_parallel_worker.py, started once per
module; the tests below read what it recorded. (tests/test_pipeline.py is the data pipeline.)
"""

import json

import numpy as np
import pytest

from lmjax.config import load_config
from lmjax.errors import UserError
from lmjax.model import PipelineSchedule
from tests.helpers import assert_refused, assert_resumed_as_uninterrupted, rows
from tests.pipeline_parallel_worker import BAD_INPUTS, MODEL_MESHES, PACKINGS, RESUME
from tests.processes import children, cpu_env

CASES = [(kind, packing, mesh) for kind, meshes in MODEL_MESHES.items() for packing in PACKINGS
         for mesh in meshes]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
  """(what the child recorded, its output directory)."""
  out = tmp_path_factory.mktemp("pipeline_parallel")
  with children(out) as group:
    # XLA's warnings shown (cpu_env hides them): the partitioner's are checked below.
    group.start("worker", ["-m", "tests.pipeline_parallel_worker", str(out)],
                cpu_env(8, TF_CPP_MIN_LOG_LEVEL="1"))
    group.check(timeout=600)
  return json.loads((out / "results.json").read_text()), out


@pytest.mark.parametrize("kind, packing, mesh", CASES)
def test_pipelined_training_matches_one_device(recorded, kind, packing, mesh):
  results, out = recorded
  one, staged = f"{kind}-{packing}-one_device", f"{kind}-{packing}-{mesh}"
  np.testing.assert_allclose(results["losses"][staged], results["losses"][one], rtol=1e-5)
  expected, actual = np.load(out / f"{one}.npz"), np.load(out / f"{staged}.npz")
  assert sorted(expected.files) == sorted(actual.files)  # the same [layers, ...] layout
  for name in expected.files:
    np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
  assert len(set(results["losses"][one])) > 1  # the params moved between steps


def test_no_stage_layout_makes_xla_replicate_an_activation_in_full(recorded):
  """The batch splits over `stage` outside the pipeline and over the other batch axes inside
  it: neither move may leave XLA's partitioner a resharding it can only do by replicating."""
  text = (recorded[1] / "worker.log").read_text(errors="replace")
  assert "Involuntary full rematerialization" not in text, text[-3000:]


def test_a_run_resumed_without_stages_matches_the_uninterrupted_pipelined_run(recorded):
  """stage=2 x 2 micro-batches for two steps, then stage=1 data=8: checkpoints keep the
  [layers, ...] layout, whatever the stages."""
  results, out = recorded
  runs = results["runs"]
  for name in ("whole", "first_half", "second_half"):
    assert runs[name]["code"] == 0, runs[name]["stderr"][-3000:]
  steps = int(next(o for o in RESUME if o.startswith("train.steps=")).split("=")[1])
  whole, resumed = out / "runs" / "whole", out / "runs" / "resumed"
  assert_resumed_as_uninterrupted(whole, resumed, rows(whole), rows(resumed), steps, rtol=1e-5)
  assert "resuming" in runs["second_half"]["stderr"]


def test_the_bubble_fraction_is_reported_at_the_start_and_by_compile_only(recorded):
  runs = recorded[0]["runs"]
  line = "pipeline: 2 stages x 2 micro-batches, 3 iterations, bubble fraction 33.3%"
  assert line in runs["whole"]["stderr"]
  assert runs["compile_only"]["code"] == 0, runs["compile_only"]["stderr"][-3000:]
  assert line in runs["compile_only"]["stdout"]
  assert "bubble fraction" not in runs["second_half"]["stderr"]


@pytest.mark.parametrize("case, expected", [
    ("stages_do_not_divide_layers", ["mesh.stage=8", "model.num_layers=4", "divides 4"]),
    ("unrolled_layers", ["mesh.stage=2", "model.scan_layers=true"]),
    ("microbatches_do_not_divide_rows", ["train.microbatches=8", "train.batch_size=16",
                                         "mesh.data x mesh.fsdp x mesh.expert = 4",
                                         "multiple of 32 rows",
                                         "train.microbatches to divide 4"]),
    ("microbatches_without_stages", ["train.microbatches=2", "mesh.stage=1",
                                     "train.grad_accum_steps"]),
    ("experts", ["mesh.stage=2", "Mixture-of-Experts", "mesh.expert"]),
])
def test_a_config_that_cannot_be_pipelined_is_refused_naming_the_values(recorded, case,
                                                                        expected):
  assert case in BAD_INPUTS
  assert_refused(recorded[0]["bad_inputs"][case], expected)
  assert "packed into" not in recorded[0]["bad_inputs"][case]["stderr"]  # before the data


# -- on the suite's one device --------------------------------------------------------------


def test_microbatches_below_one_are_refused():
  with pytest.raises(UserError, match="train.microbatches"):
    load_config("tiny-llama", ["train.microbatches=0"])


@pytest.mark.parametrize("stages, micro, bubble", [(2, 2, 1 / 3), (4, 4, 3 / 7), (4, 16, 3 / 19),
                                                   (1, 8, 0.0)])
def test_bubble_fraction_is_the_idle_share_of_the_schedule(stages, micro, bubble):
  schedule = PipelineSchedule(stages, micro)
  assert schedule.iterations == micro + stages - 1
  assert schedule.bubble_fraction == pytest.approx(bubble)

