"""A Hugging Face config.json survives HF -> lmjax -> HF field for field, by the Python API and
by the command line, for every family and head: special-token ids, label names, dropout rates,
generation defaults and every other field a ModelConfig does not hold."""

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lmjax  # noqa: E402
from lmjax.cli import main  # noqa: E402
from lmjax.run.source_fields import HF_CONFIG_COPY, keep_source_config  # noqa: E402
from lmjax.hf.config import hf_config_to_model_config, model_config_to_hf_config  # noqa: E402
from lmjax.hf.source_config import merge_source_config  # noqa: E402
from lmjax.hf.family import model_types  # noqa: E402
from lmjax.infer import classify  # noqa: E402

# Fields allowed to differ after a round trip, each for a reason. None today: an unchanged
# model is written back in its source's words (lmjax.hf.source_config).
ALLOWED_DIFFERENCES: frozenset = frozenset()

_DECODER = dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=40, vocab_size=61, max_position_embeddings=64)
CONFIGS = {
    "gpt2": dict(n_embd=24, n_layer=2, n_head=4, n_inner=40, vocab_size=61, n_positions=32,
                 resid_pdrop=0.11, embd_pdrop=0.07, attn_pdrop=0.05, summary_first_dropout=0.2),
    "bert": dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=40, vocab_size=61, max_position_embeddings=32,
                 hidden_dropout_prob=0.12, attention_probs_dropout_prob=0.06,
                 classifier_dropout=0.3),
    "roberta": dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=40, vocab_size=61, max_position_embeddings=34,
                    type_vocab_size=1, layer_norm_eps=1e-5, hidden_dropout_prob=0.12),
    "distilbert": dict(dim=24, n_layers=2, n_heads=4, hidden_dim=40, vocab_size=61,
                       max_position_embeddings=30, dropout=0.1, attention_dropout=0.05,
                       seq_classif_dropout=0.2),
    "llama": {**_DECODER, "attention_dropout": 0.05, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 5000.0, "factor": 4.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}},
    "mistral": {**_DECODER, "sliding_window": 5},
    "qwen2": {**_DECODER, "use_sliding_window": True, "sliding_window": 4,
              "max_window_layers": 1},
    "qwen3": {**_DECODER, "head_dim": 10, "use_sliding_window": True, "sliding_window": 3,
              "layer_types": ["sliding_attention", "full_attention"]},
    "gemma2": {**_DECODER, "head_dim": 8, "sliding_window": 4, "query_pre_attn_scalar": 7},
    "gemma3_text": {**_DECODER, "head_dim": 8, "sliding_window": 4},
    "mixtral": {**_DECODER, "num_local_experts": 3, "num_experts_per_tok": 2,
                "router_aux_loss_coef": 0.03},
    "qwen3_moe": {**_DECODER, "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 16},
    "modernbert": dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=40, vocab_size=61, max_position_embeddings=64,
                       local_attention=4, embedding_dropout=0.1, mlp_dropout=0.05),
}
CASES = [(name, arch) for name, model_type in model_types().items()
         for arch in model_type.architectures]


def hf_config(model_type: str, arch: str):
  config = transformers.AutoConfig.for_model(model_type, **CONFIGS[model_type])
  config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, 1, 2
  if model_type in ("bert", "modernbert"):
    config.cls_token_id, config.sep_token_id = 3, 4
  if model_type == "roberta":  # positions count from pad_token_id + 1
    config.pad_token_id = 1
  if arch.endswith("ForSequenceClassification"):
    config.id2label, config.label2id = {0: "neg", 1: "neutral", 2: "pos"}, {
        "neg": 0, "neutral": 1, "pos": 2}
    config.problem_type = "single_label_classification"
  return config


def save_source(directory, model_type: str, arch: str):
  """An HF model directory as transformers saves it (with a generation_config.json of sampling
  defaults for causal LMs), and the torch model."""
  torch.manual_seed(0)
  model = getattr(transformers, arch)(hf_config(model_type, arch)).eval()
  if model.can_generate():
    model.generation_config = transformers.GenerationConfig(
        do_sample=True, temperature=0.7, top_p=0.9, bos_token_id=1, eos_token_id=[2, 5],
        pad_token_id=0)
  model.save_pretrained(directory)
  return model


def differences(source, out, name: str) -> dict:
  if not (source / name).is_file():
    assert not (out / name).is_file() or name == "generation_config.json"
    return {}
  a, b = (json.loads((d / name).read_text()) for d in (source, out))
  return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b))
          if a.get(k, "<absent>") != b.get(k, "<absent>") and k not in ALLOWED_DIFFERENCES}


@pytest.mark.parametrize("model_type, arch", CASES, ids=[arch for _, arch in CASES])
def test_a_config_json_round_trips_through_lmjax_field_for_field(tmp_path, model_type, arch):
  save_source(tmp_path / "hf", model_type, arch)
  lmjax.to_hf(lmjax.load(tmp_path / "hf"), tmp_path / "python")
  assert main(["convert", "hf-to-lmjax", str(tmp_path / "hf"), str(tmp_path / "run")]) == 0
  assert main(["convert", "lmjax-to-hf", str(tmp_path / "run"), str(tmp_path / "cli")]) == 0
  assert main(["convert", "lmjax-to-hf", str(tmp_path / "run"), str(tmp_path / "cli")]) == 2
  for out in ("python", "cli"):
    for name in ("config.json", "generation_config.json"):
      assert differences(tmp_path / "hf", tmp_path / out, name) == {}, (out, name)
  # and lmjax.load of the run gives the same fields as the command line
  lmjax.to_hf(lmjax.load(tmp_path / "run"), tmp_path / "from_run")
  assert differences(tmp_path / "hf", tmp_path / "from_run", "config.json") == {}


def test_a_bare_model_and_params_export_says_what_it_cannot_know(tmp_path, caplog):
  save_source(tmp_path / "hf", "gpt2", "GPT2ForSequenceClassification")
  model, params = lmjax.from_hf(tmp_path / "hf")
  lmjax.to_hf(model, params, tmp_path / "bare")
  assert "names no special-token ids" in caplog.text
  source = json.loads((tmp_path / "hf" / "config.json").read_text())
  lmjax.to_hf(model, params, tmp_path / "given", source_config=source)
  assert differences(tmp_path / "hf", tmp_path / "given", "config.json") == {}


def test_a_changed_graph_keeps_the_sources_behaviour_fields_but_not_its_stale_graph_fields():
  source = hf_config("qwen3", "Qwen3ForCausalLM").to_dict()
  config = hf_config_to_model_config(source)
  longer = dataclasses.replace(config, max_seq_len=256, sliding_window=None,
                               sliding_layers=None)  # fine-tuned: a longer context, no window
  merged = merge_source_config(model_config_to_hf_config(longer), source)
  assert hf_config_to_model_config(merged) == hf_config_to_model_config(
      model_config_to_hf_config(longer))
  assert merged["max_position_embeddings"] == 256 and merged["pad_token_id"] == 0
  assert (merged["bos_token_id"], merged["eos_token_id"]) == (1, 2)


DECODER_CLASSIFIERS = [(t, a) for t, a in CASES if a.endswith("ForSequenceClassification")
                       and t not in ("bert", "roberta", "distilbert", "modernbert")]


@pytest.mark.parametrize("model_type, arch", DECODER_CLASSIFIERS,
                         ids=[a for _, a in DECODER_CLASSIFIERS])
def test_exported_decoder_classifiers_run_batched_right_padded_inputs_as_lmjax(
    tmp_path, model_type, arch):
  save_source(tmp_path / "hf", model_type, arch)
  m = lmjax.load(tmp_path / "hf")
  lmjax.to_hf(m, tmp_path / "out")
  exported = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
  pad = exported.config.pad_token_id
  assert pad == 0
  rng = np.random.default_rng(1)
  lengths = [9, 4, 6]
  ids = np.full((3, 9), pad, np.int64)
  for row, n in enumerate(lengths):
    ids[row, :n] = rng.integers(6, 61, n)  # never the pad id
  mask = (np.arange(9)[None] < np.array(lengths)[:, None]).astype(np.int64)
  with torch.no_grad():
    theirs = exported(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
  logits = m.model.apply({"params": m.params}, ids.astype(np.int32),
                         attention_mask=mask.astype(np.int32))
  np.testing.assert_allclose(np.asarray(logits), theirs.numpy(), atol=1e-4, rtol=1e-4)
  probabilities = classify(m.model, m.params, ids.astype(np.int32), mask.astype(np.int32))
  np.testing.assert_allclose(probabilities, torch.softmax(theirs, -1).numpy(), atol=1e-4)
  assert exported.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}


def test_a_decoder_classifier_fine_tuned_without_a_pad_token_pads_with_its_eos_in_transformers(
    tmp_path, labelled, capsys):
  """As Hugging Face recipes do: GPT-2's tokenizer has no pad token, so the exported classifier
  pads with the end-of-sequence token, named in config.json and tokenizer_config.json both, and
  transformers' pipeline runs batches of unequal texts as `lmjax predict` does."""
  tokenizers = pytest.importorskip("tokenizers")
  texts = [json.loads(line)["text"] for line in labelled.read_text().splitlines()]
  hf = tokenizers.Tokenizer(tokenizers.models.BPE())
  hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = tokenizers.decoders.ByteLevel()
  hf.train_from_iterator(texts, tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  (tmp_path / "hf").mkdir()
  hf.save(str(tmp_path / "hf" / "tokenizer.json"))
  (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
      "eos_token": "<|endoftext|>"}))
  torch.manual_seed(0)
  transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=hf.get_vocab_size(), n_embd=32, n_layer=2, n_head=4, n_positions=64,
      bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
      initializer_range=0.2)).save_pretrained(tmp_path / "hf")
  assert main(["train", "tiny-gpt", "--run-dir", str(tmp_path / "run"), "--set",
               f"model.init_from={tmp_path / 'hf'}", f"data.tokenizer={tmp_path / 'hf'}",
               "model.head=classification", "data.source=jsonl", f"data.paths=[{labelled}]",
               "train.seq_len=32", "train.batch_size=8", "train.steps=3",
               "train.eval_every=0"]) == 0
  assert main(["convert", "lmjax-to-hf", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
  config = json.loads((tmp_path / "out" / "config.json").read_text())
  tokenizer_config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
  assert config["pad_token_id"] == 0 and tokenizer_config["pad_token"] == "<|endoftext|>"
  assert (config["bos_token_id"], config["eos_token_id"]) == (0, 0)  # kept from the source
  assert config["resid_pdrop"] == 0.0  # the fine-tuned run's, as the source's
  sample = ["Return a new list.", "Lists.", "An expression statement evaluates it."]
  pipe = transformers.pipeline("text-classification", model=str(tmp_path / "out"), top_k=None,
                               batch_size=3)
  capsys.readouterr()
  assert main(["predict", "--run-dir", str(tmp_path / "run"),
               *sum((["--text", t] for t in sample), [])]) == 0
  ours = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  for theirs, mine in zip(pipe(sample), ours):
    for entry in theirs:
      assert mine["probabilities"][entry["label"]] == pytest.approx(entry["score"], abs=1e-4)


def test_a_source_config_that_does_not_read_is_not_kept_and_training_goes_on(tmp_path, caplog):
  (tmp_path / "src").mkdir()
  (tmp_path / "src" / "config.json").write_text("{not json")
  keep_source_config(tmp_path / "src", tmp_path / "run")
  assert not (tmp_path / "run" / HF_CONFIG_COPY).exists()
  assert "an export of this run will not carry its fields" in caplog.text
  (tmp_path / "src" / "config.json").write_text('{"model_type": "gpt2", "pad_token_id": 7}')
  keep_source_config(tmp_path / "src", tmp_path / "run")
  keep_source_config(tmp_path / "elsewhere", tmp_path / "run")  # kept once: a resume keeps it
  assert json.loads((tmp_path / "run" / HF_CONFIG_COPY).read_text())["pad_token_id"] == 7
