"""Hugging Face conversion: exact logits both ways, bit-exact round trips, streaming, refusals.

Every HF model here is a tiny random `transformers` model (odd sizes, all weights and biases
randomised), saved with `save_pretrained`; nothing is downloaded. Tolerances are the project's
policy (1e-4, atol and rtol, float32) and are never loosened.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lmjax.convert import (copy_tokenizer_files, from_hf, hf_config_to_model_config,  # noqa: E402
                           model_config_to_hf_config, to_hf)
from lmjax.errors import UserError  # noqa: E402
from lmjax.infer import generate  # noqa: E402
from lmjax.model import (Activation, Head, ModelConfig, PoolerActivation,  # noqa: E402
                         RopeScaling)
from tests.hf_models import (_LLAMA3_ROPE, _SMALL, HF_CASES, LMJAX_CASES,  # noqa: E402
                             assert_fill_mask_matches, assert_round_trips_bit_for_bit,
                             assert_same_outputs, build_hf, cached_hf_dirs, copy_config,
                             random_lmjax, read_tensors)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """name -> (saved directory, the torch model), built once per module on first use."""
  return cached_hf_dirs(tmp_path_factory, build_hf)


@pytest.fixture(scope="module")
def converted(hf_dirs):
  """(name, scan_layers) -> `from_hf` of that HF model: (model, params), converted once per
  module on first use (the tests only read them)."""
  cache = {}

  def get(name: str, scan_layers: bool = True):
    if (name, scan_layers) not in cache:
      cache[name, scan_layers] = from_hf(hf_dirs(name)[0], scan_layers=scan_layers)
    return cache[name, scan_layers]
  return get


# -- HF -> lmjax ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("name", list(HF_CASES))
def test_converted_model_matches_transformers(hf_dirs, converted, name, scan_layers):
  _, hf_model = hf_dirs(name)
  model, params = converted(name, scan_layers)
  assert model.config.scan_layers == scan_layers
  assert jax.tree.leaves(params)[0].dtype == jnp.float32
  assert_same_outputs(hf_model, model, params)


def test_converted_configs_carry_the_hf_options(converted):
  roberta, _ = converted("roberta_mlm")
  assert (roberta.config.position_offset, roberta.config.type_vocab_size,
          roberta.config.max_seq_len) == (2, 1, 32)
  llama, _ = converted("llama")
  assert (llama.config.kv_heads, llama.config.rope_scaling, llama.config.rope_theta,
          llama.config.tie_embeddings) == (3, RopeScaling.LLAMA3, 5000.0, False)
  qwen2, _ = converted("qwen2")
  assert (qwen2.config.qkv_bias, qwen2.config.use_bias) == (True, False)
  qwen3, _ = converted("qwen3")
  assert (qwen3.config.qk_norm, qwen3.config.dim_per_head, qwen3.config.kv_heads,
          qwen3.config.rope_theta, qwen3.config.norm_eps) == (True, 10, 2, 1e6, 1e-6)
  assert converted("qwen3_tied")[0].config.tie_embeddings is True
  assert converted("bert_no_pooler")[0].config.pooler is False
  assert converted("bert_base")[0].config.pooler is True
  distilbert = converted("distilbert_mlm")[0].config
  assert (distilbert.family, distilbert.type_vocab_size, distilbert.norm_eps, distilbert.pooler,
          distilbert.max_seq_len, distilbert.mlp_dim) == ("distilbert", 0, 1e-12, False, 30, 74)
  untied = converted("distilbert_untied")[0].config
  assert (untied.tie_embeddings, untied.activation) == (False, Activation.GELU_TANH)


def test_a_qwen3_config_without_head_dim_has_the_class_default_of_128():
  # Qwen3Config's head_dim is 128 whatever hidden_size / num_attention_heads (1024 / 16 = 64 in
  # Qwen3-0.6B), and a config.json may leave out what equals the class default.
  config = hf_config_to_model_config({
      "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_size": 1024,
      "num_attention_heads": 16, "num_key_value_heads": 8, "num_hidden_layers": 28,
      "intermediate_size": 3072})
  assert (config.dim_per_head, config.qk_norm, config.norm_eps) == (128, True, 1e-6)
  assert model_config_to_hf_config(config)["head_dim"] == 128


@pytest.mark.parametrize("head_dim, theta, factor", [(64, 500000.0, 32.0), (128, 500000.0, 8.0)])
def test_llama3_rope_frequencies_equal_transformers_at_published_sizes(head_dim, theta, factor):
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  from lmjax.model.layers import rope_inverse_frequencies
  rope = {**_LLAMA3_ROPE, "rope_theta": theta, "factor": factor,
          "original_max_position_embeddings": 8192}
  hf_config = transformers.LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4,
                                       rope_parameters=rope)
  expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
  config = hf_config_to_model_config({**hf_config.to_dict(), "architectures": None})
  np.testing.assert_allclose(rope_inverse_frequencies(config), expected.numpy(), rtol=1e-6, atol=0)


# -- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(HF_CASES))
def test_hf_to_lmjax_to_hf_reproduces_every_tensor_bit_for_bit(hf_dirs, tmp_path, name):
  assert_round_trips_bit_for_bit(hf_dirs(name)[0], tmp_path / "out", scan_layers=name != "gpt2_lm")


def test_bfloat16_checkpoints_round_trip_without_a_float32_detour(tmp_path):
  hf_model = build_hf("llama").to(torch.bfloat16)
  hf_model.save_pretrained(tmp_path / "hf")
  model, params = from_hf(tmp_path / "hf", dtype=jnp.bfloat16)
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  to_hf(model, params, tmp_path / "bf16")  # default: the params' dtype
  original = read_tensors(tmp_path / "hf")
  assert {dtype for dtype, _, _ in original.values()} == {"bfloat16"}
  assert read_tensors(tmp_path / "bf16") == original
  # Upcasting is exact, so float32 params written as bfloat16 give the same bits too.
  model32, params32 = from_hf(tmp_path / "hf")
  to_hf(model32, params32, tmp_path / "via32", dtype="bfloat16")
  assert read_tensors(tmp_path / "via32") == original
  assert json.loads((tmp_path / "via32" / "config.json").read_text())["dtype"] == "bfloat16"


def test_sharded_checkpoints_read_and_write_with_an_index(hf_dirs, tmp_path):
  path, hf_model = hf_dirs("llama")
  hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
  assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
  model, params = from_hf(tmp_path / "sharded")
  assert_same_outputs(hf_model, model, params)

  to_hf(model, params, tmp_path / "out", max_shard_size=40_000)
  out = tmp_path / "out"
  shards = sorted(p.name for p in out.glob("*.safetensors"))
  assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
  index = json.loads((out / "model.safetensors.index.json").read_text())
  tensors = read_tensors(out)
  assert set(index["weight_map"]) == set(tensors) and set(index["weight_map"].values()) == set(shards)
  assert index["metadata"]["total_size"] == sum(len(raw) for _, _, raw in tensors.values())
  assert tensors == read_tensors(path)
  for shard in shards:
    with safe_open(out / shard, framework="numpy") as f:
      assert f.metadata() == {"format": "pt"}
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert_same_outputs(reloaded, model, params)


# -- lmjax -> HF ------------------------------------------------------------------------------------

_AUTO = {Head.CAUSAL_LM: "AutoModelForCausalLM", Head.MASKED_LM: "AutoModelForMaskedLM",
         Head.NONE: "AutoModel"}


@pytest.mark.parametrize("name", list(LMJAX_CASES))
def test_exported_model_loads_with_auto_classes_and_matches(tmp_path, name):
  config = LMJAX_CASES[name]
  model, params = random_lmjax(config)
  to_hf(model, params, tmp_path / "hf")
  auto = getattr(transformers, _AUTO[config.head])
  hf_model, info = auto.from_pretrained(tmp_path / "hf", output_loading_info=True)
  assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
  assert hf_model.config.model_type == {"roberta_mlm": "roberta", "roberta_relu": "roberta",
                                        "mistral": "mistral",
                                        "qwen2": "qwen2", "qwen3_tied": "qwen3",
                                        "qwen2_window": "qwen2"}.get(
                                            name, config.family)
  assert_same_outputs(hf_model.eval(), model, params)
  # And back: the exported directory converts to the same model.
  model2, params2 = from_hf(tmp_path / "hf", scan_layers=config.scan_layers)
  assert model2.config == config
  jax.tree.map(np.testing.assert_array_equal, params2, params)


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert_mlm"])
def test_causal_lm_exports_carry_the_generation_config_transformers_derives(tmp_path, name):
  model, params = random_lmjax(LMJAX_CASES[name])
  to_hf(model, params, tmp_path / "hf",
        config_overrides={"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})
  if model.config.head is not Head.CAUSAL_LM:
    assert not (tmp_path / "hf" / "generation_config.json").exists()
    return
  loaded = transformers.GenerationConfig.from_pretrained(tmp_path / "hf")
  derived = transformers.GenerationConfig.from_model_config(
      transformers.AutoConfig.from_pretrained(tmp_path / "hf"))
  for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
    assert getattr(loaded, key) == getattr(derived, key) == {"bos_token_id": 1, "eos_token_id": 2,
                                                            "pad_token_id": 0}[key]
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
  assert hf_model.generation_config.eos_token_id == 2


def test_model_config_survives_the_hf_config_round_trip():
  for config in LMJAX_CASES.values():
    back = hf_config_to_model_config(model_config_to_hf_config(config),
                                     scan_layers=config.scan_layers)
    assert back == config


# -- inference parity --------------------------------------------------------------------------------


# Every other causal family's greedy decoding is compared with transformers' in
# tests/test_generation_parity.py (a batch of prompts of mixed lengths, left-padded, with EOS ids,
# repetition penalties and min_new_tokens): this module keeps the family that module lacks.
@pytest.mark.parametrize("name", ["mixtral_tied_window"])
def test_greedy_generation_matches_transformers_token_for_token(hf_dirs, converted, name):
  _, hf_model = hf_dirs(name)
  model, params = converted(name)
  prompt = [5, 17, 3, 42, 9]
  eos_id = hf_model.generation_config.eos_token_id  # HF stops there; so must we
  with torch.no_grad():
    expected = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones_like(
        torch.tensor([prompt])), max_new_tokens=14, do_sample=False, pad_token_id=0)
  expected = expected[0, len(prompt):].tolist()
  (got,) = generate(model, params, [prompt], max_new_tokens=14, temperature=0, eos_id=eos_id)
  assert len(set(expected)) > 2  # a non-degenerate continuation
  assert got == expected


@pytest.mark.parametrize("name", ["bert_mlm", "distilbert_mlm"])
def test_fill_mask_matches_hf_masked_lm_top_k(hf_dirs, name):
  path, hf_model = hf_dirs(name)
  assert_fill_mask_matches(hf_model, path, [2, 11, 57, 4, 23, 8, 4, 3], mask_id=4)


# -- safety and errors ---------------------------------------------------------------------------


def test_pickled_weights_are_refused_unless_allowed(hf_dirs, tmp_path):
  path, hf_model = hf_dirs("gpt2_lm")
  copy_config(path, tmp_path)
  torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
  with pytest.raises(UserError, match="--allow-pickle"):
    from_hf(tmp_path)
  model, params = from_hf(tmp_path, allow_pickle=True)
  assert_same_outputs(hf_model, model, params)


def _rewrite_weights(src: pathlib.Path, dst: pathlib.Path, edit) -> None:
  copy_config(src, dst)
  with safe_open(src / "model.safetensors", framework="numpy") as f:
    tensors = {name: f.get_tensor(name) for name in f.keys()}
  edit(tensors)
  save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("transformer.h.1.mlp.c_fc.weight"),
     r"missing .*transformer\.h\.1\.mlp\.c_fc\.weight \[48, 80\]"),
    (lambda t: t.update({"transformer.h.0.attn.extra": np.zeros(3, np.float32)}),
     r"no place for: transformer\.h\.0\.attn\.extra"),
    (lambda t: t.update({"transformer.wpe.weight": np.zeros((31, 48), np.float32)}),
     r"transformer\.wpe\.weight .* shape \[31, 48\], but config\.json implies \[32, 48\]"),
    # Values that no trained model holds: refused by tensor name and position, not imported.
    (lambda t: t["transformer.h.1.mlp.c_fc.weight"].__setitem__((5, 7), np.nan),
     r"tensor transformer\.h\.1\.mlp\.c_fc\.weight in .*model\.safetensors holds nan at "
     r"\[5, 7\]: weights must be finite"),
    (lambda t: t["transformer.ln_f.bias"].__setitem__(3, -np.inf),
     r"tensor transformer\.ln_f\.bias in .* holds -inf at \[3\]"),
    (lambda t: t.update({"transformer.wpe.weight": np.ones((32, 48), np.int8)}),
     r"tensor transformer\.wpe\.weight in .* is int8, not floating point: is the checkpoint "
     r"quantized\?"),
])
def test_missing_unexpected_and_misshapen_tensors_are_named(hf_dirs, tmp_path, edit, message):
  _rewrite_weights(hf_dirs("gpt2_lm")[0], tmp_path, edit)
  with pytest.raises(UserError, match=message):
    from_hf(tmp_path)


def test_a_truncated_safetensors_file_is_named(hf_dirs, tmp_path):
  path, _ = hf_dirs("gpt2_lm")
  copy_config(path, tmp_path)
  data = (path / "model.safetensors").read_bytes()
  (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
  with pytest.raises(UserError, match=r"model\.safetensors is not a readable safetensors file"):
    from_hf(tmp_path)


@pytest.mark.parametrize("name, changes, message", [
    ("gpt2_lm", {"model_type": "t5"}, r"model_type 't5' is not supported; .*gpt2, llama"),
    ("gpt2_lm", {"architectures": ["GPT2ForTokenClassification"]},
     r"GPT2ForTokenClassification.*GPT2LMHeadModel"),
    ("gpt2_lm", {"activation_function": "quick_gelu"}, r"quick_gelu.*supported: gelu"),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}},
     r"RoPE type 'yarn' is not supported; .*default, llama3"),
    ("distilbert_mlm", {"activation": "quick_gelu"}, r"activation='quick_gelu' has no exact"),
    ("distilbert_mlm", {"architectures": ["DistilBertForQuestionAnswering"]},
     r"DistilBertForQuestionAnswering.*DistilBertForMaskedLM"),
    ("distilbert_mlm", {"problem_type": "multi_label_classification", "num_labels": 3,
                        "architectures": ["DistilBertForSequenceClassification"]},
     r"problem_type='multi_label_classification' is not supported"),
    ("llama", {"attention_bias": True}, r"attention_bias=True with mlp_bias=False"),
    ("qwen3", {"attention_bias": True}, r"attention_bias=True is not supported .*o_proj"),
    ("qwen3", {"use_sliding_window": False, "sliding_window": 8,
               "layer_types": ["full_attention", "sliding_attention"]},
     r"layer_types has 'sliding_attention' layers \(1\) without a window"),
    ("qwen2", {"layer_types": ["full_attention"]},
     r"layer_types has 1 entries for num_hidden_layers=2"),
    ("qwen3", {"layer_types": ["full_attention", "chunked_attention"]},
     r"layer_types names 'chunked_attention'"),
    ("qwen3", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}},
     r"RoPE type 'yarn' is not supported"),
    ("gemma2", {"attention_bias": True}, r"attention_bias=True is not supported .*o_proj"),
    ("gemma2", {"use_bidirectional_attention": True},
     r"use_bidirectional_attention=True is not supported"),
    ("gemma2", {"hidden_activation": "quick_gelu"}, r"hidden_activation='quick_gelu' has no exact"),
    ("gemma2", {"sliding_window": None},
     r"layer_types has 'sliding_attention' layers \(0, 2\) without a window \(sliding_window=None"),
    ("gemma2", {"layer_types": ["full_attention", "chunked_attention"] * 2},
     r"layer_types names 'chunked_attention'"),
    ("gemma2", {"attn_logit_softcapping": 0.0}, r"model\.attn_logit_softcap=0 is out of range"),
    # Sizes no file holds: refused at once (not after building a million layers' bindings, or
    # a billion trial divisions to suggest a head count).
    ("gpt2_lm", {"n_layer": 10**6}, r"config\.json implies at least 16,896,004,656 weights "
     r"\(1000000 layers of width 48, vocabulary 97\), but its weight files hold 41,104"),
    ("gpt2_lm", {"n_embd": 10**9}, r"model\.num_heads=6 does not divide "
     r"model\.embed_dim=1000000000: choose a head count that divides the width \(e\.g\. 5\)"),
    ("gpt2_lm", {"n_embd": 10**9 - 4}, r"implies at least .* weights \(2 layers of width "
     r"999999996"),
    ("llama", {"quantization_config": {"quant_method": "gptq", "bits": 4}},
     r"config\.json has a quantization_config \(quant_method 'gptq'\): lmjax imports "
     r"unquantized weights"),
])
def test_unsupported_configs_are_refused_by_name(hf_dirs, tmp_path, name, changes, message):
  path, _ = hf_dirs(name)
  copy_config(path, tmp_path, **changes)
  (tmp_path / "model.safetensors").symlink_to(path / "model.safetensors")
  with pytest.raises(UserError, match=message):
    from_hf(tmp_path)


def test_windows_a_hugging_face_model_type_cannot_hold_are_refused_on_export():
  with pytest.raises(UserError, match=r"model\.sliding_window=4 cannot be expressed as a "
                                      r"Hugging Face llama model"):
    model_config_to_hf_config(ModelConfig.for_family("llama", **_SMALL, sliding_window=4))
  with pytest.raises(UserError, match=r"model\.sliding_layers=\(1,\) cannot be expressed as a "
                                      r"Hugging Face mistral model"):
    model_config_to_hf_config(ModelConfig.for_family("mistral", **_SMALL, sliding_window=4,
                                                     sliding_layers=(1,)))


def test_qwen_windows_export_layer_types_and_max_window_layers_where_they_are_a_suffix():
  exported = model_config_to_hf_config(LMJAX_CASES["qwen2_window"])
  assert (exported["use_sliding_window"], exported["sliding_window"], exported["layer_types"],
          exported["max_window_layers"]) == (True, 3, ["full_attention", "sliding_attention"], 1)
  assert "max_window_layers" not in model_config_to_hf_config(LMJAX_CASES["qwen3_window"])


@pytest.mark.parametrize("fields, message", [
    (dict(attn_logit_softcap=5.0), r"model\.attn_logit_softcap=5\.0 cannot be expressed as a "
                                   r"Hugging Face llama model, which needs attn_logit_softcap=None"),
    (dict(final_logit_softcap=3.0), r"model\.final_logit_softcap=3\.0 .* llama model"),
    (dict(query_pre_attn_scalar=8.0), r"model\.query_pre_attn_scalar=8\.0 .* llama model"),
    (dict(post_norms=True), r"model\.post_norms=True .* llama model, which needs post_norms=False"),
    (dict(embed_scale=True), r"model\.embed_scale=True .* llama model"),
])
def test_gemma2_options_on_other_families_are_refused_on_export(fields, message):
  with pytest.raises(UserError, match=message):
    model_config_to_hf_config(ModelConfig.for_family("llama", **_SMALL, **fields))


def test_gemma2_exports_refuse_biases_and_a_width_apart_from_the_heads():
  with pytest.raises(UserError, match=r"model\.qkv_bias=True .* gemma2 model, which needs "
                                      r"qkv_bias=False"):
    model_config_to_hf_config(ModelConfig.for_family("gemma2", **_SMALL, qkv_bias=True))
  with pytest.raises(UserError, match=r"model\.embed_dim=36 .* a multiple of "
                                      r"model\.num_heads=8"):
    model_config_to_hf_config(ModelConfig.for_family("gemma2", **_SMALL | dict(num_heads=8),
                                                     head_dim=4))


def test_gemma2_configs_read_the_class_defaults_transformers_fills_in(converted):
  config = hf_config_to_model_config({"model_type": "gemma2",
                                      "architectures": ["Gemma2ForCausalLM"]})
  assert (config.embed_dim, config.dim_per_head, config.query_pre_attn_scalar,
          config.attn_logit_softcap, config.final_logit_softcap, config.sliding_window,
          config.sliding_layers, config.tie_embeddings) == (
              2304, 256, None, 50.0, 30.0, 4096, tuple(range(0, 26, 2)), True)
  gemma2 = converted("gemma2")[0].config
  assert (gemma2.query_pre_attn_scalar, gemma2.dim_per_head, gemma2.kv_heads,
          gemma2.sliding_layers, gemma2.attn_logit_softcap) == (7.0, 10, 2, (0, 2), 5.0)
  exported = model_config_to_hf_config(LMJAX_CASES["gemma2_global"])
  assert (exported["layer_types"], exported["sliding_window"], exported["query_pre_attn_scalar"],
          exported["hidden_activation"]) == (["full_attention"] * 2, 32, 6, "gelu_pytorch_tanh")


def test_qk_norm_outside_qwen3_is_refused_on_export_and_without_rms_norm():
  llama = ModelConfig.for_family("llama", **_SMALL, qk_norm=True)
  with pytest.raises(UserError, match=r"model\.qk_norm=True cannot be expressed as a Hugging "
                                      r"Face llama model"):
    model_config_to_hf_config(llama)
  with pytest.raises(UserError, match=r"model\.qk_norm=true .* needs model\.norm=rms_norm"):
    ModelConfig.for_family("gpt2", **_SMALL, qk_norm=True)


@pytest.mark.parametrize("config, message", [
    (ModelConfig.for_family("distilbert", **_SMALL, norm_eps=1e-5),
     r"model\.norm_eps=1e-05 cannot be expressed as a Hugging Face distilbert model, which needs "
     r"norm_eps=1e-12"),
    (ModelConfig.for_family("distilbert", **_SMALL, type_vocab_size=2),
     r"model\.type_vocab_size=2 .* needs type_vocab_size=0"),
    (ModelConfig.for_family("distilbert", **_SMALL, head=Head.NONE, pooler=True),
     r"model\.pooler=True .* distilbert model, which needs pooler=False"),
    (ModelConfig.for_family("distilbert", **_SMALL, head=Head.CLASSIFICATION, pooler=True,
                            num_labels=2, pooler_activation=PoolerActivation.TANH),
     r"model\.pooler_activation='tanh' .* distilbert model, which needs pooler_activation='relu'"),
    (ModelConfig.for_family("bert", **_SMALL, head=Head.NONE, pooler=True,
                            pooler_activation=PoolerActivation.RELU),
     r"model\.pooler_activation='relu' .* bert model, which needs pooler_activation='tanh'"),
])
def test_exports_refuse_what_the_hf_class_cannot_compute(config, message):
  with pytest.raises(UserError, match=message):
    model_config_to_hf_config(config)


def test_export_refuses_a_non_empty_destination_and_leaves_no_partial_output(tmp_path):
  model, params = random_lmjax(LMJAX_CASES["gpt2"])
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "notes.txt").write_text("mine")
  with pytest.raises(UserError, match="already exists and is not empty"):
    to_hf(model, params, tmp_path / "taken")
  assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
  with pytest.raises(UserError, match="holds no tokenizer files"):  # fails after writing weights
    to_hf(model, params, tmp_path / "new", tokenizer_dir=tmp_path / "taken")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
  (tmp_path / "empty").mkdir()
  to_hf(model, params, tmp_path / "empty")  # an empty directory is fine
  assert (tmp_path / "empty" / "model.safetensors").is_file()


@pytest.mark.parametrize("tokenizer, message", [
    (b'{"version": "1.0", "model": {"type": "Garbage"}}', "Could not read the tokenizer file"),
    (None, r"makes ids up to \d+, but the model's vocabulary has 97 rows"),  # byte-level: 259
])
def test_an_import_refuses_a_tokenizer_that_does_not_load_or_fit_and_writes_nothing(
    hf_dirs, tmp_path, tokenizer, message):
  from lmjax.convert.runs import hf_to_run
  from lmjax.data.tokenize.tokenizer import Tokenizer
  path, _ = hf_dirs("gpt2_lm")
  copy_config(path, tmp_path / "hf")
  (tmp_path / "hf" / "model.safetensors").symlink_to(path / "model.safetensors")
  if tokenizer is None:
    Tokenizer.byte_level().save(tmp_path / "hf")
  else:
    (tmp_path / "hf" / "tokenizer.json").write_bytes(tokenizer)
  with pytest.raises(UserError, match=message):
    hf_to_run(tmp_path / "hf", tmp_path / "run")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no run, no staging, no lock


def test_tokenizer_files_travel_with_the_weights(tmp_path):
  src = tmp_path / "tok"
  src.mkdir()
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "notes.md"):
    (src / name).write_text(name)
  assert copy_tokenizer_files(src, tmp_path / "copy") == [
      "tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model"]
  model, params = random_lmjax(LMJAX_CASES["llama_tied"])
  to_hf(model, params, tmp_path / "hf", tokenizer_dir=src)
  assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
      "config.json", "generation_config.json", "model.safetensors", "spiece.model",
      "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
  assert (tmp_path / "hf" / "vocab.txt").read_text() == "vocab.txt"


def test_a_peft_adapter_holding_nan_is_refused_by_tensor_name(tmp_path):
  from lmjax.hf.peft_import import read_peft
  (tmp_path / "adapter_config.json").write_text(json.dumps(
      {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}))
  lora_a = np.zeros((2, 48), np.float32)
  lora_a[1, 9] = np.nan
  save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": lora_a,
             "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight":
                 np.zeros((48, 2), np.float32)}, tmp_path / "adapter_model.safetensors")
  with pytest.raises(UserError, match=r"tensor base_model\.model\.model\.layers\.0\.self_attn\."
                                      r"q_proj\.lora_A\.weight in .*adapter_model\.safetensors "
                                      r"holds nan at \[1, 9\]"):
    read_peft(tmp_path, LMJAX_CASES["llama_tied"])
