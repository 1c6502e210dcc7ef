"""QLoRA (`model.quantization` with `model.lora`): float adapters trained on a frozen base held
quantized, through the same trainer, mesh and checkpoints; exported merged or as a `peft`
adapter of the dequantized base, compared logit for logit."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

qwix = pytest.importorskip("qwix")

import lmjax  # noqa: E402
from lmjax.cli import main  # noqa: E402
from lmjax.config import load_config  # noqa: E402
from lmjax.errors import UserError  # noqa: E402
from lmjax.infer.adapters import read_adapters, select, with_adapter  # noqa: E402
from lmjax.model import Transformer  # noqa: E402
from lmjax.model.config import LoraConfig  # noqa: E402
from lmjax.model.lora import is_adapter, merge_lora  # noqa: E402
from lmjax.model.quant_config import QuantizationConfig  # noqa: E402
from lmjax.model.quantize import dequantize_params  # noqa: E402
from lmjax.run.checkpointer import Checkpointer  # noqa: E402
from lmjax.run.inspection import _params_mismatch  # noqa: E402
from lmjax.run.record import CheckpointRecord  # noqa: E402
from lmjax.sharding import MESH_AXES, MeshRules, axis_rules, mesh_rules  # noqa: E402
from lmjax.train.setup import setup_step  # noqa: E402
from lmjax.train.state import create_train_state, state_shardings  # noqa: E402
from lmjax.train.loop import train  # noqa: E402
from tests.conftest import TINY  # noqa: E402
from tests.helpers import run_cli  # noqa: E402
from tests.hf_models import hf_causal_logits  # noqa: E402

QLORA = ["model.lora.rank=4", "model.quantization.scheme=int4",
         "model.quantization.group_size=8"]


@pytest.fixture(scope="module")
def trained_in_process():
  """A tiny QLoRA state trained 8 steps on one fixed batch with the trainer's own step, and
  the losses."""
  # a wide random base (initializer_range 0.2) carries the tokens far enough for rank-4
  # adapters to learn the batch in a few steps (at 0.02 the loss barely moves off log(vocab))
  config = load_config("tiny-gpt", TINY + QLORA + [
      "model.initializer_range=0.2", "train.learning_rate=0.02", "train.warmup_steps=0"])
  setup = setup_step(config, mesh_rules(config.mesh))
  state = create_train_state(setup.model, setup.tx, setup.placement, seed=0,
                             seq_len=config.train.seq_len)
  # rows repeating 8 random tokens: a next token the adapters can learn to predict
  ids = np.tile(np.random.default_rng(0).integers(0, 256, (8, 8)), 4).astype(np.int32)
  batch = setup.placement.shard_batch({
      "input_ids": ids, "segment_ids": np.ones_like(ids),
      "positions": np.broadcast_to(np.arange(32, dtype=np.int32), ids.shape).copy()}, 8)
  base = jax.device_get(state.params["layers"]["mlp"]["wo"]["kernel"])
  losses = []
  for _ in range(10):
    state, metrics = setup.step(state, batch)
    losses.append(float(metrics["loss"]))
  return config, setup, state, losses, base


def test_qlora_trains_the_adapters_on_a_frozen_int4_base(trained_in_process):
  _, _, state, losses, base = trained_in_process
  assert losses[-1] < losses[0] - 1.0, losses  # 6.3 -> 3.7 as measured
  kernel = state.params["layers"]["mlp"]["wo"]["kernel"]
  assert isinstance(kernel, qwix.QArray) and kernel.qvalue.dtype == jnp.int4
  np.testing.assert_array_equal(np.asarray(kernel.qvalue, np.int8), np.asarray(base.qvalue, np.int8))
  np.testing.assert_array_equal(kernel.scale, base.scale)
  assert np.abs(np.asarray(state.params["layers"]["mlp"]["wo"]["lora_b"])).max() > 0
  # the optimizer holds moments for the adapters only
  moments = [jax.tree_util.keystr(p) for p, x in
             jax.tree_util.tree_flatten_with_path(state.opt_state)[0] if np.ndim(x)]
  assert moments and all("lora_" in key for key in moments)


def test_a_qlora_checkpoint_stores_the_base_as_int4_and_restores_bit_equal(trained_in_process,
                                                                            tmp_path):
  config, setup, state, _, _ = trained_in_process
  checkpointer = Checkpointer(tmp_path, keep=1)
  try:
    checkpointer.save(8, state, CheckpointRecord(step=8, lmjax_version="test", config=config.to_dict()))
    checkpointer.wait()
    specs = checkpointer.array_specs(8)
    restored, _ = checkpointer.restore(8, setup.abstract_state)
  finally:
    checkpointer.close()
  stored = {path[-3:]: spec.dtype for path, spec in specs.items() if path[0] == "params"}
  assert stored[("wo", "kernel", "qvalue")] == jnp.int4
  assert stored[("wo", "kernel", "scale")] == jnp.float32
  assert stored[("mlp", "wo", "lora_a")] == jnp.float32
  assert _params_mismatch(specs, config.model, trained_only=False) is None  # checkpoints --verify
  for (path, want), got in zip(jax.tree_util.tree_flatten_with_path(state)[0],
                               jax.tree.leaves(restored)):
    assert got.dtype == want.dtype, path
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                  err_msg=jax.tree_util.keystr(path))


def test_qlora_state_shards_its_integer_kernels_like_float_ones(trained_in_process):
  config, _, _, _, _ = trained_in_process
  sizes = {"data": 2, "fsdp": 2, "tensor": 2}
  mesh = AbstractMesh(tuple(sizes.get(a, 1) for a in MESH_AXES), MESH_AXES,
                      axis_types=(AxisType.Auto,) * len(MESH_AXES))
  placement = MeshRules(mesh, axis_rules(config.mesh))
  setup = setup_step(config, mesh_rules(config.mesh))
  abstract, shardings = state_shardings(setup.model, setup.tx, placement, seq_len=32)
  wi = shardings.params["layers"]["mlp"]["wi"]
  assert wi["kernel"].qvalue.spec == PartitionSpec("stage", "fsdp", "tensor")  # layers embed mlp
  assert wi["kernel"].scale.spec == PartitionSpec("stage", None, "tensor")  # groups whole
  assert wi["lora_a"].spec == PartitionSpec("stage", "fsdp", None)
  assert abstract.params["layers"]["mlp"]["wi"]["kernel"].qvalue.dtype == jnp.int4


def _qlora_settings(base, *more):
  return [*TINY, f"model.init_from={base}", "model.lora.rank=4", "model.quantization.scheme=int8",
          "train.learning_rate=0.05", "train.warmup_steps=0", "train.checkpoint_every=2",
          "train.log_every=1", "train.eval_every=100", *more]


@pytest.fixture(scope="module")
def qlora_run(trained_gpt, tmp_path_factory):
  """A QLoRA run (int8 base) fine-tuned from the shared tiny-gpt run for 4 steps, and one
  stopped after step 2 and resumed (its base re-read and re-quantized); the first one's merged
  and PEFT exports, and its dequantized base as a Hugging Face directory (what the PEFT adapter
  goes on)."""
  tmp = tmp_path_factory.mktemp("qlora")
  settings = _qlora_settings(trained_gpt, "train.steps=4")
  assert main(["train", "tiny-gpt", "--run-dir", str(tmp / "whole"), "--set", *settings]) == 0
  train(load_config("tiny-gpt", settings), tmp / "part", stop_after=2)
  assert main(["train", "tiny-gpt", "--run-dir", str(tmp / "part"), "--set", *settings]) == 0
  assert main(["convert", "lmjax-to-hf", str(tmp / "whole"), str(tmp / "merged_hf")]) == 0
  assert main(["convert", "lmjax-to-peft", str(tmp / "whole"), str(tmp / "adapter")]) == 0
  loaded = lmjax.load(tmp / "whole")
  float_model = Transformer(dataclasses.replace(loaded.config, lora=LoraConfig(),
                                                quantization=QuantizationConfig()))
  dequantized = jax.device_get(dequantize_params(loaded.params))
  base = traverse_util.unflatten_dict({k: v for k, v in traverse_util.flatten_dict(
      dequantized).items() if not is_adapter(k)})
  lmjax.to_hf(float_model, base, tmp / "base_hf", source_config=json.loads(
      (tmp / "merged_hf" / "config.json").read_text()))
  return tmp, loaded, float_model, dequantized


def test_a_qlora_run_resumes_exactly_and_holds_only_its_adapters(qlora_run):
  tmp, _, _, _ = qlora_run
  losses = lambda run: [json.loads(line)["loss"] for line in
                        (run / "metrics.jsonl").read_text().splitlines() if "loss" in line]
  assert losses(tmp / "part") == losses(tmp / "whole") and len(losses(tmp / "whole")) == 4
  _, a = lmjax.load_run(tmp / "whole")
  _, b = lmjax.load_run(tmp / "part")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))
  assert a["layers"]["mlp"]["wo"]["kernel"].qvalue.dtype == jnp.int8
  checkpointer = Checkpointer(tmp / "whole" / "checkpoints", keep=3)
  try:  # fine-tuned from a base: the checkpoints refer to it and hold the adapters only
    saved = [path for path in checkpointer.array_specs(4) if path[0] == "params"]
  finally:
    checkpointer.close()
  assert saved and all(path[-1] in ("lora_a", "lora_b") for path in saved)


def test_the_merged_export_is_the_dequantized_base_plus_the_adapters(qlora_run):
  tmp, loaded, float_model, dequantized = qlora_run
  spec = loaded.config.lora
  merged = merge_lora(dequantized, spec.rank, spec.alpha, spec.rslora)
  ids = np.random.default_rng(0).integers(0, 256, size=(2, 16)).astype(np.int32)
  reference = np.asarray(float_model.apply({"params": merged}, ids))
  qlora = np.asarray(loaded.model.apply({"params": loaded.params}, ids))
  np.testing.assert_allclose(qlora, reference, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(hf_causal_logits(tmp / "merged_hf", ids), reference, atol=1e-4,
                             rtol=1e-4)
  # the adapters moved the model: not the base's logits
  base = np.asarray(float_model.apply({"params": merge_lora(
      dequantized, spec.rank, 0.0, spec.rslora)}, ids))
  assert np.abs(reference - base).max() > 1e-3


def test_a_peft_adapter_from_a_qlora_run_gives_its_logits_on_the_dequantized_base(qlora_run):
  tmp, loaded, _, _ = qlora_run
  ids = np.random.default_rng(1).integers(0, 256, size=(2, 16)).astype(np.int32)
  qlora = np.asarray(loaded.model.apply({"params": loaded.params}, ids))
  _, with_adapter = hf_causal_logits(tmp / "base_hf", ids, adapter=tmp / "adapter")
  np.testing.assert_allclose(with_adapter, qlora, atol=1e-4, rtol=1e-4)


def test_a_qlora_run_generates_and_refuses_another_quantization(qlora_run, capsys):
  tmp, _, _, _ = qlora_run
  code, out, err = run_cli(capsys, "generate", "--run-dir", tmp / "whole", "--prompt", "The",
                           "--max-new-tokens", "4", "--temperature", "0")
  assert code == 0 and out.startswith("The"), err
  code, _, err = run_cli(capsys, "generate", "--run-dir", tmp / "whole", "--prompt", "The",
                         "--quantize", "int4")
  assert code == 2 and "held quantized already (int8" in err and "Traceback" not in err


def test_its_peft_adapter_serves_over_the_int8_base_with_the_runs_logits(qlora_run, trained_gpt):
  tmp, loaded, _, _ = qlora_run
  base = lmjax.load(trained_gpt, quantization={"scheme": "int8"})  # as the run quantized it
  adapters = read_adapters(base, {"tuned": tmp / "adapter"})
  params = with_adapter(base.params, select(adapters.stacked, adapters.index("tuned")))
  ids = np.random.default_rng(2).integers(0, 256, size=(2, 16)).astype(np.int32)
  np.testing.assert_allclose(adapters.model.apply({"params": params}, ids),
                             loaded.model.apply({"params": loaded.params}, ids),
                             atol=1e-5, rtol=1e-5)
  with pytest.raises(UserError, match="QLoRA run: its adapters cannot be folded"):
    read_adapters(loaded, {"tuned": tmp / "adapter"})


def test_held_out_eval_and_the_harness_take_quantize(trained_gpt, capsys):
  args = ["eval", "tiny-gpt", "--run-dir", trained_gpt, "--set", *TINY, "train.steps=10"]
  code, out, err = run_cli(capsys, *args)
  assert code == 0, err
  code, out8, err = run_cli(capsys, *args, "--quantize", "int8")
  assert code == 0, err
  full, int8 = json.loads(out)["eval_loss"], json.loads(out8)["eval_loss"]
  # int8's logits are within ~3% of the largest (test_quantization.py); averaged over the
  # held-out tokens the loss moves far less (2e-5 relative as measured): 1% says "the same
  # model", and a difference at all says the weights were quantized
  assert int8 != full and abs(int8 - full) <= 0.01 * full
  from lmjax.infer.harness import LmjaxLM
  lm = LmjaxLM(run_dir=str(trained_gpt), quantize="int4")
  assert isinstance(lm.loaded.params["layers"]["mlp"]["wo"]["kernel"], qwix.QArray)
