"""ModernBERT: a pre-norm encoder with bias-free LayerNorms (none before layer 0's attention),
fused q/k/v and gate/up projections, and local (sliding-window, own RoPE base) layers between
global ones, against transformers' ModernBertForMaskedLM, ModernBertModel and
ModernBertForSequenceClassification both ways (logits within 1e-4, bit-exact round trips,
fill-mask), fine-tuned from an MLM checkpoint into a classifier as transformers does, trained
on a sharded mesh (tests/test_sharding.py), and the options it refuses by name.

Every HF model is a tiny random `transformers` model (tests/hf_models.py's helpers); nothing
is downloaded.
"""

import dataclasses
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lmjax  # noqa: E402
from lmjax.cli import main  # noqa: E402
from lmjax.convert import (from_hf, hf_config_to_model_config,  # noqa: E402
                           model_config_to_hf_config, to_hf)
from lmjax.errors import UserError  # noqa: E402
from lmjax.model import Activation, Head, ModelConfig, preset  # noqa: E402
from lmjax.model.config import LoraConfig  # noqa: E402
from lmjax.model.options import ClassifierPooling, Norm, NormPosition  # noqa: E402
from lmjax.model.transformer import param_shapes  # noqa: E402
from tests.hf_models import (assert_exports_and_predicts_as_transformers,  # noqa: E402
                             assert_fill_mask_matches, assert_round_trips_bit_for_bit,
                             assert_same_logits, assert_same_outputs, cached_hf_dirs, copy_config,
                             fine_tune_from_hf, randomise, random_lmjax, read_tensors)

# Odd sizes; every third layer global from layer 0 (global_attn_every_n_layers=3), the others
# seeing keys at most 3 slots away on either side (local_attention=6), shorter than the inputs;
# the global and local RoPE bases apart. Special ids inside the small vocabulary.
_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
_MODERNBERT = dict(hidden_size=36, num_hidden_layers=4, num_attention_heads=6,
                   intermediate_size=38, vocab_size=107, max_position_embeddings=40,
                   global_attn_every_n_layers=3, local_attention=6, global_rope_theta=1000.0,
                   local_rope_theta=50.0, **_IDS)
# Untied; biases on the norms, projections and prediction head, none on the decoder; layer 0
# local (explicit layer_types); SiLU GLU with a tanh-GELU prediction head.
_BIASED = {**_MODERNBERT, "tie_word_embeddings": False, "norm_bias": True,
           "attention_bias": True, "mlp_bias": True, "classifier_bias": True,
           "decoder_bias": False, "hidden_activation": "silu",
           "classifier_activation": "gelu_new",
           "layer_types": ["sliding_attention", "full_attention", "sliding_attention",
                           "sliding_attention"]}

# name -> (HF class, config kwargs)
HF_CASES = {
    "mlm": ("ModernBertForMaskedLM", _MODERNBERT),
    "mlm_biased": ("ModernBertForMaskedLM", _BIASED),
    "base": ("ModernBertModel", _MODERNBERT),
    "classifier": ("ModernBertForSequenceClassification", {**_MODERNBERT, "num_labels": 3}),
    "classifier_mean": ("ModernBertForSequenceClassification",
                        {**_BIASED, "num_labels": 2, "classifier_pooling": "mean"}),
}


def build_hf(name: str, seed: int = 0):
  cls, kwargs = HF_CASES[name]
  return randomise(getattr(transformers, cls)(transformers.ModernBertConfig(**kwargs)), seed)


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


@pytest.mark.parametrize("name, scan_layers", [("mlm", True), ("mlm", False), ("mlm_biased", True),
                                               ("base", False), ("classifier", True),
                                               ("classifier_mean", False)])
def test_converted_modernbert_matches_transformers(hf_dirs, name, scan_layers):
  path, hf_model = hf_dirs(name)
  model, params = from_hf(path, scan_layers=scan_layers)
  assert model.config.scan_layers == scan_layers
  assert_matches(hf_model, model, params)


def test_converted_configs_carry_the_modernbert_options(hf_dirs):
  config = from_hf(hf_dirs("mlm")[0])[0].config
  assert (config.family, config.norm, config.norm_position, config.norm_bias,
          config.embedding_norm, config.first_attention_norm, config.gated_mlp,
          config.activation, config.causal, config.use_bias, config.head_bias,
          config.decoder_bias, config.tie_embeddings) == (
              "modernbert", Norm.LAYER_NORM, NormPosition.PRE, False, True, False, True,
              Activation.GELU, False, False, False, True, True)
  # local_attention=6: keys at most 3 slots away, lmjax's window of 4 (|i - j| < 4)
  assert (config.sliding_window, config.sliding_layers, config.rope_theta,
          config.rope_local_theta, config.layer_windows) == (4, (1, 2), 1000.0, 50.0,
                                                              (None, 4, 4, None))
  biased = from_hf(hf_dirs("mlm_biased")[0])[0].config
  assert (biased.norm_bias, biased.use_bias, biased.qkv_bias, biased.head_bias,
          biased.decoder_bias, biased.head_activation, biased.activation,
          biased.tie_embeddings, biased.sliding_layers) == (
              True, True, True, True, False, Activation.GELU_TANH, Activation.SILU, False,
              (0, 2, 3))
  mean = from_hf(hf_dirs("classifier_mean")[0])[0].config
  assert (mean.head, mean.num_labels, mean.classifier_pooling, mean.classifier_transform,
          mean.pooler, mean.classifier_bias) == (Head.CLASSIFICATION, 2, ClassifierPooling.MEAN,
                                                 True, False, True)


def test_the_window_is_the_one_transformers_masks_with(hf_dirs):
  """One slot narrower or wider than local_attention // 2 on either side changes the logits:
  the parity above checks the window itself."""
  path, hf_model = hf_dirs("mlm")
  model, params = from_hf(path)
  for window in (3, 5):
    narrowed = lmjax.model.Transformer(dataclasses.replace(model.config, sliding_window=window))
    with pytest.raises(AssertionError):
      assert_same_outputs(hf_model, narrowed, params)


def test_a_transformers_v4_config_json_converts_as_transformers_reads_it(hf_dirs, tmp_path):
  """As answerdotai/ModernBERT-base's config.json reads: global_attn_every_n_layers,
  global_rope_theta and local_rope_theta, no layer_types or rope_parameters, and the keys of
  its time that change nothing lmjax computes (transformers ignores them too)."""
  path, hf_model = hf_dirs("mlm")
  config = json.loads((path / "config.json").read_text())
  for key in ("layer_types", "rope_parameters"):
    config.pop(key)
  config.update(global_attn_every_n_layers=3, global_rope_theta=1000.0, local_rope_theta=50.0,
                layer_norm_eps=1e-5, position_embedding_type="absolute",
                reference_compile=True, gradient_checkpointing=False, torch_dtype="float32",
                sparse_prediction=False, deterministic_flash_attn=False)
  tmp_path.mkdir(exist_ok=True)
  (tmp_path / "config.json").write_text(json.dumps(config))
  (tmp_path / "model.safetensors").symlink_to(path / "model.safetensors")
  reread = transformers.ModernBertForMaskedLM.from_pretrained(tmp_path).eval()
  assert reread.config.layer_types == hf_model.config.layer_types
  model, params = from_hf(tmp_path)
  assert model.config == from_hf(path)[0].config
  assert_same_outputs(reread, model, params)


def test_layer_0_has_no_attention_norm_in_the_checkpoint_and_its_slice_is_zero(hf_dirs):
  path, _ = hf_dirs("mlm_biased")
  names = set(read_tensors(path))
  assert "model.layers.0.attn_norm.weight" not in names
  assert {"model.layers.1.attn_norm.weight", "model.layers.1.attn_norm.bias"} <= names
  _, params = from_hf(path)
  norm = params["layers"]["attention_norm"]
  assert not np.asarray(norm["scale"][0]).any() and np.asarray(norm["scale"][1:]).any()
  assert not np.asarray(norm["bias"][0]).any()


def test_the_modernbert_presets_have_the_parameter_counts_of_transformers():
  for name, kwargs in (("modernbert-base", {}),
                       ("modernbert-large", dict(hidden_size=1024, num_hidden_layers=28,
                                                 num_attention_heads=16,
                                                 intermediate_size=2624))):
    with torch.device("meta"):
      hf_model = transformers.ModernBertForMaskedLM(transformers.ModernBertConfig(**kwargs))
    config = preset(name)
    count = sum(int(np.prod(leaf.value.shape)) for leaf in jax.tree.leaves(
        param_shapes(config), is_leaf=lambda x: hasattr(x, "value")))
    # lmjax keeps layer 0's unused attention norm (embed_dim scales) in the stacked tree
    assert count - config.embed_dim == sum(p.numel() for p in hf_model.parameters())
    hf_config = transformers.ModernBertConfig(**kwargs)
    assert config.layer_windows == tuple(
        None if kind == "full_attention" else hf_config.sliding_window + 1
        for kind in hf_config.layer_types)


# -- round trips and exports -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(HF_CASES))
def test_hf_to_lmjax_to_hf_reproduces_every_tensor_bit_for_bit(hf_dirs, tmp_path, name):
  exported = assert_round_trips_bit_for_bit(hf_dirs(name)[0], tmp_path / "out",
                                            scan_layers=name != "base")
  assert exported["model_type"] == "modernbert"


_SMALL = dict(vocab_size=107, num_layers=3, embed_dim=36, num_heads=6, mlp_dim=40, max_seq_len=32)
LMJAX_CASES = {
    "mlm": ModelConfig.for_family("modernbert", **_SMALL, sliding_window=3, sliding_layers=(1, 2),
                                  rope_theta=2000.0, rope_local_theta=30.0),
    # Local layers with the global RoPE, layer 0 among them; untied, biased, its own head
    # activation, no decoder bias, unrolled.
    "mlm_biased": ModelConfig.for_family(
        "modernbert", **_SMALL, sliding_window=4, sliding_layers=(0, 2), tie_embeddings=False,
        norm_bias=True, use_bias=True, qkv_bias=True, head_bias=True, decoder_bias=False,
        head_activation=Activation.GELU_TANH, scan_layers=False),
    "base_global": ModelConfig.for_family("modernbert", **_SMALL, head=Head.NONE),
    "classifier_mean": ModelConfig.for_family(
        "modernbert", **_SMALL, sliding_window=2, sliding_layers=(1, 2), rope_local_theta=20.0,
        head=Head.CLASSIFICATION, num_labels=4, classifier_pooling=ClassifierPooling.MEAN),
}
_AUTO = {Head.MASKED_LM: "AutoModelForMaskedLM", Head.NONE: "AutoModel",
         Head.CLASSIFICATION: "AutoModelForSequenceClassification"}
_CLASSES = {Head.MASKED_LM: "ModernBertForMaskedLM", Head.NONE: "ModernBertModel",
            Head.CLASSIFICATION: "ModernBertForSequenceClassification"}


def _without_layer0_attention_norm(config, params):
  """`params` with layer 0's unused attention norm zeroed (HF has no such tensor)."""
  params = jax.tree.map(np.array, params)
  norm = (params["layers"]["attention_norm"] if config.scan_layers
          else params["layers_0"]["attention_norm"])
  for key in norm:
    if config.scan_layers:
      norm[key][0] = 0
    else:
      norm[key][...] = 0
  return params


@pytest.mark.parametrize("name", list(LMJAX_CASES))
def test_exported_modernbert_loads_with_auto_classes_and_matches(tmp_path, name):
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
  jax.tree.map(np.testing.assert_array_equal, params2,
               _without_layer0_attention_norm(config, params))


def test_exports_write_the_layer_kinds_in_v5_and_v4_keys():
  hf = model_config_to_hf_config(preset("modernbert-base"))
  assert (hf["local_attention"], hf["global_attn_every_n_layers"], hf["global_rope_theta"],
          hf["local_rope_theta"]) == (128, 3, 160_000.0, 10_000.0)
  assert hf["rope_parameters"] == {
      "full_attention": {"rope_type": "default", "rope_theta": 160_000.0},
      "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}
  assert hf["layer_types"] == transformers.ModernBertConfig().layer_types
  # Layer 0 local: no global_attn_every_n_layers spelling, layer_types alone.
  assert "global_attn_every_n_layers" not in model_config_to_hf_config(LMJAX_CASES["mlm_biased"])
  # No window: every layer global, in v4's keys too.
  assert model_config_to_hf_config(LMJAX_CASES["base_global"])["global_attn_every_n_layers"] == 1
  for config in LMJAX_CASES.values():
    assert hf_config_to_model_config(model_config_to_hf_config(config),
                                     scan_layers=config.scan_layers) == config


# -- inference and fine-tuning ---------------------------------------------------------------------


def test_fill_mask_matches_transformers_top_k(hf_dirs):
  path, hf_model = hf_dirs("mlm")
  # masks farther apart than the window
  assert_fill_mask_matches(hf_model, path, [1, 11, 57, 4, 23, 8, 61, 9, 4, 3, 2], mask_id=4)


def test_a_modernbert_mlm_fine_tunes_into_a_classifier_keeping_its_head_as_transformers(
    tmp_path, labelled, capsys):
  """ModernBertForSequenceClassification.from_pretrained(an MLM checkpoint) keeps the trained
  prediction head (`head.dense`, `head.norm`) and draws the classifier: so does lmjax. The
  fine-tuned run exports, and predicts as transformers' pipeline does."""
  hf_model = randomise(transformers.ModernBertForMaskedLM(transformers.ModernBertConfig(
      **{**_MODERNBERT, "vocab_size": 288, "max_position_embeddings": 64})))
  hf_model.save_pretrained(tmp_path / "hf")
  lmjax.data.Tokenizer.byte_level().save(tmp_path / "hf")
  hf_classifier, info = transformers.ModernBertForSequenceClassification.from_pretrained(
      tmp_path / "hf", num_labels=2, output_loading_info=True)
  hf_new = sorted(info["missing_keys"])
  capsys.readouterr()
  fine_tune_from_hf(tmp_path, labelled, "tiny-modernbert")
  err = capsys.readouterr().err
  assert hf_new == ["classifier.bias", "classifier.weight"]
  assert "new (randomly initialised): classifier/bias, classifier/kernel;" in err
  assert "not used: output_bias" in err  # the MLM decoder's bias, as transformers drops it
  config = lmjax.run.RunDir(tmp_path / "run").require_config().model
  assert (config.family, config.classifier_transform, config.embed_dim,
          config.sliding_layers) == ("modernbert", True, 36, (1, 2))
  assert_exports_and_predicts_as_transformers(tmp_path, capsys,
                                              "ModernBertForSequenceClassification")


def test_the_cli_imports_verifies_and_exports_a_modernbert_one_param_at_a_time(hf_dirs, tmp_path,
                                                                              capsys):
  path, _ = hf_dirs("mlm_biased")
  run_dir, exported = tmp_path / "run", tmp_path / "exported"
  assert main(["convert", "hf-to-lmjax", str(path), str(run_dir)]) == 0
  assert "modernbert" in capsys.readouterr().out
  assert main(["convert", "verify", str(path), str(run_dir)]) == 0
  assert "top-1 agree:  100.00%" in capsys.readouterr().out
  assert main(["convert", "lmjax-to-hf", str(run_dir), str(exported)]) == 0
  assert read_tensors(exported) == read_tensors(path)
  assert main(["convert", "verify", str(exported), str(run_dir)]) == 0


def test_fill_mask_answers_with_a_trained_tiny_modernbert(tmp_path, capsys, tiny):
  assert main(["train", "tiny-bert", "--run-dir", str(tmp_path), "--set", *tiny,
               "model.preset=tiny-modernbert", "model.sliding_layers=[1]",
               "model.sliding_window=5", "train.steps=10"]) == 0
  capsys.readouterr()
  assert main(["fill-mask", "--run-dir", str(tmp_path), "--text", "The [MASK] statement",
               "--top-k", "3"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("mask 1:") and len(out.strip().splitlines()) == 4


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"rope_parameters": {"full_attention": {"rope_type": "linear", "rope_theta": 1e3,
                                             "factor": 2.0},
                          "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}}},
     r"RoPE type 'linear' of the full_attention layers is not supported for modernbert"),
    ({"attention_bias": True}, r"attention_bias=True with mlp_bias=False is not supported"),
    ({"classifier_pooling": "max", "architectures": ["ModernBertForSequenceClassification"]},
     r"classifier_pooling='max' is not supported; lmjax converts cls, mean"),
    ({"layer_types": None, "global_attn_every_n_layers": 0},
     r"global_attn_every_n_layers=0 must be a positive integer"),
    ({"local_attention": -2}, r"local_attention=-2 must be a non-negative integer"),
    ({"classifier_activation": "quick_gelu"}, r"classifier_activation='quick_gelu' has no exact"),
    ({"architectures": ["ModernBertForTokenClassification"]},
     r"ModernBertForTokenClassification.*ModernBertForMaskedLM"),
])
def test_unsupported_modernbert_configs_are_refused_by_name(hf_dirs, tmp_path, changes, message):
  path, _ = hf_dirs("mlm")
  copy_config(path, tmp_path, **changes)
  (tmp_path / "model.safetensors").symlink_to(path / "model.safetensors")
  with pytest.raises(UserError, match=message):
    from_hf(tmp_path)


_BERT = dict(vocab_size=107, num_layers=2, embed_dim=36, num_heads=6, mlp_dim=80, max_seq_len=32)


@pytest.mark.parametrize("config, message", [
    (ModelConfig.for_family("modernbert", **_SMALL, num_kv_heads=3),
     r"modernbert model has as many key/value heads as query heads"),
    (ModelConfig.for_family("modernbert", **_SMALL, first_attention_norm=True),
     r"model\.first_attention_norm=True cannot be expressed as a Hugging Face modernbert model"),
    (ModelConfig.for_family("modernbert", **_SMALL, use_bias=True),
     r"model\.qkv_bias=False .* modernbert model, which needs qkv_bias=True"),
    (ModelConfig.for_family("bert", **_BERT, norm_bias=False),
     r"model\.norm_bias=False cannot be expressed as a Hugging Face bert model"),
    (ModelConfig.for_family("bert", **_BERT, head=Head.CLASSIFICATION, num_labels=2,
                            classifier_pooling=ClassifierPooling.MEAN),
     r"model\.classifier_pooling='mean' .* bert model, which needs classifier_pooling='token'"),
    (ModelConfig.for_family("llama", **_BERT, embedding_norm=True),
     r"model\.embedding_norm=True .* llama model"),
])
def test_exports_refuse_what_modernbert_options_cannot_express(config, message):
  with pytest.raises(UserError, match=message):
    model_config_to_hf_config(config)


@pytest.mark.parametrize("fields, message", [
    (dict(family="llama", norm_bias=False), r"model\.norm_bias=false drops LayerNorm's bias"),
    (dict(family="bert", first_attention_norm=False),
     r"model\.first_attention_norm=false .* needs model\.norm_position=pre"),
    (dict(family="bert", head=Head.CLASSIFICATION, num_labels=2, pooler=True,
          classifier_pooling=ClassifierPooling.MEAN),
     r"model\.pooler=true reads the first token through the pooler"),
])
def test_inconsistent_modernbert_options_are_refused_by_name(fields, message):
  family = fields.pop("family")
  with pytest.raises(UserError, match=message):
    ModelConfig.for_family(family, **_BERT, **fields)


# -- LoRA --------------------------------------------------------------------------------------------


def test_modernbert_target_names_select_its_projections():
  config = ModelConfig.for_family("modernbert", **_SMALL, lora=LoraConfig(rank=2, targets=(
      "Wqkv", "Wo")))
  params = nn.unbox(param_shapes(config))
  found = {name for part in params["layers"].values() for name, p in part.items()
           if isinstance(p, dict) and "lora_a" in p}
  assert found == {"query", "key", "value", "out", "wo"}  # Wo: the attention's and the MLP's
  gated = ModelConfig.for_family("modernbert", **_SMALL, lora=LoraConfig(rank=2, targets=("Wi",)))
  assert {name for name, p in nn.unbox(param_shapes(gated))["layers"]["mlp"].items()
          if "lora_a" in p} == {"wi_gate", "wi_up"}


def test_a_lora_modernbert_exports_merged_with_its_logits_in_transformers(tmp_path):
  """The adapters of the fused projections fold into Wqkv's and Wi's rows as their kernels do."""
  config = ModelConfig.for_family("modernbert", **_SMALL, sliding_window=3, sliding_layers=(1, 2),
                                  lora=LoraConfig(rank=3, alpha=6.0))
  model, params = random_lmjax(config)  # B non-zero: the adapters change the function
  to_hf(model, params, tmp_path / "merged", config_overrides={"pad_token_id": 0})
  hf_model = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "merged").eval()
  assert_same_outputs(hf_model, model, params)
  base = jax.tree_util.tree_map_with_path(
      lambda path, x: np.zeros_like(x) if path[-1].key == "lora_b" else x, params)
  base_logits = model.apply({"params": base}, np.arange(8, dtype=np.int32)[None])
  assert np.abs(model.apply({"params": params}, np.arange(8, dtype=np.int32)[None])
                - base_logits).max() > 1e-3
