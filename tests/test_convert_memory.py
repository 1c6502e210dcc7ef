"""Conversion in bounded memory: imports make, write and drop one param at a time, exports read
one param group at a time, and both give the same tensors as the in-memory path, bit for bit.

Memory figures live in benchmarks/convert_memory.py; these tests pin the behaviour that bounds
memory (nothing made or read is held past its turn) and the results.
"""

import logging
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import SingleDeviceSharding

pytest.importorskip("torch")
pytest.importorskip("transformers")

import lmjax  # noqa: E402
from lmjax.config import load_config  # noqa: E402
from lmjax.convert import from_hf, to_hf  # noqa: E402
from lmjax.hf.bindings import flatten  # noqa: E402
from lmjax.hf.engine import export_params  # noqa: E402
from lmjax.convert.runs import hf_to_run, run_to_hf  # noqa: E402
from lmjax.run.checkpointer import Checkpointer  # noqa: E402
from lmjax.run.inspection import inspect_checkpoints  # noqa: E402
from lmjax.run.record import CheckpointRecord, TrainState  # noqa: E402
from lmjax.run.streamed_arrays import DeferredArray  # noqa: E402
from lmjax.train.loop import train  # noqa: E402
from tests.conftest import TINY  # noqa: E402
from tests.hf_models import LMJAX_CASES, build_hf, random_lmjax, read_tensors  # noqa: E402


class HeldArrays:
  """Hands out arrays, a batch at a time, asserting that no earlier batch is still alive."""

  def __init__(self):
    self._batches: list[list[weakref.ref]] = []

  def hand_out(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    held = [i for i, refs in enumerate(self._batches) if any(ref() is not None for ref in refs)]
    assert not held, f"batches {held} are still held when batch {len(self._batches)} is asked for"
    self._batches.append([weakref.ref(array) for array in arrays])
    return arrays


def test_a_streamed_save_makes_each_array_after_dropping_the_previous_one(tmp_path):
  held = HeldArrays()
  values = {f"w{i}": np.arange(i, i + 96, dtype=np.float32).reshape(12, 8) for i in range(4)}
  params = {"block": {key: DeferredArray(value.shape, value.dtype,
                                         lambda v=value: held.hand_out(v.copy())[0])
                      for key, value in values.items()}}
  checkpointer = Checkpointer(tmp_path / "checkpoints", keep=1)
  try:
    checkpointer.save_streamed(0, TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                             opt_state=None),
                               CheckpointRecord.imported(source="", lmjax_version="", config={}))
    # It restores like any checkpoint: whole, onto devices, …
    sharding = SingleDeviceSharding(jax.devices()[0])
    spec = lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding)
    abstract = TrainState(step=spec(np.zeros((), np.int32)),
                          params={"block": jax.tree.map(spec, values)}, opt_state=None)
    state, record = checkpointer.restore(0, abstract)
    assert record.params_only and int(state.step) == 0
    jax.tree.map(np.testing.assert_array_equal, state.params["block"], values)
    # … and array by array, to the host.
    specs = checkpointer.array_specs(0)
    assert specs[("params", "block", "w2")] == jax.ShapeDtypeStruct((12, 8), np.float32)
    some = checkpointer.restore_arrays(0, {("params", "block", "w2"): specs[("params", "block",
                                                                             "w2")]})
    np.testing.assert_array_equal(some[("params", "block", "w2")], values["w2"])
  finally:
    checkpointer.close()


@pytest.mark.parametrize("name", ["gpt2_lm", "llama", "bert_mlm", "qwen3"])
def test_import_then_export_through_a_run_reproduces_every_tensor_bit_for_bit(tmp_path, name):
  build_hf(name).save_pretrained(tmp_path / "hf", max_shard_size="40KB")
  hf_to_run(tmp_path / "hf", tmp_path / "run")
  model, params = lmjax.load_run(tmp_path / "run")
  expected_model, expected = from_hf(tmp_path / "hf")
  assert model.config == expected_model.config
  jax.tree.map(np.testing.assert_array_equal, params, expected)
  (info,) = inspect_checkpoints(tmp_path / "run", verify=True)  # what `lmjax checkpoints` sees
  assert info.step == 0 and info.problem is None and info.record.params_only

  run_to_hf(tmp_path / "run", tmp_path / "out", max_shard_size=40_000)
  assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
  assert read_tensors(tmp_path / "out") == read_tensors(tmp_path / "hf")


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_export_reads_each_param_group_once_after_dropping_the_previous_one(tmp_path, name):
  model, params = random_lmjax(LMJAX_CASES[name])
  flat = flatten(params)
  held, reads = HeldArrays(), []

  def read(keys):
    reads.append(sorted(keys))
    return dict(zip(keys, held.hand_out(*(flat[key].copy() for key in keys))))

  specs = {key: jax.ShapeDtypeStruct(value.shape, value.dtype) for key, value in flat.items()}
  export_params(model.config, specs, read, tmp_path / "streamed", max_shard_size=20_000)
  to_hf(model, params, tmp_path / "whole")
  assert read_tensors(tmp_path / "streamed") == read_tensors(tmp_path / "whole")
  assert sorted(key for keys in reads for key in keys) == sorted(flat)  # each param read once
  # Groups are single params, except GPT-2's q/k/v, which one fused HF tensor needs together.
  assert max(len(keys) for keys in reads) == (3 if name == "gpt2" else 1)


def test_export_skips_a_damaged_newest_checkpoint_as_loading_does(tmp_path, caplog):
  run = tmp_path / "run"
  train(load_config("tiny-llama", TINY + ["train.steps=6", "train.checkpoint_every=3",
                                          "train.eval_every=0"]), run)
  for data in (run / "checkpoints" / "6" / "state").rglob("*"):
    if data.is_file() and data.parent.name == "d":  # the array data files
      data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
  # What lmjax logs, whether or not a command has configured its logger (the `lmjax` command
  # stops it propagating to the root logger that caplog listens on).
  logger = logging.getLogger("lmjax")
  logger.addHandler(caplog.handler)
  try:
    with caplog.at_level(logging.WARNING, logger="lmjax"):
      run_to_hf(run, tmp_path / "hf")
  finally:
    logger.removeHandler(caplog.handler)
  assert "skipping checkpoint step 6" in caplog.text
  model, params = lmjax.load_run(run, step=3)
  _, exported = from_hf(tmp_path / "hf", scan_layers=model.config.scan_layers)
  jax.tree.map(np.testing.assert_array_equal, exported, params)
