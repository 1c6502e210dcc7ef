"""`lmjax convert` and `--hf` as a user runs them, and trained runs exported to transformers."""

import json

import numpy as np
import pytest
import torch
import transformers

import lmjax
from lmjax.config import load_config
from lmjax.data.sources.documents import builtin_corpus
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.train.init_from import merge_params
from lmjax.train.loop import train
from tests.conftest import TINY
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
  """A tiny random GPT-2 with a real BPE tokenizer, saved as Hugging Face saves it."""
  directory = tmp_path_factory.mktemp("hf-gpt2")
  tokenizer = Tokenizer.train_bpe(builtin_corpus()[:20], vocab_size=320)
  tokenizer.save(directory)
  config = transformers.GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=48, n_layer=2, n_head=6,
                                   n_positions=64, initializer_range=0.3,
                                   eos_token_id=tokenizer.eos_id, bos_token_id=tokenizer.eos_id)
  torch.manual_seed(0)
  transformers.GPT2LMHeadModel(config).save_pretrained(directory)
  return directory


def test_import_generate_verify_and_export_a_hugging_face_model(hf_gpt2, tmp_path, capsys):
  run_dir, exported = tmp_path / "run", tmp_path / "exported"
  code, out, _ = run_cli(capsys, "convert", "hf-to-lmjax", hf_gpt2, run_dir)
  assert code == 0 and "gpt2" in out
  assert (run_dir / "tokenizer" / "tokenizer.json").is_file()

  prompt = ["--prompt", "The object", "--max-new-tokens", 10, "--temperature", 0]
  from_run = run_cli(capsys, "generate", "--run-dir", run_dir, *prompt)
  from_hf = run_cli(capsys, "generate", "--hf", hf_gpt2, *prompt)
  assert from_run[0] == from_hf[0] == 0 and from_run[1] == from_hf[1]
  # …and the same text as transformers' own greedy decoding.
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_gpt2)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_gpt2)
  ids = hf_tokenizer("The object", return_tensors="pt").input_ids
  expected = hf_model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)
  generated = expected[0].tolist()
  if hf_tokenizer.eos_token_id in generated[ids.shape[1]:]:  # lmjax stops at EOS as well
    generated = generated[:generated.index(hf_tokenizer.eos_token_id, ids.shape[1]) + 1]
  assert from_run[1].strip() == hf_tokenizer.decode(generated, skip_special_tokens=True).strip()

  code, out, _ = run_cli(capsys, "convert", "verify", hf_gpt2, run_dir)
  assert code == 0 and "max |Δlogit|" in out and "top-1 agree:  100.00%" in out

  code, _, _ = run_cli(capsys, "convert", "lmjax-to-hf", run_dir, exported, "--max-shard-size", "20KB")
  assert code == 0
  assert (exported / "model.safetensors.index.json").is_file()
  assert json.loads((exported / "config.json").read_text())["eos_token_id"] == hf_tokenizer.eos_token_id
  assert run_cli(capsys, "convert", "verify", exported, run_dir)[0] == 0


def test_a_qwen3_model_imports_verifies_and_exports_as_qwen3(tmp_path, capsys):
  from tests.hf_models import build_hf
  hf_dir, run_dir, exported = tmp_path / "hf", tmp_path / "run", tmp_path / "exported"
  build_hf("qwen3").save_pretrained(hf_dir)
  code, out, _ = run_cli(capsys, "convert", "hf-to-lmjax", hf_dir, run_dir)
  assert code == 0 and "qwen3" in out
  code, out, _ = run_cli(capsys, "convert", "verify", hf_dir, run_dir)
  assert code == 0 and "top-1 agree:  100.00%" in out
  assert run_cli(capsys, "convert", "lmjax-to-hf", run_dir, exported)[0] == 0
  assert json.loads((exported / "config.json").read_text())["architectures"] == [
      "Qwen3ForCausalLM"]
  assert run_cli(capsys, "convert", "verify", exported, run_dir)[0] == 0


def test_verify_fails_when_the_models_differ(hf_gpt2, tmp_path, capsys):
  run_dir = tmp_path / "run"
  assert run_cli(capsys, "convert", "hf-to-lmjax", hf_gpt2, run_dir)[0] == 0
  other = tmp_path / "other"
  config = transformers.GPT2Config.from_pretrained(hf_gpt2)
  torch.manual_seed(1)
  transformers.GPT2LMHeadModel(config).save_pretrained(other)
  code, _, err = run_cli(capsys, "convert", "verify", other, run_dir)
  assert code == 1 and "above the tolerance" in err


def test_conversion_mistakes_are_explained(hf_gpt2, tmp_path, capsys):
  code, _, err = run_cli(capsys, "convert", "hf-to-lmjax", tmp_path / "nowhere", tmp_path / "run")
  assert code == 2 and "config.json" in err
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "keep.txt").write_text("mine")
  code, _, err = run_cli(capsys, "convert", "hf-to-lmjax", hf_gpt2, tmp_path / "taken")
  assert code == 2 and "not empty" in err
  assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("name, extra", [("tiny-gpt", []), ("tiny-bert", []), ("tiny-llama", []),
                                         ("tiny-llama", ["model.preset=tiny-qwen3"]),
                                         ("tiny-bert", ["model.preset=tiny-modernbert",
                                                        "model.sliding_layers=[1]"])],
                         ids=["tiny-gpt", "tiny-bert", "tiny-llama", "tiny-qwen3",
                              "tiny-modernbert"])
def test_a_trained_run_exports_and_loads_in_transformers(name, extra, tmp_path, capsys):
  run_dir, exported = tmp_path / "run", tmp_path / "hf"
  train(load_config(name, TINY + extra + ["train.steps=5"]), run_dir)
  assert run_cli(capsys, "convert", "lmjax-to-hf", run_dir, exported)[0] == 0
  auto = (transformers.AutoModelForMaskedLM if name == "tiny-bert"
          else transformers.AutoModelForCausalLM)
  hf_model = auto.from_pretrained(exported).eval()
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
  ours = Tokenizer.load(run_dir / "tokenizer")
  text = "Return the value of x."
  ids = ours.encode(text)
  assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
  assert hf_tokenizer.mask_token_id == ours.mask_id and hf_tokenizer.eos_token_id == ours.eos_id
  model, params = lmjax.load_run(run_dir)
  expected = np.asarray(model.apply({"params": params}, np.array([ids], np.int32)))
  with torch.no_grad():
    logits = hf_model(torch.tensor([ids])).logits.numpy()
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)


def test_fine_tuning_starts_from_the_imported_weights(hf_gpt2, tmp_path, capsys):
  imported, tuned = tmp_path / "imported", tmp_path / "tuned"
  assert run_cli(capsys, "convert", "hf-to-lmjax", hf_gpt2, imported)[0] == 0
  # With a zero learning rate the one step changes nothing: the run holds the source weights.
  code, _, err = run_cli(capsys, "train", "tiny-gpt", "--run-dir", tuned, "--set",
                         f"model.init_from={imported}", "data.tokenizer=null",
                         "train.seq_len=32",
                         "train.batch_size=2", "train.steps=1", "train.learning_rate=0",
                         "train.warmup_steps=0")
  assert code == 0, err
  _, source = lmjax.load_run(imported)
  _, params = lmjax.load_run(tuned)
  import jax
  jax.tree.map(np.testing.assert_array_equal, source, params)
  assert lmjax.load_run(tuned)[0].config.embed_dim == 48  # the architecture came from the source


def test_merging_keeps_matching_weights_and_reports_new_and_unused_ones():
  import jax.numpy as jnp
  fresh = {"body": {"w": jnp.zeros((2, 3))}, "classifier": {"kernel": jnp.zeros((3, 2))}}
  loaded = {"body": {"w": np.ones((2, 3), np.float32)}, "mlm_transform": {"kernel": np.ones((3, 3))}}
  merged, new, unused = merge_params(fresh, loaded)
  np.testing.assert_array_equal(merged["body"]["w"], np.ones((2, 3)))
  assert new == ["classifier/kernel"] and unused == ["mlm_transform/kernel"]
