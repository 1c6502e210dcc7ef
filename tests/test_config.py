"""Config loading, overrides and the messages for config mistakes."""

import json
import pathlib

import pytest

from lmjax.config import CONFIG_DIR, load_config, read_yaml, resolve_config_path
from lmjax.errors import UserError
from lmjax.model import Head, Transformer
from lmjax.run import RunDir

ALL_CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
ALL_CONFIGS_RUNS = [f"runs/{name}" for name in ALL_CONFIGS]
# The Hugging Face models shipped configs fine-tune (installed by their recipes), in miniature.
HF_SOURCES = {"runs/models/all-MiniLM-L6-v2": {
    "model_type": "bert", "architectures": ["BertModel"], "hidden_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
    "vocab_size": 128, "max_position_embeddings": 64, "type_vocab_size": 2},
    # a GGUF file is read as the Hugging Face directory it holds
    "runs/models/SmolLM2-135M-Instruct.Q4_1.gguf": {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 64, "vocab_size": 128, "max_position_embeddings": 512,
        "tie_word_embeddings": True}}


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_shipped_config_loads_and_builds_a_model(name, tmp_path):
  import jax
  import jax.numpy as jnp
  overrides = []
  source = (read_yaml(resolve_config_path(name)).get("model") or {}).get("init_from")
  if source in ALL_CONFIGS_RUNS:  # fine-tuning a run: runs/<its config's name>
    RunDir(tmp_path / "source").write_config(load_config(pathlib.Path(source).name))
    overrides.append(f"model.init_from={tmp_path / 'source'}")
  elif source:  # fine-tuning a Hugging Face model: a small one of its kind
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "config.json").write_text(json.dumps(HF_SOURCES[source]))
    overrides.append(f"model.init_from={tmp_path / 'source'}")
  config = load_config(name, overrides)
  if config.model.head is Head.CLASSIFICATION:  # its labels come from its data
    config = config.with_labels(["a", "b"])
  model = Transformer(config.model)
  jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))


def test_overrides_reach_nested_keys_and_parse_types():
  config = load_config("tiny-gpt", ["model.num_layers=3", "train.learning_rate=1e-4",
                                    "mesh.fsdp=2", "train.compute_dtype=bfloat16"])
  assert config.model.num_layers == 3 and config.model.family == "gpt2"
  assert config.train.learning_rate == 1e-4 and config.mesh.fsdp == 2
  assert config.train.compute_dtype.value == "bfloat16"
  # a whole number written as 1e4 (a string to YAML 1.1) or 2.5e3 or 32.0 is that integer
  config = load_config("tiny-gpt", ["train.steps=1e4", "train.warmup_steps=2.5e3",
                                    "train.batch_size=32.0"])
  assert (config.train.steps, config.train.warmup_steps, config.train.batch_size) == (
      10_000, 2_500, 32)
  assert all(type(v) is int for v in (config.train.steps, config.train.batch_size))


def test_a_resolved_config_round_trips_through_yaml(tmp_path):
  from lmjax.config import dump_config
  config = load_config("tiny-bert", ["model.dropout_rate=0.1"])
  path = tmp_path / "c.yaml"
  path.write_text(dump_config(config))
  assert load_config(path) == config


@pytest.mark.parametrize("override, expected", [
    ("train.stepz=3", "unknown config key train.stepz (did you mean train.steps?)"),
    ("trian.steps=3", "unknown config section 'trian' (did you mean train?)"),
    ("model.num_layer=3", "did you mean model.num_layers?"),
    ("train.steps=ten", "train.steps must be an integer, got 'ten'"),
    ("train.learning_rate=true", "train.learning_rate must be a number"),
    ("model.family=gpt3", "model.family='gpt3' is not a model family; lmjax builds bert, distilbert"),
    ("model.num_heads=5", "model.num_heads=5 does not divide model.embed_dim=128"),
    ("train.seq_len=4096", "train.seq_len=4096 is longer than the model's positions"),
    ("model.num_kv_heads=3", "model.num_kv_heads=3 must divide model.num_heads=4"),
    ("train.compute_dtype=fp16", "train.compute_dtype='fp16' is not one of float32, bfloat16"),
    ("model.preset=gpt5", "unknown model.preset 'gpt5'"),
    ("mesh.dcn_data=0", "mesh.dcn_data=0: the number of slices an axis spans"),
    ("novalue", "--set expects key.path=value"),
    ("model.lora.alpha=32", "model.lora.rank is 0 (no adapters: the whole model trains), but "
     "model.lora.alpha=32"),
    ("model.lora.targets=[q]", "give model.lora.rank (e.g. 8 or 16) to train LoRA adapters, or "
     "remove the model.lora section"),
    ("train.steps=1e23", "train.steps=100000000000000000000000 is out of range"),
    ("train.steps=1.0e+23", "train.steps=100000000000000000000000 is out of range"),
    ("train.steps=1.5", "train.steps must be an integer, got 1.5"),
    ("train.steps=2.5e-3", "train.steps must be an integer, got 0.0025 (float)"),
    ("train.steps=nan", "train.steps must be an integer, got 'nan'"),
])
def test_config_mistakes_are_explained(override, expected):
  with pytest.raises(UserError, match=None) as info:
    load_config("tiny-gpt", [override])
  assert expected in str(info.value)


@pytest.mark.parametrize("override, expected", [
    ("train.learning_rate=.nan", "train.learning_rate=nan is out of range: it must be in [0, inf)"),
    ("train.learning_rate=-1e-3", "train.learning_rate=-0.001 is out of range"),
    ("train.learning_rate=.inf", "train.learning_rate=inf is out of range"),
    ("train.warmup_steps=-1", "train.warmup_steps=-1 is out of range: it must be in [0, inf)"),
    ("train.steps=2147483648", "train.steps=2147483648 is out of range: it must be in "
     "[1, 2147483647] (steps are counted in int32)"),
    ("train.adam_b1=1", "train.adam_b1=1 is out of range: it must be in [0, 1)"),
    ("train.adam_eps=0", "train.adam_eps=0 is out of range"),
    ("train.grad_clip=-1", "train.grad_clip=-1 is out of range"),
    ("train.mlm_probability=1", "train.mlm_probability=1 is out of range"),
    ("train.eval_every=-5", "train.eval_every=-5 is out of range"),
    ("model.norm_eps=0", "model.norm_eps=0 is out of range"),
    ("model.dropout_rate=1", "model.dropout_rate=1 is out of range"),
    ("model.rope_theta=-10", "model.rope_theta=-10 is out of range"),
    ("model.head_dim=-1", "model.head_dim=-1 is out of range: it must be in [1, inf)"),
    ("model.num_kv_heads=0", "model.num_kv_heads=0 is out of range"),
    ("data.eval_fraction=1.5", "data.eval_fraction=1.5 is out of range: it must be in (0, 1)"),
])
def test_out_of_range_values_are_refused_with_the_range(override, expected):
  with pytest.raises(UserError) as info:
    load_config("tiny-gpt", [override])
  assert expected in str(info.value)


def test_boundary_values_are_accepted():
  config = load_config("tiny-gpt", ["train.warmup_steps=0", "train.grad_clip=0",
                                    "train.adam_b1=0", "model.dropout_rate=0"])
  assert (config.train.warmup_steps, config.train.adam_b1) == (0, 0)


def test_a_non_utf8_config_is_refused_by_name(tmp_path: pathlib.Path):
  path = tmp_path / "latin1.yaml"
  path.write_bytes("train:\n  steps: 3  # caf\xe9\n".encode("latin-1"))
  with pytest.raises(UserError) as info:
    load_config(path)
  assert str(path) in str(info.value) and "UTF-8" in str(info.value)


def test_an_unknown_config_name_lists_the_shipped_ones():
  with pytest.raises(UserError) as info:
    load_config("tiny-gtp")
  assert "tiny-gpt" in str(info.value)


def test_invalid_yaml_names_the_file(tmp_path: pathlib.Path):
  path = tmp_path / "bad.yaml"
  path.write_text("model: [unclosed\n")
  with pytest.raises(UserError) as info:
    load_config(path)
  assert str(path) in str(info.value)


def test_a_key_given_twice_is_refused_naming_it_and_its_line(tmp_path):
  path = tmp_path / "twice.yaml"
  path.write_text("model:\n  preset: tiny-gpt\ntrain:\n  steps: 5\n  steps: 7\n")
  with pytest.raises(UserError, match=r"key 'steps' appears twice in one mapping; keep one"
                                      r"(.|\n)*line 5"):
    load_config(str(path))


def test_a_config_nested_thousands_deep_is_refused_not_a_recursion_error(tmp_path):
  path = tmp_path / "deep.yaml"
  path.write_text("model: " + "[" * 100_000 + "]" * 100_000 + "\n")
  with pytest.raises(UserError, match="nests deeper than a config can"):
    load_config(str(path))


def test_a_json_file_nested_thousands_deep_is_refused_not_a_recursion_error(tmp_path):
  from lmjax.files import read_json_object
  path = tmp_path / "config.json"
  path.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
  with pytest.raises(UserError, match="nests JSON deeper than Python reads"):
    read_json_object(path)
