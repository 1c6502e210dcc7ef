"""Tiny random Hugging Face / lmjax model pairs and the checks that compare them, shared by the
conversion, classification, generation and family tests.

Every HF model here is a tiny random `transformers` model (odd sizes, all weights and biases
randomised), saved with `save_pretrained`; nothing is downloaded. Tolerances are the project's
policy (1e-4, atol and rtol, float32) and are never loosened.
"""

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lmjax.cli import main  # noqa: E402
from lmjax.convert import from_hf, to_hf  # noqa: E402
from lmjax.infer import fill_mask  # noqa: E402
from lmjax.model import Activation, Head, ModelConfig, RopeScaling, Transformer  # noqa: E402
from lmjax.model.moe_config import MoeConfig  # noqa: E402
from tests.helpers import rows  # noqa: E402

TOL = dict(atol=1e-4, rtol=1e-4)

_GPT2 = dict(n_embd=48, n_layer=2, n_head=6, n_inner=80, vocab_size=97, n_positions=32)
_BERT = dict(hidden_size=36, num_hidden_layers=2, num_attention_heads=6, intermediate_size=80,
             vocab_size=101, max_position_embeddings=32)
_DISTILBERT = dict(dim=42, n_layers=2, n_heads=6, hidden_dim=74, vocab_size=109,
                   max_position_embeddings=30)
_LLAMA = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
              intermediate_size=80, vocab_size=113, max_position_embeddings=64)
# Gemma 2 at odd sizes: grouped heads of a size apart from the width, a window shorter than the
# inputs on the even layers (Gemma2Config's default layer_types), a query scale apart from the
# head size and soft-caps small enough to bind. Narrow and deep enough that the tied, scaled
# embedding does not dominate the residual stream (greedy text would repeat the last token).
_GEMMA2 = dict(hidden_size=24, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
               head_dim=10, intermediate_size=74, vocab_size=113, max_position_embeddings=64,
               sliding_window=4, query_pre_attn_scalar=7, attn_logit_softcapping=5.0,
               final_logit_softcapping=3.0)
_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 5000.0, "factor": 4.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16}

# name -> (HF model class, config class, config kwargs, extra constructor kwargs, Auto class)
HF_CASES = {
    "gpt2_lm": ("GPT2LMHeadModel", "GPT2Config", _GPT2, {}, "AutoModelForCausalLM"),
    "gpt2_base": ("GPT2Model", "GPT2Config", _GPT2, {}, "AutoModel"),
    "bert_mlm": ("BertForMaskedLM", "BertConfig", _BERT, {}, "AutoModelForMaskedLM"),
    "bert_base": ("BertModel", "BertConfig", _BERT, {}, "AutoModel"),
    # As sentence-embedding models are saved: no `bert.` prefix, no pooler.
    "bert_no_pooler": ("BertModel", "BertConfig", _BERT, {"add_pooling_layer": False},
                       "AutoModel"),
    "roberta_mlm": ("RobertaForMaskedLM", "RobertaConfig",
                    {**_BERT, "vocab_size": 103, "max_position_embeddings": 34,
                     "type_vocab_size": 1, "layer_norm_eps": 1e-5}, {}, "AutoModelForMaskedLM"),
    # RoBERTa's LM head applies exact GELU whatever hidden_act: model.head_activation.
    "roberta_mlm_silu": ("RobertaForMaskedLM", "RobertaConfig",
                         {**_BERT, "vocab_size": 103, "max_position_embeddings": 34,
                          "type_vocab_size": 1, "hidden_act": "silu"}, {},
                         "AutoModelForMaskedLM"),
    "distilbert_mlm": ("DistilBertForMaskedLM", "DistilBertConfig", _DISTILBERT, {},
                       "AutoModelForMaskedLM"),
    "distilbert_untied": ("DistilBertForMaskedLM", "DistilBertConfig",
                          {**_DISTILBERT, "tie_word_embeddings": False, "activation": "gelu_new"},
                          {}, "AutoModelForMaskedLM"),
    # The flag only sets HF's initial position table: the checkpoint's (random) table converts.
    "distilbert_base": ("DistilBertModel", "DistilBertConfig",
                        {**_DISTILBERT, "sinusoidal_pos_embds": True}, {}, "AutoModel"),
    "llama": ("LlamaForCausalLM", "LlamaConfig", {**_LLAMA, "rope_parameters": _LLAMA3_ROPE}, {},
              "AutoModelForCausalLM"),
    "llama_tied": ("LlamaForCausalLM", "LlamaConfig",
                   {**_LLAMA, "tie_word_embeddings": True, "rope_theta": 500000.0}, {},
                   "AutoModelForCausalLM"),
    "mistral": ("MistralForCausalLM", "MistralConfig", {**_LLAMA, "sliding_window": None}, {},
                "AutoModelForCausalLM"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config",
              {**_LLAMA, "hidden_size": 36, "num_key_value_heads": 2}, {}, "AutoModelForCausalLM"),
    # Qwen3: QK-norm, and head_dim apart from the width (40 / 6 heads is not even whole).
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config",
              {**_LLAMA, "hidden_size": 40, "num_key_value_heads": 2, "head_dim": 10,
               "intermediate_size": 74, "rope_parameters": {"rope_type": "default",
                                                            "rope_theta": 1e6}},
              {}, "AutoModelForCausalLM"),
    "qwen3_tied": ("Qwen3ForCausalLM", "Qwen3Config",
                   {**_LLAMA, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
                    "tie_word_embeddings": True}, {}, "AutoModelForCausalLM"),
    # Sliding windows shorter than the inputs: every layer (Mistral), the layers from
    # max_window_layers on (Qwen2), the layers layer_types names (Qwen3).
    "mistral_window": ("MistralForCausalLM", "MistralConfig", {**_LLAMA, "sliding_window": 5}, {},
                       "AutoModelForCausalLM"),
    "qwen2_window": ("Qwen2ForCausalLM", "Qwen2Config",
                     {**_LLAMA, "hidden_size": 36, "num_key_value_heads": 2,
                      "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1},
                     {}, "AutoModelForCausalLM"),
    "qwen3_window": ("Qwen3ForCausalLM", "Qwen3Config",
                     {**_LLAMA, "num_key_value_heads": 2, "head_dim": 10,
                      "use_sliding_window": True, "sliding_window": 3,
                      "layer_types": ["sliding_attention", "full_attention"]},
                     {}, "AutoModelForCausalLM"),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", _GEMMA2, {}, "AutoModelForCausalLM"),
    # Untied, without soft-caps, the query scale the head size, explicit layer types, SiLU.
    "gemma2_untied": ("Gemma2ForCausalLM", "Gemma2Config",
                      {**_GEMMA2, "hidden_size": 48, "num_hidden_layers": 2,
                       "num_key_value_heads": 4, "eos_token_id": 2,
                       "tie_word_embeddings": False, "query_pre_attn_scalar": 10,
                       "attn_logit_softcapping": None, "final_logit_softcapping": None,
                       "layer_types": ["full_attention", "sliding_attention"],
                       "hidden_activation": "silu", "rope_parameters": {
                           "rope_type": "default", "rope_theta": 500.0}},
                      {}, "AutoModelForCausalLM"),
    "gemma2_base": ("Gemma2Model", "Gemma2Config", _GEMMA2, {}, "AutoModel"),
    # Mixture of Experts: 5 experts, 2 per token, renormalised (Mixtral); tied with a window;
    # 6 experts of their own width, 3 per token, not renormalised (Qwen3-MoE's class default).
    # Expert widths are multiples of 4: torch's CPU grouped matmul needs 16-byte strides.
    "mixtral": ("MixtralForCausalLM", "MixtralConfig",
                {**_LLAMA, "num_local_experts": 5, "num_experts_per_tok": 2}, {},
                "AutoModelForCausalLM"),
    "mixtral_tied_window": ("MixtralForCausalLM", "MixtralConfig",
                            {**_LLAMA, "num_local_experts": 3, "num_experts_per_tok": 2,
                             "tie_word_embeddings": True, "sliding_window": 5}, {},
                            "AutoModelForCausalLM"),
    "qwen3_moe": ("Qwen3MoeForCausalLM", "Qwen3MoeConfig",
                  {**_LLAMA, "hidden_size": 40, "num_key_value_heads": 2, "head_dim": 10,
                   "num_experts": 6, "num_experts_per_tok": 3, "moe_intermediate_size": 24},
                  {}, "AutoModelForCausalLM"),
}


def randomise(model, seed: int = 0):
  """Every weight, bias and norm of `model` random, large enough that greedy text varies."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.3) if p.dim() > 1 else p.uniform_(-0.5, 0.5)
  return model.eval()


def build_hf(name: str, seed: int = 0):
  cls, config_cls, kwargs, extra, _ = HF_CASES[name]
  config = getattr(transformers, config_cls)(**kwargs)
  return randomise(getattr(transformers, cls)(config, **extra), seed)


def cached_hf_dirs(tmp_path_factory, build):
  """name -> (saved directory, the torch model `build(name)` makes), each built on first use."""
  cache = {}

  def get(name: str):
    if name not in cache:
      model = build(name)
      path = tmp_path_factory.mktemp(name)
      model.save_pretrained(path)
      cache[name] = (path, model)
    return cache[name]
  return get


def sample_inputs(vocab_size: int, pad_id: int):
  """ids [2, 11] (ids >= 3, clear of special ids) and a mask with row 1 right-padded."""
  rng = np.random.default_rng(0)
  ids = rng.integers(3, vocab_size, (2, 11)).astype(np.int64)
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  ids[1, 7:] = pad_id
  return ids, mask


def hf_forward(model, ids, mask):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  main = out.logits if hasattr(out, "logits") else out.last_hidden_state
  pooled = getattr(out, "pooler_output", None)
  return main.numpy(), None if pooled is None else pooled.numpy()


def lmjax_forward(model, params, ids, mask):
  apply = jax.jit(lambda p, i, m: model.apply({"params": p}, i, attention_mask=m,
                                              mutable=["intermediates"]))
  out, state = apply(params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
  pooled = state.get("intermediates", {}).get("pooled")
  return np.asarray(out), None if pooled is None else np.asarray(pooled[0])


def assert_same_outputs(hf_model, model, params):
  pad_id = hf_model.config.pad_token_id or 0
  ids, mask = sample_inputs(hf_model.config.vocab_size, pad_id)
  expected, expected_pooled = hf_forward(hf_model, ids, mask)
  got, got_pooled = lmjax_forward(model, params, ids, mask)
  real = mask.astype(bool)  # padded positions compute different garbage in each library
  np.testing.assert_allclose(got[real], expected[real], **TOL)
  assert (got_pooled is None) == (expected_pooled is None)
  if expected_pooled is not None:
    np.testing.assert_allclose(got_pooled[0], expected_pooled[0], **TOL)  # row 0: unpadded


def read_tensors(directory: pathlib.Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
  """name -> (dtype, shape, raw bytes) over every safetensors file of a directory."""
  tensors = {}
  for path in sorted(directory.glob("*.safetensors")):
    with safe_open(path, framework="numpy") as f:
      for name in f.keys():
        array = f.get_tensor(name)
        tensors[name] = (str(array.dtype), tuple(array.shape), array.tobytes())
  return tensors


def assert_round_trips_bit_for_bit(path: pathlib.Path, out: pathlib.Path, *,
                                   scan_layers: bool = True) -> dict:
  """HF directory `path` -> lmjax -> HF `out`: every tensor bit for bit, the same architectures
  and model_type, and the same lmjax config read back. Returns the exported config.json."""
  model, params = from_hf(path, scan_layers=scan_layers)
  to_hf(model, params, out)
  assert read_tensors(out) == read_tensors(path)
  original = json.loads((path / "config.json").read_text())
  exported = json.loads((out / "config.json").read_text())
  assert exported["architectures"] == original["architectures"]
  assert exported["model_type"] == original["model_type"]
  assert from_hf(out, scan_layers=scan_layers)[0].config == model.config
  return exported


# -- lmjax models -------------------------------------------------------------------------------

_SMALL = dict(vocab_size=107, num_layers=2, embed_dim=36, num_heads=6, mlp_dim=80, max_seq_len=32)
LMJAX_CASES = {
    "gpt2": ModelConfig.for_family("gpt2", **_SMALL),
    "gpt2_base": ModelConfig.for_family("gpt2", **_SMALL, head=Head.NONE, scan_layers=False),
    "bert_mlm": ModelConfig.for_family("bert", **_SMALL),
    "bert_base": ModelConfig.for_family("bert", **_SMALL, head=Head.NONE, pooler=True),
    "roberta_mlm": ModelConfig.for_family("bert", **_SMALL, position_offset=2, type_vocab_size=1,
                                          norm_eps=1e-5),
    "roberta_relu": ModelConfig.for_family("bert", **_SMALL, position_offset=2, type_vocab_size=1,
                                           activation=Activation.RELU,
                                           head_activation=Activation.GELU),
    "distilbert_mlm": ModelConfig.for_family("distilbert", **_SMALL),
    "distilbert_untied": ModelConfig.for_family("distilbert", **_SMALL, tie_embeddings=False,
                                                activation=Activation.RELU, scan_layers=False),
    "distilbert_base": ModelConfig.for_family("distilbert", **_SMALL, head=Head.NONE),
    "llama": ModelConfig.for_family("llama", **_SMALL, num_kv_heads=3, rope_theta=5000.0,
                                    rope_scaling=RopeScaling.LLAMA3, rope_scaling_factor=4.0,
                                    rope_original_max_len=16),
    "llama_tied": ModelConfig.for_family("llama", **_SMALL, num_kv_heads=2, tie_embeddings=True,
                                         scan_layers=False),
    "mistral": ModelConfig.for_family("mistral", **_SMALL, num_kv_heads=3),
    "qwen2": ModelConfig.for_family("llama", **_SMALL, num_kv_heads=2, qkv_bias=True,
                                    use_bias=False),
    "qwen3": ModelConfig.for_family("qwen3", **_SMALL, num_kv_heads=2, head_dim=10),
    "qwen3_tied": ModelConfig.for_family("qwen3", **_SMALL, num_kv_heads=3, head_dim=4,
                                         tie_embeddings=True, scan_layers=False),
    "mistral_window": ModelConfig.for_family("mistral", **_SMALL, num_kv_heads=3,
                                             sliding_window=4),
    "qwen2_window": ModelConfig.for_family("llama", **_SMALL, num_kv_heads=2, qkv_bias=True,
                                           use_bias=False, sliding_window=3, sliding_layers=(1,)),
    "qwen3_window": ModelConfig.for_family("qwen3", **_SMALL, num_kv_heads=2, head_dim=10,
                                           sliding_window=3, sliding_layers=(0,),
                                           scan_layers=False),
    "gemma2": ModelConfig.for_family("gemma2", **_SMALL, num_kv_heads=2, head_dim=8,
                                     sliding_window=3, sliding_layers=(0,),
                                     query_pre_attn_scalar=5.0, attn_logit_softcap=4.0,
                                     final_logit_softcap=2.5),
    "mixtral": ModelConfig.for_family("mixtral", **_SMALL, num_kv_heads=3,
                                      moe=MoeConfig(num_experts=3, experts_per_token=2)),
    "qwen3_moe": ModelConfig.for_family("qwen3_moe", **_SMALL, num_kv_heads=2, head_dim=10,
                                        tie_embeddings=True, scan_layers=False,
                                        moe=MoeConfig(num_experts=4, experts_per_token=3,
                                                      mlp_dim=28, normalize_weights=False)),
    "gemma2_global": ModelConfig.for_family("gemma2", **_SMALL, num_kv_heads=6,
                                            attn_logit_softcap=None,
                                            final_logit_softcap=None, tie_embeddings=False,
                                            scan_layers=False),
}


def random_lmjax(config: ModelConfig, seed: int = 0):
  """A model whose every param (biases and norms too) is random; shapes from an abstract init."""
  model = Transformer(config)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_map_with_path(  # norm scales around 1, everything else around 0
      lambda path, s: (rng.normal(0, 0.3, s.shape) + (path[-1].key == "scale")).astype(np.float32),
      nn.unbox(shapes))
  return model, params


def assert_fill_mask_matches(hf_model, path, ids, mask_id: int) -> None:
  """lmjax's fill-mask top 5 of the HF directory `path` at each `mask_id` of `ids` are those of
  `hf_model`'s softmax, ids and probabilities."""
  model, params = from_hf(path)
  with torch.no_grad():
    logits = hf_model(input_ids=torch.tensor([ids])).logits[0]
  expected = torch.softmax(logits, dim=-1).topk(5)
  got = fill_mask(model, params, ids, mask_id=mask_id, top_k=5)
  positions = [i for i, token in enumerate(ids) if token == mask_id]
  assert len(got) == len(positions) > 1
  for candidates, position in zip(got, positions):
    assert [i for i, _ in candidates] == expected.indices[position].tolist()
    np.testing.assert_allclose([p for _, p in candidates], expected.values[position].numpy(),
                               atol=1e-5, rtol=1e-5)


def copy_config(src: pathlib.Path, dst: pathlib.Path, **changes) -> dict:
  config = {**json.loads((src / "config.json").read_text()), **changes}
  dst.mkdir(exist_ok=True)
  (dst / "config.json").write_text(json.dumps(config))
  return config


# -- sequence classifiers --------------------------------------------------------------------------


def padded_inputs(vocab_size: int, pad_id: int):
  """ids [3, 9] clear of special ids, rows 1 and 2 right-padded (the pad id only there)."""
  ids = np.random.default_rng(0).integers(3, vocab_size, (3, 9)).astype(np.int64)
  mask = np.ones_like(ids)
  mask[1, 6:] = mask[2, 3:] = 0
  return np.where(mask == 1, ids, pad_id), mask


def assert_same_logits(hf_model, model, params):
  ids, mask = padded_inputs(hf_model.config.vocab_size, hf_model.config.pad_token_id or 0)
  with torch.no_grad():
    expected = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
  got = model.apply({"params": params}, jnp.asarray(ids, jnp.int32),
                    attention_mask=jnp.asarray(mask, jnp.int32))
  assert got.shape == expected.shape == (3, model.config.num_labels)
  np.testing.assert_allclose(np.asarray(got), expected.numpy(), **TOL)


def fine_tune_from_hf(tmp_path, labelled, preset: str) -> None:
  """Six steps of a `preset` classifier (sizes from tmp_path/hf) from the HF directory
  tmp_path/hf, into tmp_path/run, with its losses checked finite."""
  assert main(["train", "tiny-bert", "--run-dir", str(tmp_path / "run"), "--set",
               f"model.preset={preset}", f"model.init_from={tmp_path / 'hf'}",
               "model.head=classification", f"data.tokenizer={tmp_path / 'hf'}",
               "data.source=jsonl", f"data.paths=[{labelled}]", "data.eval_fraction=0.2",
               "train.seq_len=32", "train.batch_size=8", "train.steps=6", "train.log_every=1",
               "train.eval_every=6", "train.learning_rate=1e-3"]) == 0
  losses = [r["loss"] for r in rows(tmp_path / "run") if "loss" in r]
  assert len(losses) == 6 and all(np.isfinite(losses))


def assert_exports_and_predicts_as_transformers(tmp_path, capsys, architecture: str) -> None:
  """tmp_path/run exports as `architecture` with its label names, and `lmjax predict --hf`
  on the export agrees with transformers' text-classification pipeline."""
  assert main(["convert", "lmjax-to-hf", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
  hf_config = json.loads((tmp_path / "out" / "config.json").read_text())
  assert hf_config["architectures"] == [architecture]
  assert hf_config["id2label"] == {"0": "docstring", "1": "reference"}
  pipe = transformers.pipeline("text-classification", model=str(tmp_path / "out"))
  texts = ["Return a new list of the items.", "An expression statement evaluates the list."]
  capsys.readouterr()
  assert main(["predict", "--hf", str(tmp_path / "out"), *sum((["--text", t] for t in texts), [])
               ]) == 0
  ours = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert len(ours) == len(texts)
  for theirs, mine in zip(pipe(texts), ours):
    assert theirs["label"] == mine["label"]
    assert theirs["score"] == pytest.approx(mine["score"], abs=1e-5)


# -- greedy decoding against transformers' `generate` ---------------------------------------------

NEW = 12
PAD = 3


def with_unit_norm_gains(hf_model, seed: int = 0):
  """`hf_model` with its norms' gains drawn from [0.8, 1.2] instead of randomise's [-0.5, 0.5]:
  gains near zero squash the final hidden state, and greedy decoding then repeats one or two
  tokens (GPT-2's batch holds 3 distinct ids), which would make the parity comparisons weak."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for module in hf_model.modules():
      if isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
        module.weight.uniform_(0.8, 1.2)
  return hf_model


def hf_greedy(hf_model, prompts, eos=(), **kwargs) -> list[list[int]]:
  """transformers' greedy continuations of `prompts`, left-padded in one batch, each cut after
  its first id of `eos` (HF pads the rows that ended)."""
  length = max(map(len, prompts))
  ids = torch.tensor([[PAD] * (length - len(p)) + p for p in prompts])
  mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])
  with torch.no_grad():
    out = hf_model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                            pad_token_id=PAD, eos_token_id=list(eos) or None, **kwargs)
  rows = []
  for row in out[:, length:].tolist():
    ends = [i for i, t in enumerate(row) if t in eos]
    rows.append(row[:ends[0] + 1] if ends else row)
  return rows


def hf_causal_logits(directory, ids, adapter=None):
  """The logits for `ids` of the HF model saved in `directory`; with a PEFT `adapter`, those
  without it and with it (loaded onto the same model once its own logits are taken)."""
  import torch
  import transformers
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
  with torch.no_grad():
    plain = model.eval()(torch.tensor(ids)).logits.numpy()
    if adapter is None:
      return plain
    import peft
    adapted = peft.PeftModel.from_pretrained(model, str(adapter))
    return plain, adapted.eval()(torch.tensor(ids)).logits.numpy()
