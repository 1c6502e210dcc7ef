"""Gemma 3 (transformers' gemma3_text): QK-norms, and local layers with a RoPE base of their own
beside global layers with linear RoPE scaling, against transformers' Gemma3ForCausalLM,
Gemma3TextModel and Gemma3TextForSequenceClassification both ways (logits within 1e-4, bit-exact
round trips, greedy text past the window), plus the options it refuses by name.

Every HF model is a tiny random `transformers` model (tests/hf_models.py's helpers); nothing
is downloaded.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lmjax.convert import (from_hf, hf_config_to_model_config,  # noqa: E402
                           model_config_to_hf_config, to_hf)
from lmjax.errors import UserError  # noqa: E402
from lmjax.infer import generate  # noqa: E402
from lmjax.model import (Head, ModelConfig, RopeScaling, Transformer, init_cache,  # noqa: E402
                         preset, unrolled)
from lmjax.model.layers import layer_inverse_frequencies, rope_inverse_frequencies  # noqa: E402
from tests.hf_models import (NEW, PAD, TOL, assert_round_trips_bit_for_bit,  # noqa: E402
                             assert_same_logits, assert_same_outputs, cached_hf_dirs, copy_config,
                             hf_greedy, randomise, random_lmjax, with_unit_norm_gains)

# Odd sizes, grouped heads of a size apart from the width, a window shorter than the inputs on
# three of four layers, a query scale apart from the head size, a final soft-cap that binds, and
# the local and global layers' RoPE apart: a base of 100 against 5,000 slowed 4x (linear).
_GEMMA3 = dict(hidden_size=24, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
               head_dim=10, intermediate_size=74, vocab_size=113, max_position_embeddings=64,
               sliding_window=4, query_pre_attn_scalar=7, final_logit_softcapping=3.0,
               layer_types=["sliding_attention", "sliding_attention", "full_attention",
                            "sliding_attention"],
               rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                                "full_attention": {"rope_type": "linear", "rope_theta": 5000.0,
                                                   "factor": 4.0}})
# As transformers v4 wrote Gemma 3 (and google/gemma-3-1b-pt's config.json still reads): flat
# rope_theta, rope_scaling and rope_local_base_freq, and a sliding_window_pattern for layer_types
# (2: every other layer global). Untied, one key/value head, SiLU.
_GEMMA3_V4 = {**{k: v for k, v in _GEMMA3.items() if k not in ("layer_types", "rope_parameters")},
              "hidden_size": 32, "num_key_value_heads": 1, "tie_word_embeddings": False,
              "final_logit_softcapping": None, "hidden_activation": "silu",
              "rope_theta": 800.0, "rope_local_base_freq": 30.0,
              "rope_scaling": {"rope_type": "linear", "factor": 2.0},
              "sliding_window_pattern": 2}

# name -> (HF class, config kwargs)
HF_CASES = {
    "causal_lm": ("Gemma3ForCausalLM", _GEMMA3),
    "v4_keys": ("Gemma3ForCausalLM", _GEMMA3_V4),
    "base": ("Gemma3TextModel", _GEMMA3),
    "classifier": ("Gemma3TextForSequenceClassification", {**_GEMMA3, "num_labels": 3}),
}


def build_hf(name: str, seed: int = 0):
  cls, kwargs = HF_CASES[name]
  config = transformers.Gemma3TextConfig(**kwargs)
  return randomise(getattr(transformers, cls)(config), seed)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """name -> (saved directory, the torch model), built once per module on first use."""
  return cached_hf_dirs(tmp_path_factory, build_hf)


def assert_matches(hf_model, model, params):
  if model.config.head is Head.CLASSIFICATION:
    assert_same_logits(hf_model, model, params)
  else:
    assert_same_outputs(hf_model, model, params)


# -- HF -> lmjax ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, scan_layers", [("causal_lm", True), ("causal_lm", False),
                                               ("v4_keys", True), ("base", False),
                                               ("classifier", True)])
def test_converted_gemma3_matches_transformers(hf_dirs, name, scan_layers):
  path, hf_model = hf_dirs(name)
  model, params = from_hf(path, scan_layers=scan_layers)
  assert_matches(hf_model, model, params)


def test_converted_configs_carry_each_layer_types_rope(hf_dirs):
  config = from_hf(hf_dirs("causal_lm")[0])[0].config
  assert (config.qk_norm, config.rope_theta, config.rope_scaling, config.rope_scaling_factor,
          config.rope_local_theta, config.sliding_layers, config.query_pre_attn_scalar,
          config.attn_logit_softcap, config.final_logit_softcap) == (
              True, 5000.0, RopeScaling.LINEAR, 4.0, 100.0, (0, 1, 3), 7.0, None, 3.0)
  v4 = from_hf(hf_dirs("v4_keys")[0])[0].config
  assert (v4.rope_theta, v4.rope_scaling_factor, v4.rope_local_theta, v4.sliding_layers,
          v4.kv_heads, v4.tie_embeddings) == (800.0, 2.0, 30.0, (0, 2), 1, False)


def test_rope_frequencies_equal_transformers_for_each_layer_type(hf_dirs):
  _, hf_model = hf_dirs("causal_lm")
  rotary = hf_model.model.rotary_emb
  config = from_hf(hf_dirs("causal_lm")[0])[0].config
  np.testing.assert_array_equal(rope_inverse_frequencies(config, local=True),
                                rotary.sliding_attention_inv_freq.numpy())
  np.testing.assert_array_equal(rope_inverse_frequencies(config),
                                rotary.full_attention_inv_freq.numpy())
  per_layer = layer_inverse_frequencies(config)
  assert [f is per_layer[0] for f in per_layer] == [True, True, False, True]


def test_linear_rope_scaling_equals_transformers_for_llama_too():
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  rope = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 8.0}
  hf_config = transformers.LlamaConfig(hidden_size=512, num_attention_heads=4,
                                       rope_parameters=rope)
  expected, _ = ROPE_INIT_FUNCTIONS["linear"](hf_config, "cpu")
  config = hf_config_to_model_config({**hf_config.to_dict(), "architectures": None})
  assert (config.rope_scaling, config.rope_scaling_factor) == (RopeScaling.LINEAR, 8.0)
  np.testing.assert_array_equal(rope_inverse_frequencies(config), expected.numpy())
  assert model_config_to_hf_config(config)["rope_parameters"] == rope


# google/gemma-3-1b-pt's config.json, as published (transformers 4.50's keys).
GEMMA3_1B_PT = {
    "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid",
    "eos_token_id": 1, "final_logit_softcapping": None, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152, "initializer_range": 0.02,
    "intermediate_size": 6912, "max_position_embeddings": 32768, "model_type": "gemma3_text",
    "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
    "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000, "rope_scaling": None, "rope_theta": 1000000,
    "sliding_window": 512, "sliding_window_pattern": 6, "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 262144}


def test_the_gemma3_1b_preset_is_the_published_checkpoints_architecture():
  assert hf_config_to_model_config(GEMMA3_1B_PT) == preset("gemma3-1b")
  model = Transformer(preset("gemma3-1b"))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nn.unbox(shapes)["params"]))
  with torch.device("meta"):
    hf_model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**{
        k: v for k, v in GEMMA3_1B_PT.items() if k not in ("architectures", "model_type")}))
  assert count == sum(p.numel() for p in hf_model.parameters()) == 999_885_952


# -- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(HF_CASES))
def test_hf_to_lmjax_to_hf_reproduces_every_tensor_bit_for_bit(hf_dirs, tmp_path, name):
  exported = assert_round_trips_bit_for_bit(hf_dirs(name)[0], tmp_path / "out",
                                            scan_layers=name != "base")
  assert exported["model_type"] == "gemma3_text"


# -- lmjax -> HF -----------------------------------------------------------------------------------

_SMALL = dict(vocab_size=107, num_layers=3, embed_dim=36, num_heads=6, mlp_dim=80, max_seq_len=32)
LMJAX_CASES = {
    "local_rope": ModelConfig.for_family("gemma3", **_SMALL, num_kv_heads=2, head_dim=8,
                                         sliding_window=3, sliding_layers=(0, 2),
                                         rope_theta=3000.0, rope_local_theta=40.0,
                                         rope_scaling=RopeScaling.LINEAR, rope_scaling_factor=3.0,
                                         query_pre_attn_scalar=5.0, final_logit_softcap=2.5),
    # Every layer alike: scaled RoPE on the local layers too, untied, unrolled.
    "shared_rope": ModelConfig.for_family("gemma3", **_SMALL, num_kv_heads=3, sliding_window=4,
                                          sliding_layers=(1,), rope_scaling=RopeScaling.LINEAR,
                                          rope_scaling_factor=2.0, tie_embeddings=False,
                                          scan_layers=False),
    "global_only": ModelConfig.for_family("gemma3", **_SMALL, num_kv_heads=1, head=Head.NONE),
    "classifier": ModelConfig.for_family("gemma3", **_SMALL, num_kv_heads=2, sliding_window=3,
                                         sliding_layers=(0, 1), rope_local_theta=25.0,
                                         head=Head.CLASSIFICATION, num_labels=4),
}
_AUTO = {Head.CAUSAL_LM: "AutoModelForCausalLM", Head.NONE: "AutoModel",
         Head.CLASSIFICATION: "AutoModelForSequenceClassification"}
_CLASSES = {Head.CAUSAL_LM: "Gemma3ForCausalLM", Head.NONE: "Gemma3TextModel",
            Head.CLASSIFICATION: "Gemma3TextForSequenceClassification"}


@pytest.mark.parametrize("name", list(LMJAX_CASES))
def test_exported_gemma3_loads_with_auto_classes_and_matches(tmp_path, name):
  config = LMJAX_CASES[name]
  model, params = random_lmjax(config)
  to_hf(model, params, tmp_path / "hf", config_overrides={"pad_token_id": 0})
  auto = getattr(transformers, _AUTO[config.head])
  hf_model, info = auto.from_pretrained(tmp_path / "hf", output_loading_info=True)
  assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
  assert type(hf_model).__name__ == _CLASSES[config.head]
  assert_matches(hf_model.eval(), model, params)
  model2, params2 = from_hf(tmp_path / "hf", scan_layers=config.scan_layers)
  assert model2.config == config
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_exports_write_the_rope_of_each_layer_type_in_v5_and_v4_keys():
  local = model_config_to_hf_config(LMJAX_CASES["local_rope"])
  assert local["rope_parameters"] == {
      "sliding_attention": {"rope_type": "default", "rope_theta": 40.0},
      "full_attention": {"rope_type": "linear", "rope_theta": 3000.0, "factor": 3.0}}
  assert (local["rope_theta"], local["rope_local_base_freq"], local["rope_scaling"],
          local["layer_types"]) == (3000.0, 40.0, local["rope_parameters"]["full_attention"],
                                    ["sliding_attention", "full_attention", "sliding_attention"])
  # Scaled local layers have no v4 spelling: v5's keys alone.
  shared = model_config_to_hf_config(LMJAX_CASES["shared_rope"])
  assert shared["rope_parameters"]["sliding_attention"] == shared["rope_parameters"][
      "full_attention"]
  assert not {"rope_theta", "rope_local_base_freq", "rope_scaling"} & set(shared)
  for config in LMJAX_CASES.values():
    assert hf_config_to_model_config(model_config_to_hf_config(config),
                                     scan_layers=config.scan_layers) == config


# -- the graph: per-layer RoPE scanned, unrolled and with the KV cache -----------------------------


def test_scanned_and_unrolled_layers_rotate_each_layer_alike():
  config = LMJAX_CASES["local_rope"]
  model, params = random_lmjax(config)
  flat_config, flat_params = unrolled(config, params)
  ids = jax.random.randint(jax.random.key(3), (2, 13), 0, config.vocab_size)
  scanned = jax.jit(model.apply)({"params": params}, ids)
  flat = jax.jit(Transformer(flat_config).apply)({"params": flat_params}, ids)
  np.testing.assert_allclose(flat, scanned, **TOL)  # rounding apart (as without per-layer RoPE)
  # The local base matters: the same weights with the global RoPE everywhere differ.
  shared = Transformer(ModelConfig.for_family(
      "gemma3", **{**_SMALL, "num_kv_heads": 2, "head_dim": 8, "sliding_window": 3,
                   "sliding_layers": (0, 2), "rope_theta": 3000.0,
                   "rope_scaling": RopeScaling.LINEAR, "rope_scaling_factor": 3.0,
                   "query_pre_attn_scalar": 5.0, "final_logit_softcap": 2.5}))
  assert not np.allclose(shared.apply({"params": params}, ids), scanned, atol=1e-3)


def test_decoding_with_a_kv_cache_past_the_window_equals_the_full_forward():
  config, params = unrolled(LMJAX_CASES["local_rope"], random_lmjax(LMJAX_CASES["local_rope"])[1])
  apply = jax.jit(Transformer(config).apply)
  ids = jax.random.randint(jax.random.key(2), (2, 14), 0, config.vocab_size)
  expected = apply({"params": params}, ids)
  out, cache = apply({"params": params}, ids[:, :5], cache=init_cache(config, 2, ids.shape[1]))
  steps = [out]
  for i in range(5, ids.shape[1]):
    out, cache = apply({"params": params}, ids[:, i:i + 1], cache=cache)
    steps.append(out)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["causal_lm", "v4_keys"])
def test_greedy_generation_past_the_window_matches_transformers(tmp_path, name):
  """A batch of mixed lengths, left-padded by transformers and lmjax each its own way, decoded
  well past the window of 4 (tests/test_generation_parity.py's setup)."""
  hf_model = with_unit_norm_gains(build_hf(name))  # randomise's gains make greedy text repeat
  hf_model.save_pretrained(tmp_path)
  hf_model.generation_config.eos_token_id = None
  model, params = from_hf(tmp_path)
  rng = np.random.default_rng(1)
  prompts = [[PAD] + rng.integers(4, model.config.vocab_size, n).tolist() for n in (6, 2, 10)]
  expected = hf_greedy(hf_model, prompts)
  got = generate(model, params, prompts, max_new_tokens=NEW, temperature=0, pad_id=PAD)
  assert len({t for row in expected for t in row}) > 3  # a non-degenerate batch
  assert got == expected


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"attn_logit_softcapping": 50.0},
     r"attn_logit_softcapping=50\.0 is not supported for gemma3_text: transformers' Gemma 3 "
     r"attention ignores it"),
    ({"use_bidirectional_attention": True}, r"use_bidirectional_attention=True is not supported "
                                            r"by lmjax \(Gemma 3 converts as a causal decoder\)"),
    ({"attention_bias": True}, r"attention_bias=True is not supported .*Gemma 3's attention_bias"),
    ({"rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                          "full_attention": {"rope_type": "yarn", "rope_theta": 1e6,
                                             "factor": 8.0}}},
     r"RoPE type 'yarn' of the full_attention layers is not supported for gemma3_text; lmjax "
     r"converts default, linear"),
    ({"rope_parameters": {"sliding_attention": {"rope_type": "linear", "rope_theta": 1e4,
                                                "factor": 2.0},
                          "full_attention": {"rope_type": "default", "rope_theta": 1e6}}},
     r"rope_parameters\['sliding_attention'\] has rope_type 'linear', unlike the full_attention"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}},
     r"rope_parameters=\{.*\} has no entries by layer type"),
    ({"rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 1e4,
                                                "partial_rotary_factor": 0.5},
                          "full_attention": {"rope_type": "default", "rope_theta": 1e6}}},
     r"partial_rotary_factor != 1 is not supported"),
    ({"layer_types": ["sliding_attention", "chunked_attention"] * 2},
     r"layer_types names 'chunked_attention'"),
    ({"layer_types": None, "sliding_window_pattern": 0},
     r"sliding_window_pattern=0 must be a positive integer"),
    ({"sliding_window": None}, r"layer_types has 'sliding_attention' layers \(0, 1, 3\) without "
                               r"a window \(sliding_window=None"),
    ({"hidden_activation": "quick_gelu"}, r"hidden_activation='quick_gelu' has no exact"),
    ({"architectures": ["Gemma3ForTokenClassification"]},
     r"architecture 'Gemma3ForTokenClassification' is not supported for model_type "
     r"'gemma3_text'"),
])
def test_unsupported_gemma3_configs_are_refused_by_name(hf_dirs, tmp_path, changes, message):
  path, _ = hf_dirs("causal_lm")
  copy_config(path, tmp_path, **changes)
  (tmp_path / "model.safetensors").symlink_to(path / "model.safetensors")
  with pytest.raises(UserError, match=message):
    from_hf(tmp_path)


@pytest.mark.parametrize("config, message", [
    (ModelConfig.for_family("qwen3", **_SMALL, sliding_window=3, rope_local_theta=10.0),
     r"model\.rope_local_theta=10\.0 cannot be expressed as a Hugging Face qwen3 model, which "
     r"needs rope_local_theta=None"),
    (ModelConfig.for_family("gemma3", **_SMALL, attn_logit_softcap=50.0),
     r"model\.attn_logit_softcap=50\.0 cannot be expressed as a Hugging Face gemma3_text model"),
    (ModelConfig.for_family("gemma3", **_SMALL, rope_scaling=RopeScaling.LLAMA3),
     r"model\.rope_scaling=llama3 cannot be expressed as a Hugging Face gemma3_text model"),
    (ModelConfig.for_family("gemma3", **_SMALL, use_bias=True),
     r"model\.use_bias=True .* gemma3_text model, which needs use_bias=False"),
    (ModelConfig.for_family("gemma3", **_SMALL, qk_norm=False),
     r"model\.qk_norm=False .* gemma3_text model, which needs qk_norm=True"),
])
def test_exports_refuse_what_gemma3_cannot_compute(config, message):
  with pytest.raises(UserError, match=message):
    model_config_to_hf_config(config)


@pytest.mark.parametrize("fields, message", [
    (dict(rope_local_theta=100.0), r"model\.rope_local_theta=100 is the RoPE base of the "
                                   r"sliding-window \(local\) layers, and this model has none"),
    (dict(rope_local_theta=0.0), r"model\.rope_local_theta=0 is out of range"),
    (dict(rope_scaling=RopeScaling.LINEAR, rope_scaling_factor=0.0),
     r"model\.rope_scaling_factor=0 must be positive"),
])
def test_inconsistent_rope_options_are_refused_by_name(fields, message):
  with pytest.raises(UserError, match=message):
    ModelConfig.for_family("gemma3", **_SMALL, **fields)


def test_rope_options_need_rotary_positions():
  with pytest.raises(UserError, match=r"model\.rope_scaling=linear needs model\.positions=rotary"):
    ModelConfig.for_family("gpt2", **_SMALL, rope_scaling=RopeScaling.LINEAR)
  with pytest.raises(UserError, match=r"model\.rope_local_theta=10 is the local layers' RoPE base "
                                      r"and needs model\.positions=rotary"):
    ModelConfig.for_family("gpt2", **_SMALL, sliding_window=4, rope_local_theta=10.0)
