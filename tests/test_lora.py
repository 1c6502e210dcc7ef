"""LoRA: the adapted model, training only the adapters, and export merged or as a real `peft`
adapter (PyTorch), compared logit for logit."""

import dataclasses
import functools
import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import lmjax
from lmjax.cli import main
from lmjax.config import load_config
from lmjax.errors import UserError
from lmjax.model import ModelConfig, Transformer
from lmjax.model.config import LoraConfig
from lmjax.model.lora import merge_lora
from lmjax.model.trainable import trained_part
from lmjax.run import RunDir
from lmjax.run.checkpointer import Checkpointer
from lmjax.run.inspection import format_table, inspect_checkpoints
from lmjax.sharding import mesh_rules
from lmjax.train.loop import train
from lmjax.train.setup import setup_step
from tests.conftest import TINY

FAMILIES = {"llama": ("tiny-llama", ["model.num_kv_heads=2"]), "gpt2": ("tiny-gpt", [])}


def tiny_model(family="llama", *overrides):
  name, extra = FAMILIES[family]
  return load_config(name, TINY + extra + list(overrides)).model


def test_adapters_have_the_kernels_axes_and_start_as_the_identity():
  config = tiny_model("llama", "model.lora.rank=4")
  ids = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)
  boxed = jax.jit(Transformer(config).init)(jax.random.key(0), ids)["params"]
  query = boxed["layers"]["attention"]["query"]
  assert query["lora_a"].names == ("layers", "embed", "lora_rank")
  assert query["lora_b"].names == ("layers", "lora_rank", "heads", "kv")
  assert boxed["layers"]["attention"]["out"]["lora_a"].names == ("layers", "heads", "kv",
                                                                 "lora_rank")
  assert "lora_a" not in boxed.get("lm_head", {})  # heads are not adapted
  params = nn.unbox(boxed)
  base = dataclasses.replace(config, lora=LoraConfig())
  plain = merge_lora(jax.device_get(params), 4, 16.0, False)  # B = 0: merging changes nothing
  np.testing.assert_array_equal(Transformer(config).apply({"params": params}, ids),
                                Transformer(base).apply({"params": plain}, ids))


@pytest.mark.parametrize("rslora", [False, True])
def test_a_merged_adapter_computes_what_the_adapted_model_computes(rslora):
  config = tiny_model("gpt2", "model.lora.rank=4", "model.lora.alpha=8",
                      f"model.lora.rslora={str(rslora).lower()}")
  ids = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)
  params = nn.unbox(jax.jit(Transformer(config).init)(jax.random.key(0), ids)["params"])
  noise = np.random.default_rng(1)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.05 * noise.standard_normal(x.shape, np.float32)
      if "lora_b" in jax.tree_util.keystr(path) else x, params)
  base = Transformer(dataclasses.replace(config, lora=LoraConfig()))
  adapted = Transformer(config).apply({"params": params}, ids)
  without = base.apply({"params": merge_lora(jax.device_get(params), 4, 0.0, rslora)}, ids)
  assert float(jnp.max(jnp.abs(adapted - without))) > 1e-3  # the adapter does something …
  merged = base.apply({"params": merge_lora(jax.device_get(params), 4, 8.0, rslora)}, ids)
  np.testing.assert_allclose(merged, adapted, atol=1e-5, rtol=1e-5)  # … and merging keeps it


@pytest.mark.parametrize("override, message", [
    ("model.lora.targets=[qproj]", "'qproj' matches no projection of this model; they are "
                                   "attention/query, attention/key"),
    ("model.lora.targets=['mlp/(']", "is not a valid pattern"),
    ("model.lora.rank=20", "model.lora.rank=20 is larger than attention/key (32 -> 16) can use"),
    ("model.lora.rank=-1", "model.lora.rank=-1 is out of range"),
    ("model.lora.dropout=1", "model.lora.dropout=1 is out of range"),
    ("model.lora.targets=[]", "model.lora.targets is empty"),
])
def test_lora_mistakes_are_explained(override, message):
  with pytest.raises(UserError) as info:
    tiny_model("llama", "model.lora.rank=4", override)
  assert message in str(info.value)


def test_hugging_face_target_names_select_the_same_projections():
  ids = jnp.zeros((1, 8), jnp.int32)
  for targets, adapted in [("[q_proj, v_proj]", {"query", "value"}),
                           ("[c_attn]", {"query", "key", "value"}),
                           ("['attention/(query|out)']", {"query", "out"})]:
    params = jax.eval_shape(Transformer(tiny_model(
        "llama", "model.lora.rank=2", f"model.lora.targets={targets}")).init,
        jax.random.key(0), ids)["params"]["layers"]
    found = {name for part in params.values() for name, p in part.items()
             if isinstance(p, dict) and "lora_a" in p}
    assert found == adapted, targets


def test_distilbert_target_names_select_its_projections():
  ids = jnp.zeros((1, 8), jnp.int32)
  params = jax.eval_shape(Transformer(load_config("tiny-bert", [
      "model.preset=tiny-distilbert", "model.lora.rank=2",
      "model.lora.targets=[q_lin, out_lin, lin2]"]).model).init, jax.random.key(0), ids)["params"]
  found = {name for part in params["layers"].values() for name, p in part.items()
           if isinstance(p, dict) and "lora_a" in p}
  assert found == {"query", "out", "wo"}


@pytest.fixture(scope="module", params=list(FAMILIES))
def lora_run(request, tmp_path_factory):
  """A base run, a LoRA run fine-tuned from it, and their exports (merged HF, PEFT)."""
  family = request.param
  name, extra = FAMILIES[family]
  tmp = tmp_path_factory.mktemp(f"lora-{family}")
  common = ["--set", *TINY, *extra]
  assert main(["train", name, "--run-dir", str(tmp / "base"), *common, "train.steps=10"]) == 0
  assert main(["train", name, "--run-dir", str(tmp / "lora"), *common, "train.steps=20",
               f"model.init_from={tmp / 'base'}", "model.lora.rank=4",
               "train.learning_rate=0.05", "train.warmup_steps=0"]) == 0
  assert main(["convert", "lmjax-to-hf", str(tmp / "base"), str(tmp / "base_hf")]) == 0
  assert main(["convert", "lmjax-to-hf", str(tmp / "lora"), str(tmp / "merged_hf")]) == 0
  assert main(["convert", "lmjax-to-peft", str(tmp / "lora"), str(tmp / "adapter")]) == 0
  return family, tmp


@functools.cache
def _load_fixture_run(run_dir):
  """lmjax.load_run of one of `lora_run`'s runs, loaded once: the tests only read them."""
  return lmjax.load_run(run_dir)


def test_lora_training_lowers_the_loss_and_leaves_the_base_bit_identical(lora_run):
  _, tmp = lora_run
  rows = [json.loads(line) for line in (tmp / "lora" / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["loss"] < rows[0]["loss"] - 0.05
  _, base = _load_fixture_run(tmp / "base")
  _, tuned = _load_fixture_run(tmp / "lora")
  flat_base = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(base)[0]}
  moved = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tuned)[0]:
    key = jax.tree_util.keystr(path)
    if "lora_" in key:
      moved.append(key)
    else:
      np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat_base[key]), err_msg=key)
  assert any("lora_b" in key for key in moved)
  assert any(np.abs(np.asarray(leaf)).max() > 0 for path, leaf in
             jax.tree_util.tree_flatten_with_path(tuned)[0]
             if "lora_b" in jax.tree_util.keystr(path))  # B moved off zero


def test_the_optimizer_holds_state_only_for_the_adapters(lora_run):
  _, tmp = lora_run
  checkpointer = Checkpointer(tmp / "lora" / "checkpoints", keep=3)
  try:
    specs = checkpointer.array_specs(checkpointer.latest_step())
  finally:
    checkpointer.close()
  moments = [path for path in specs if path[0] == "opt_state" and len(specs[path].shape)]
  assert moments and all(any(k in ("lora_a", "lora_b") for k in path) for path in moments)


def test_merged_and_peft_exports_give_the_lmjax_logits(lora_run):
  family, tmp = lora_run
  model, params = _load_fixture_run(tmp / "lora")
  ids = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(2, 16))
  ours = np.asarray(model.apply({"params": params}, ids.astype(np.int32)))
  adapter_config = json.loads((tmp / "adapter" / "adapter_config.json").read_text())
  assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == 4
  from tests.hf_models import hf_causal_logits
  np.testing.assert_allclose(hf_causal_logits(tmp / "merged_hf", ids), ours, atol=1e-4,
                             rtol=1e-4)
  plain, with_adapter = hf_causal_logits(tmp / "base_hf", ids, adapter=tmp / "adapter")
  np.testing.assert_allclose(with_adapter, ours, atol=1e-4, rtol=1e-4)
  # Not the base model's logits: the adapter was loaded, not silently left at zero.
  assert np.abs(with_adapter - plain).max() > 1e-3


def test_peft_export_refuses_a_run_without_lora(lora_run, tmp_path, capsys):
  _, tmp = lora_run
  assert main(["convert", "lmjax-to-peft", str(tmp / "base"), str(tmp_path / "out")]) == 2
  assert "has no LoRA adapters" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_an_exported_adapter_imports_back_onto_the_base(lora_run, tmp_path):
  _, tmp = lora_run
  assert main(["convert", "hf-to-lmjax", str(tmp / "base_hf"), str(tmp_path / "run"),
               "--adapter", str(tmp / "adapter")]) == 0
  model, params = lmjax.load_run(tmp_path / "run")
  tuned_model, tuned = _load_fixture_run(tmp / "lora")
  assert model.config.lora.rank == tuned_model.config.lora.rank
  ids = np.arange(32, dtype=np.int32).reshape(2, 16)
  np.testing.assert_allclose(model.apply({"params": params}, ids),
                             tuned_model.apply({"params": tuned}, ids), atol=1e-5, rtol=1e-5)


def test_an_adapter_made_by_peft_imports_with_the_same_logits(lora_run, tmp_path):
  import peft
  import torch
  import transformers
  family, tmp = lora_run
  base = transformers.AutoModelForCausalLM.from_pretrained(tmp / "base_hf", dtype=torch.float32)
  targets = ["q_proj", "v_proj", "down_proj"] if family == "llama" else ["c_attn", "c_fc"]
  torch.manual_seed(0)
  made = peft.get_peft_model(base, peft.LoraConfig(
      r=2, lora_alpha=5, target_modules=targets, init_lora_weights=False))  # B not zero
  made.save_pretrained(tmp_path / "adapter")
  ids = np.arange(32).reshape(2, 16) % 200
  with torch.no_grad():
    expected = made.eval()(torch.tensor(ids)).logits.numpy()
  assert main(["convert", "hf-to-lmjax", str(tmp / "base_hf"), str(tmp_path / "run"),
               "--adapter", str(tmp_path / "adapter")]) == 0
  model, params = lmjax.load_run(tmp_path / "run")
  assert model.config.lora.rank == 2 and model.config.lora.alpha == 5
  np.testing.assert_allclose(model.apply({"params": params}, ids.astype(np.int32)), expected,
                             atol=1e-4, rtol=1e-4)


def test_an_adapter_lmjax_cannot_represent_is_refused(lora_run, tmp_path, capsys):
  _, tmp = lora_run
  adapter = tmp_path / "adapter"
  shutil.copytree(tmp / "adapter", adapter)
  settings = json.loads((adapter / "adapter_config.json").read_text())
  (adapter / "adapter_config.json").write_text(json.dumps({**settings, "use_dora": True}))
  assert main(["convert", "hf-to-lmjax", str(tmp / "base_hf"), str(tmp_path / "run"),
               "--adapter", str(adapter)]) == 2
  assert "use_dora is set" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_lora_run_generates(lora_run, capsys):
  _, tmp = lora_run
  assert main(["generate", "--run-dir", str(tmp / "lora"), "--prompt", "def",
               "--max-new-tokens", "8", "--temperature", "0"]) == 0
  assert capsys.readouterr().out.startswith("def")


def test_lora_dropout_is_on_in_training_and_off_in_evaluation():
  config = tiny_model("llama", "model.lora.rank=4", "model.lora.dropout=0.5")
  ids = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)
  model = Transformer(config)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), ids)["params"])
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 if "lora_b" in jax.tree_util.keystr(path) else x, params)
  apply = jax.jit(model.apply, static_argnames="train")
  evaluate = lambda: apply({"params": params}, ids)
  trained = lambda seed: apply({"params": params}, ids, train=True,
                               rngs={"dropout": jax.random.key(seed)})
  np.testing.assert_array_equal(evaluate(), evaluate())
  assert float(jnp.max(jnp.abs(trained(0) - trained(1)))) > 1e-4
  assert float(jnp.max(jnp.abs(trained(0) - evaluate()))) > 1e-4


def test_a_lora_classifier_trains_its_new_head_too():
  from lmjax.model.trainable import split
  config = load_config("tiny-bert", TINY + ["model.head=classification", "model.num_labels=2",
                                            "model.lora.rank=2"]).model
  params = jax.eval_shape(Transformer(config).init, jax.random.key(0),
                          jnp.zeros((1, 8), jnp.int32))["params"]
  trained, frozen = split(params, config)
  assert "classifier" in trained and "classifier" not in frozen
  assert "token_embedding" in frozen and "layers" in trained and "layers" in frozen


def test_a_bfloat16_base_is_held_in_half_and_loads_back_the_source_rounded(lora_run, tmp_path):
  family, tmp = lora_run
  name, extra = FAMILIES[family]
  run = tmp_path / "bf16"
  assert main(["train", name, "--run-dir", str(run), "--set", *TINY, *extra, "train.steps=5",
               f"model.init_from={tmp / 'base'}", "model.lora.rank=4",
               "model.lora.base_dtype=bfloat16", "train.learning_rate=0.05"]) == 0
  config = RunDir(run).require_config()
  held = setup_step(config, mesh_rules(config.mesh)).abstract_state.params
  dtypes = {jax.tree_util.keystr(p): str(x.dtype)
            for p, x in jax.tree_util.tree_flatten_with_path(held)[0]}
  assert {d for p, d in dtypes.items() if "lora_" in p} == {"float32"}
  assert {d for p, d in dtypes.items() if "lora_" not in p} == {"bfloat16"}
  saved = _checkpoint_params(run, 5)
  assert saved and all(path[-1] in ("lora_a", "lora_b") for path in saved)
  assert {str(spec.dtype) for spec in saved.values()} == {"float32"}
  _, source = _load_fixture_run(tmp / "base")
  _, tuned = lmjax.load_run(run)
  expected = np.asarray(source["layers"]["mlp"]["wo"]["kernel"]).astype(jnp.bfloat16)
  np.testing.assert_array_equal(np.asarray(tuned["layers"]["mlp"]["wo"]["kernel"]),
                                expected.astype(np.float32))
  rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert all(np.isfinite(r["loss"]) for r in rows)


def _checkpoint_params(run, step):
  checkpointer = Checkpointer(run / "checkpoints", keep=3)
  try:
    return {path[1:]: spec for path, spec in checkpointer.array_specs(step).items()
            if path[0] == "params"}
  finally:
    checkpointer.close()


def _array_bytes(run, step):
  checkpointer = Checkpointer(run / "checkpoints", keep=3)
  try:
    return sum(int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize
               for spec in checkpointer.array_specs(step).values())
  finally:
    checkpointer.close()


def _record(run, step):
  checkpointer = Checkpointer(run / "checkpoints", keep=3)
  try:
    return checkpointer.restore_record(step)
  finally:
    checkpointer.close()


@pytest.mark.parametrize("lora_run", ["llama"], indirect=True)
def test_lora_checkpoints_hold_the_adapters_and_refer_to_the_base(lora_run):
  _, tmp = lora_run
  saved = _checkpoint_params(tmp / "lora", 20)
  assert saved and all(path[-1] in ("lora_a", "lora_b") for path in saved)
  record = _record(tmp / "lora", 20)
  assert record.base.source == str((tmp / "base").absolute()) and record.base.step == 10
  assert len(record.base.sha256) == 64
  # What a checkpoint stores (params and optimizer state, by the checkpoint's own array specs):
  # the adapters and their moments, a ninth of the base run's. (Its bytes on disk are no
  # measure at this size: Orbax's metadata and OCDBT's file count, which varies, dominate.)
  assert _array_bytes(tmp / "lora", 10) < _array_bytes(tmp / "base", 10) / 4
  listing = inspect_checkpoints(tmp / "lora", verify=True)
  assert [i.problem for i in listing] == [None, None]
  assert "the base model is " + str(record.base) in format_table(listing, verified=True)


def _lora_settings(base, *more):
  return [*TINY, "model.num_kv_heads=2", f"model.init_from={base}", "model.lora.rank=4",
          "train.learning_rate=0.05", "train.warmup_steps=0", "train.checkpoint_every=3",
          "train.log_every=1", *more]


def _lora_from(base, run, *more):
  return main(["train", "tiny-llama", "--run-dir", str(run), "--set",
               *_lora_settings(base, *more)])


@pytest.mark.parametrize("lora_run", ["llama"], indirect=True)
def test_a_lora_run_on_a_hugging_face_base_resumes_exactly_and_refuses_a_changed_base(
    lora_run, tmp_path, capsys, monkeypatch):
  from safetensors.numpy import load_file, save_file
  _, tmp = lora_run
  base = tmp_path / "base_hf"
  shutil.copytree(tmp / "base_hf", base)
  whole, part = tmp_path / "whole", tmp_path / "part"
  monkeypatch.chdir(tmp_path)  # the report shows a base under the working directory relative
  capsys.readouterr()
  assert _lora_from(base, whole, "train.steps=6") == 0
  assert "checkpoints hold the trained params only, the base is base_hf (sha256" in (
      capsys.readouterr().err)
  train(load_config("tiny-llama", _lora_settings(base, "train.steps=6")), part, stop_after=3)
  assert _lora_from(base, part, "train.steps=6") == 0  # resumes from step 3, base reloaded
  losses = lambda run: [json.loads(line)["loss"] for line in
                        (run / "metrics.jsonl").read_text().splitlines()]
  assert losses(part) == losses(whole)
  _, a = lmjax.load_run(whole)
  _, b = lmjax.load_run(part)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  moved = tmp_path / "moved_hf"
  base.rename(moved)  # the base moves: the run finds it by --set model.init_from
  capsys.readouterr()
  assert main(["generate", "--run-dir", str(part), "--prompt", "a", "--max-new-tokens", "2"]) == 2
  assert "is not there any more" in capsys.readouterr().err
  assert _lora_from(moved, part, "train.steps=7") == 0
  assert _record(part, 7).base.source == str(moved.absolute())

  weights = moved / "model.safetensors"
  tensors = load_file(weights)
  name = next(k for k in tensors if "embed" in k)
  tensors[name] = tensors[name] + 1e-3
  save_file(tensors, weights, metadata={"format": "pt"})
  before = sorted((p.name, p.stat().st_mtime_ns) for p in (part / "checkpoints").iterdir())
  capsys.readouterr()
  assert _lora_from(moved, part, "train.steps=9") == 2
  err = capsys.readouterr().err
  assert "the base model has changed" in err and err.count("sha256") == 2, err
  assert "Traceback" not in err
  assert sorted((p.name, p.stat().st_mtime_ns) for p in (part / "checkpoints").iterdir()) == before
  assert main(["convert", "lmjax-to-hf", str(part), str(tmp_path / "out")]) == 2
  assert "the base model has changed" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()
  assert main(["checkpoints", str(part), "--verify"]) != 0
  assert "the base model has changed" in capsys.readouterr().out


def test_an_adapter_for_another_base_is_refused_naming_the_shapes(lora_run, tmp_path, capsys):
  from safetensors.numpy import load_file, save_file
  _, tmp = lora_run
  adapter = tmp_path / "adapter"
  shutil.copytree(tmp / "adapter", adapter)
  tensors = load_file(adapter / "adapter_model.safetensors")
  name = next(k for k in tensors if k.endswith("lora_A.weight"))
  tensors[name] = tensors[name][:, :-1].copy()  # one input dim fewer: another base's width
  save_file(tensors, adapter / "adapter_model.safetensors")
  assert main(["convert", "hf-to-lmjax", str(tmp / "base_hf"), str(tmp_path / "run"),
               "--adapter", str(adapter)]) == 2
  assert "trained on another base model" in capsys.readouterr().err
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("family, extra", [("mistral", {}),
                                           ("llama", {"qkv_bias": True, "use_bias": False}),
                                           ("qwen3", {"head_dim": 6})],
                         ids=["mistral", "qwen2", "qwen3"])
def test_mistral_and_qwen_adapters_export_merged_and_as_peft(tmp_path, family, extra):
  from lmjax.hf.adapters import export_peft, without_lora
  config = ModelConfig.for_family(family, vocab_size=61, num_layers=2, embed_dim=24, num_heads=6,
                                  num_kv_heads=2, mlp_dim=40, max_seq_len=32,
                                  lora=LoraConfig(rank=3, alpha=6.0), **extra)
  model = Transformer(config)
  ids = np.random.default_rng(0).integers(0, 61, size=(2, 12))
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map_with_path(  # adapters (B too) and biases all non-zero
      lambda path, s: (rng.normal(0, 0.2, s.shape) + (path[-1].key == "scale")).astype(np.float32),
      nn.unbox(shapes))
  ours = np.asarray(model.apply({"params": params}, ids.astype(np.int32)))
  flat = {".".join(k): np.asarray(v) for k, v in
          traverse_util.flatten_dict(params).items()}
  base = {k: v for k, v in flat.items() if k.rsplit(".", 1)[-1] not in ("lora_a", "lora_b")}
  trained = traverse_util.flatten_dict(trained_part(params, config))
  assert {k[-1] for k in trained} == {"lora_a", "lora_b"}  # norms (QK-norms too) stay frozen
  lmjax.to_hf(Transformer(without_lora(config)), traverse_util.unflatten_dict(
      {tuple(k.split(".")): v for k, v in base.items()}), tmp_path / "base")
  lmjax.to_hf(model, params, tmp_path / "merged")
  specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()}
  export_peft(config, specs, lambda keys: {k: flat[k] for k in keys}, tmp_path / "adapter")
  from tests.hf_models import hf_causal_logits
  np.testing.assert_allclose(hf_causal_logits(tmp_path / "merged", ids), ours, atol=1e-4,
                             rtol=1e-4)
  plain, with_adapter = hf_causal_logits(tmp_path / "base", ids, adapter=tmp_path / "adapter")
  np.testing.assert_allclose(with_adapter, ours, atol=1e-4, rtol=1e-4)
  assert np.abs(with_adapter - plain).max() > 1e-3
