"""Sharded training computes what one device computes; FSDP shards; bad meshes are refused.

The 8-device work runs in two children of tests/sharded_worker.py (one per model, side by
side), started once per session (and xdist worker); the tests below read what they recorded. The rest runs
here, on the suite's one device.
"""

import json

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import lmjax
from lmjax.cli import main
from lmjax.config import load_config
from lmjax.errors import UserError
from lmjax.sharding import LOGICAL_AXIS_RULES, MeshConfig, make_mesh, mesh_rules
from lmjax.train.inputs import batch_sources, load_corpus
from lmjax.train.loop import train
from lmjax.train.setup import setup_step
from tests.helpers import assert_refused
from tests.processes import children, cpu_env
from tests.sharded_worker import BAD_INPUTS, KIND_SCANS, MOE_MESHES, meshes_of


CASES = [f"{kind}-scan{int(scan)}" for kind in ("causal", "mlm")
         for scan in KIND_SCANS.get(kind, (True, False))]
# (case, mesh): the meshes each case trains on (sharded_worker.meshes_of), ModernBERT (MLM) too
PAIRS = [(f"{kind}-scan{int(scan)}", mesh) for kind in ("causal", "mlm", "lora", "modernbert")
         for scan in KIND_SCANS.get(kind, (True, False)) for mesh in meshes_of(kind, scan)]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
  """(results of both children, the directory holding their params) — about a minute."""
  # In this worker's base directory, kept for the session: pytest-xdist may run this module's
  # tests in more than one stretch on the same worker, setting the fixture up again each time.
  out = tmp_path_factory.getbasetemp() / "sharded"
  parts = {"causal": ["causal", "moe"],
           "mlm": ["mlm", "compile", "bad_inputs", "lora", "modernbert"]}
  if not all((out / f"{'-'.join(args)}.json").is_file() for args in parts.values()):
    out.mkdir(exist_ok=True)
    with children(out) as group:
      for name, args in parts.items():
        # XLA's warnings shown (cpu_env hides them): the partitioner's are checked below.
        group.start(name, ["-m", "tests.sharded_worker", str(out), *args],
                    cpu_env(8, TF_CPP_MIN_LOG_LEVEL="1"))
      group.check(timeout=600)
  results = {"losses": {}, "fsdp_shards": {}, "compile": {}, "bad_inputs": {}}
  for args in parts.values():
    for key, value in json.loads((out / f"{'-'.join(args)}.json").read_text()).items():
      results[key].update(value)
  return results, out


@pytest.mark.parametrize("case, mesh", PAIRS)
def test_sharded_training_matches_one_device(recorded, case, mesh):
  results, out = recorded
  one, sharded = f"{case}-one_device", f"{case}-{mesh}"
  np.testing.assert_allclose(results["losses"][sharded], results["losses"][one],
                             rtol=1e-5, atol=1e-6)
  expected, actual = np.load(out / f"{one}.npz"), np.load(out / f"{sharded}.npz")
  assert sorted(expected.files) == sorted(actual.files)
  for name in expected.files:
    np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
  # The params moved: the comparison is not between two untouched initialisations.
  assert results["losses"][one][-1] < results["losses"][one][0]


def test_no_mesh_makes_xla_replicate_a_sharded_activation_in_full(recorded):
  """The children train on meshes with fsdp and tensor both > 1 (tensor2_fsdp4,
  data2_fsdp2_tensor2): no step may leave XLA's partitioner a resharding it can only do by
  replicating the whole array (the embedding lookup did: lmjax.model.layers.embedding_lookup)."""
  _, out = recorded
  logs = sorted(out.glob("*.log"))
  assert logs
  for log in logs:
    text = log.read_text(errors="replace")
    assert "Involuntary full rematerialization" not in text, f"{log.name}:\n{text[-3000:]}"


@pytest.mark.parametrize("mesh", list(MOE_MESHES))
@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_mixture_of_experts_over_expert_and_fsdp_axes_matches_one_device(recorded, dispatch, mesh):
  results, out = recorded
  one, sharded = f"moe_{dispatch}-one_device", f"moe_{dispatch}-{mesh}"
  np.testing.assert_allclose(results["losses"][sharded], results["losses"][one],
                             rtol=1e-5, atol=1e-6)
  expected, actual = np.load(out / f"{one}.npz"), np.load(out / f"{sharded}.npz")
  for name in expected.files:
    np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-5, err_msg=name)
  assert results["losses"][one][-1] < results["losses"][one][0]
  # Each device holds its experts only: the expert weights split 4 (or 2) ways over `expert`.
  shards = results["fsdp_shards"][f"moe_{dispatch}-{mesh}"]["params"]
  gate = next(v for k, v in shards.items() if "experts_gate" in k)
  experts = MOE_MESHES[mesh]["expert"]
  assert gate["shape"][1] == 4 and {s[1] for s in gate["shards"]} == {4 // experts}


@pytest.mark.parametrize("case", CASES)
def test_fsdp_puts_an_eighth_of_every_large_param_and_its_adam_moments_on_each_device(recorded,
                                                                                      case):
  shards = recorded[0]["fsdp_shards"][f"{case}-fsdp8"]

  def large(tree):  # kernels and embeddings; biases and norm scales may stay whole
    return {path: leaf for path, leaf in tree.items() if np.prod(leaf["shape"]) >= 1024}

  params, moments = large(shards["params"]), large(shards["opt_state"])
  assert params and len(moments) == 2 * len(params)  # Adam's mu and nu for each
  for path, leaf in {**params, **moments}.items():
    assert len(leaf["shards"]) == 8, path
    for shard in leaf["shards"]:
      assert np.prod(shard) * 8 == np.prod(leaf["shape"]), (path, leaf)


def test_compile_only_memory_per_device_shrinks_under_fsdp(recorded):
  data, fsdp = recorded[0]["compile"]["data8"], recorded[0]["compile"]["fsdp8"]
  # data=8 replicates the state on every device; fsdp=8 keeps an eighth of it on each.
  assert fsdp["memory"]["argument"] * 6 < data["memory"]["argument"]
  assert data["xla_flops_per_device"] > 0 and fsdp["xla_flops_per_device"] > 0


@pytest.mark.parametrize("case, expected", [
    ("mesh_size", ["mesh data=4 needs 4 devices but 8 are available"]),
    ("heads", ["model.num_heads", "size 4", "mesh.tensor=8"]),
    ("kv_heads", ["model.num_kv_heads", "size 2", "mesh.tensor=4"]),
    ("vocab", ["model.vocab_size", "size 289", "mesh.tensor=2"]),
    ("mlp", ["model.mlp_dim", "size 66", "mesh.tensor=4"]),
    ("embed", ["model.embed_dim", "size 36", "mesh.fsdp=8"]),
    ("batch", ["train.batch_size=12", "size 12", "mesh.data x mesh.fsdp x mesh.expert = 8"]),
    ("micro_batch", ["train.grad_accum_steps=4", "size 4",
                     "mesh.data x mesh.fsdp x mesh.expert = 8"]),
    ("experts", ["model.moe.num_experts", "size 4", "mesh.expert=8"]),
])
def test_a_mesh_that_does_not_fit_is_refused_naming_the_size_and_the_axis(recorded, case, expected):
  assert case in BAD_INPUTS
  assert_refused(recorded[0]["bad_inputs"][case], expected)


# -- on the suite's one device --------------------------------------------------------------


def test_a_mesh_larger_than_the_devices_is_refused_before_the_data_is_read(tmp_path, capsys,
                                                                           tiny):
  """The corpus here does not exist: the mesh error comes first, without reading any data."""
  assert main(["train", "tiny-gpt", "--run-dir", str(tmp_path / "run"), "--set", *tiny,
               "mesh.data=3", "data.source=text", f"data.paths=[{tmp_path / 'absent.txt'}]"]) == 2
  err = capsys.readouterr().err
  assert "mesh" in err and "absent.txt" not in err and "Traceback" not in err
  assert not (tmp_path / "run").exists()


def test_compile_only_prints_memory_and_flops_and_writes_nothing(tmp_path, capsys, tiny):
  run_dir = tmp_path / "run"
  assert main(["train", "tiny-llama", "--run-dir", str(run_dir), "--compile-only",
               "--set", *tiny]) == 0
  out = capsys.readouterr().out
  for text in ("mesh data=1 x stage=1 x fsdp=1 x context=1 x tensor=1", "memory per device", "arguments", "outputs",
               "temporaries", "generated code", "total", "FLOPs per step", "XLA cost analysis",
               "model (config)"):
    assert text in out, (text, out)
  assert not run_dir.exists() and not (tmp_path / "runs").exists()


def test_rules_from_the_config_replace_the_default_table(tiny):
  rules = "mesh.rules=[[batch, data], [mlp, fsdp], [embed, null]]"
  config = load_config("tiny-gpt", tiny + [rules])
  setup = setup_step(config, mesh_rules(config.mesh))
  kernels = setup.shardings.params["layers"]["mlp"]
  assert kernels["wi"]["kernel"].spec == P(None, None, "fsdp")  # [layers, embed, mlp]
  assert kernels["wo"]["kernel"].spec == P(None, "fsdp", None)
  default = setup_step(load_config("tiny-gpt", tiny), mesh_rules(load_config("tiny-gpt", tiny).mesh))
  assert default.placement.rules == LOGICAL_AXIS_RULES
  wi = default.shardings.params["layers"]["mlp"]["wi"]["kernel"]
  assert wi.spec == P("stage", "fsdp", "tensor")


@pytest.mark.parametrize("rules, expected", [
    ("[[batch, data], [hidden, fsdp]]", "logical axes are batch, length, embed"),
    ("[[embed, model]]", "'model', which is not a mesh axis"),
    ("[[embed, [fsdp, fsdp]]]", "repeats a mesh axis"),
    ("[embed, fsdp]", "must be a pair"),
])
def test_bad_rules_are_refused_when_the_config_loads(tiny, rules, expected):
  with pytest.raises(UserError, match=expected):
    load_config("tiny-gpt", tiny + [f"mesh.rules={rules}"])


def test_a_process_building_only_its_rows_gets_what_one_process_builds(tiny):
  # Hosts of a pod each ask for the positions their devices hold; MLM masks included, the rows
  # must be those one host would have built for the whole batch.
  config = load_config("tiny-bert", tiny + ["train.batch_size=8"])
  source, _ = batch_sources(config, load_corpus(config))
  whole = source.batch(3)
  for positions in ([0, 1, 2, 3], [4, 5, 6, 7], [2, 6]):
    part = source.batch(3, positions=np.array(positions))
    for key in whole:
      np.testing.assert_array_equal(part[key], whole[key][positions], err_msg=key)
  assert whole["target_weights"].sum() > 0


def test_distributed_keys_are_refused_unless_complete(tiny):
  with pytest.raises(UserError, match="go together"):
    load_config("tiny-gpt", tiny + ["distributed.coordinator_address=127.0.0.1:1234"])
  with pytest.raises(UserError, match=r"process_id=2 must be in \[0, distributed.num_proc"):
    load_config("tiny-gpt", tiny + ["distributed.coordinator_address=127.0.0.1:1234",
                                    "distributed.num_processes=2", "distributed.process_id=2"])
  assert load_config("tiny-gpt", tiny + ["distributed.auto=true"]).distributed.auto


def test_a_run_loads_onto_a_mesh_with_its_own_or_the_callers_rules(tmp_path, tiny):
  # Trained with rules that keep `embed` whole and shard the MLM over fsdp; loading places the
  # params by the run's own rules unless the caller names others (one device: the specs still
  # say where each dimension would go).
  rules = "mesh.rules=[[batch, data], [mlp, fsdp], [embed, null]]"
  train(load_config("tiny-gpt", tiny + [rules, "train.steps=2", "train.eval_every=0"]), tmp_path)
  mesh = make_mesh(MeshConfig())
  _, params = lmjax.load_run(tmp_path, mesh=mesh)
  assert params["layers"]["mlp"]["wi"]["kernel"].sharding.spec == P(None, None, "fsdp")
  _, params = lmjax.load_run(tmp_path, mesh=mesh, rules=LOGICAL_AXIS_RULES)
  assert params["layers"]["mlp"]["wi"]["kernel"].sharding.spec == P("stage", "fsdp", "tensor")
  _, params = lmjax.load_run(tmp_path, rules=[["embed", "tensor"], ["mlp", None]])
  assert params["layers"]["mlp"]["wi"]["kernel"].sharding.spec == P(None, "tensor", None)
  with pytest.raises(UserError, match="not a mesh axis"):
    lmjax.load_run(tmp_path, rules=[["embed", "model"]])


def test_lora_adapters_and_their_adam_moments_are_sharded_and_the_base_has_no_moments(recorded):
  shards = recorded[0]["fsdp_shards"]["lora-scan1-fsdp8"]
  moments = shards["opt_state"]
  assert moments and all("lora_" in path for path in moments)  # no state for the frozen base
  # lora_a of a query [layers, embed, rank] splits its embed dim over fsdp=8, as the kernel.
  (path,) = [p for p in shards["params"] if "query" in p and "lora_a" in p]
  leaf = shards["params"][path]
  assert all(shard[1] * 8 == leaf["shape"][1] for shard in leaf["shards"]), leaf
