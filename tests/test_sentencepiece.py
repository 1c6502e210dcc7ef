"""Sentencepiece `.model` tokenizers: exact parity with sentencepiece, runs, --hf dirs, errors."""

import contextlib
import io
import json
import pickle
import shutil

import pytest
import sentencepiece

import lmjax
from lmjax.cli import main
from lmjax.data.tokenize.sentencepiece_model import SentencePieceTokenizer
from lmjax.data.sources.documents import builtin_corpus
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError
from tests.conftest import TINY
from tests.helpers import run_cli

TEXTS = [
    "Hello world", "  two leading spaces", " one", "trailing  \n", "lines\nand\n\nblank lines\n",
    "tabs\tand\r\nCRLF", "", " ", "naïve café, Ærø, straße", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ１２３",
    "日本語のテキスト", "emoji 🙂👍🏽 and ZWJ 👩‍👩‍👧", "combining e\u0301 vs é", "x = [1, 2]  # code",
    "a literal </s> and <s> and <unk>", "def f(x):\n    return x ** 2\n",
]


def train_sentencepiece(directory, **options):
  """A real sentencepiece model trained on the built-in corpus; returns its path."""
  paragraphs = [p for doc in builtin_corpus() for p in doc.split("\n\n") if p.strip()]
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(paragraphs), model_prefix=str(directory / "spm"), num_threads=2,
      minloglevel=2, **options)
  return directory / "spm.model"


@pytest.fixture(scope="module")
def unigram_model(tmp_path_factory):
  """Unigram with byte fallback and no normalisation (round-trips any text), a pad id and a
  user-defined <mask> piece, as one would train for lmjax."""
  return train_sentencepiece(
      tmp_path_factory.mktemp("unigram"), vocab_size=512, byte_fallback=True, pad_id=3,
      user_defined_symbols=["<mask>"], normalization_rule_name="identity",
      remove_extra_whitespaces=False)


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory):
  """BPE with sentencepiece's defaults: NFKC normalisation, whitespace folding, unknowns."""
  return train_sentencepiece(tmp_path_factory.mktemp("bpe"), vocab_size=320, model_type="bpe")


# -- the tokenizer ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["unigram_model", "bpe_model"])
def test_encoding_and_decoding_equal_sentencepiece_exactly(model, request):
  path = request.getfixturevalue(model)
  sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
  tok = Tokenizer.from_file(path)
  assert isinstance(tok, SentencePieceTokenizer) and tok.vocab_size == sp.get_piece_size()
  docs = TEXTS + builtin_corpus()[:10]
  expected = [sp.encode(text) for text in docs]
  assert [tok.encode(text) for text in docs] == expected
  assert tok.encode_batch(docs) == expected
  assert [tok.decode(ids, skip_special_tokens=False) for ids in expected] == [
      sp.decode(ids) for ids in expected]


def test_a_byte_fallback_model_round_trips_any_text(unigram_model):
  tok = Tokenizer.from_file(unigram_model)
  for text in TEXTS:
    assert tok.decode(tok.encode(text)) == text
  assert tok.unk_id not in tok.encode("日本語 🙂")  # bytes, not unknowns


def test_roles_come_from_the_model(unigram_model, bpe_model):
  tok = Tokenizer.from_file(unigram_model)
  assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.special_ids == frozenset(range(5)) and tok.cls_id is None
  assert tok.id_to_token(4) == "<mask>" and tok.token_to_id("<nope>") is None
  tok = Tokenizer.from_file(bpe_model)  # sentencepiece's default: no pad, so pad falls back to eos
  assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id) == (0, 1, 2, 2, None)


def test_a_config_beside_the_model_names_roles_and_the_bos_template(unigram_model, tmp_path):
  shutil.copy(unigram_model, tmp_path / "tokenizer.model")
  config = {"tokenizer_class": "LlamaTokenizer", "pad_token": "</s>",
            "eos_token": {"content": "<not-in-vocab>"}}
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  tok = Tokenizer.load(tmp_path)
  assert (tok.pad_id, tok.eos_id, tok.mask_id) == (2, 2, 4)  # eos: the model's own
  plain = tok.encode("Hi")
  assert tok.encode("Hi", add_special_tokens=True) == [tok.bos_id] + plain  # Llama's default
  config["add_bos_token"], config["add_eos_token"] = False, True
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  assert Tokenizer.load(tmp_path).encode("Hi", add_special_tokens=True) == plain + [2]


def test_special_spellings_are_text_unless_asked_and_decode_shows_them_on_request(unigram_model):
  tok = Tokenizer.from_file(unigram_model)
  assert tok.eos_id not in tok.encode("a </s> b")
  assert tok.encode("a</s>", parse_special_tokens=True) == tok.encode("a") + [tok.eos_id]
  assert tok.encode_batch(["a</s>"], parse_special_tokens=True) == [tok.encode("a") + [tok.eos_id]]
  ids = tok.encode("hi") + [tok.eos_id, tok.mask_id, 10**6]  # an id past the vocabulary
  assert tok.decode(ids) == "hi"
  assert tok.decode(ids, skip_special_tokens=False) == "hi</s><mask>"


def test_save_keeps_the_model_file_as_it_is_and_loads_back(unigram_model, tmp_path):
  tok = Tokenizer.from_file(unigram_model)
  tok.save(tmp_path / "saved")
  assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
      "tokenizer.model", "tokenizer_config.json"]
  assert (tmp_path / "saved" / "tokenizer.model").read_bytes() == unigram_model.read_bytes()
  for loaded in (Tokenizer.load(tmp_path / "saved"),
                 Tokenizer.from_dict(json.loads(json.dumps(tok.to_dict()))),  # between hosts
                 pickle.loads(pickle.dumps(tok))):  # to data-loading worker processes
    assert isinstance(loaded, SentencePieceTokenizer)
    assert loaded.roles == tok.roles and loaded.special_ids == tok.special_ids
    assert loaded.encode_batch(TEXTS) == tok.encode_batch(TEXTS)


def test_a_directory_prefers_tokenizer_json_then_its_one_model_file(unigram_model, bpe_model,
                                                                   tmp_path):
  both = tmp_path / "both"
  Tokenizer.byte_level().save(both)
  shutil.copy(unigram_model, both / "tokenizer.model")
  assert type(Tokenizer.load(both)) is Tokenizer
  t5_style = tmp_path / "t5"
  t5_style.mkdir()
  shutil.copy(bpe_model, t5_style / "spiece.model")
  assert Tokenizer.load(t5_style).encode("x y") == Tokenizer.from_file(bpe_model).encode("x y")
  shutil.copy(unigram_model, t5_style / "other.model")
  with pytest.raises(UserError, match="other.model, spiece.model"):
    Tokenizer.load(t5_style)


def test_a_model_file_that_is_not_sentencepiece_is_a_user_error(tmp_path, capsys):
  for name, content in [("garbage.model", b"not a sentencepiece model"), ("empty.model", b""),
                        ("json.model", b'{"version": "1.0", "model": {}}')]:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=name):
      Tokenizer.from_file(tmp_path / name)
  overrides = [o for o in TINY if not o.startswith("data.tokenizer")]
  code, _, err = run_cli(capsys, "train", "tiny-gpt", "--run-dir", tmp_path / "run", "--set",
                         *overrides, f"data.tokenizer={tmp_path / 'garbage.model'}")
  assert code == 2 and "garbage.model" in err and "Traceback" not in err


# -- in runs and on the command line ---------------------------------------------------------


def train_with(capsys, name, model_path, run_dir, *extra):
  overrides = [o for o in TINY if not o.startswith(("data.tokenizer", "model.vocab_size"))]
  code, _, err = run_cli(capsys, "train", name, "--run-dir", run_dir, "--set", *overrides,
                         f"data.tokenizer={model_path}", "model.vocab_size=512",
                         "train.steps=2", "train.checkpoint_every=2", "train.eval_every=0", *extra)
  assert code == 0, err


def test_a_masked_lm_run_keeps_the_model_file_and_fills_masks(unigram_model, tmp_path, capsys):
  run_dir = tmp_path / "run"
  train_with(capsys, "tiny-bert", unigram_model, run_dir)  # masks with the model's <mask> piece
  assert (run_dir / "tokenizer" / "tokenizer.model").read_bytes() == unigram_model.read_bytes()
  assert not (run_dir / "tokenizer" / "tokenizer.json").exists()
  model, _ = lmjax.load_run(run_dir)
  assert model.config.vocab_size == 512
  code, out, err = run_cli(capsys, "fill-mask", "--run-dir", run_dir, "--text",
                           "The [MASK] statement", "--top-k", 3)
  assert code == 0, err
  assert out.startswith("mask 1:") and len(out.strip().splitlines()) == 4


@pytest.fixture(scope="module")
def llama_dir(unigram_model, tmp_path_factory):
  """A tiny random Llama saved by transformers, with a tokenizer.model and no tokenizer.json."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  hf_dir = tmp_path_factory.mktemp("llama")
  config = transformers.LlamaConfig(
      vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
      bos_token_id=1, eos_token_id=2, initializer_range=0.3)
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(config).save_pretrained(hf_dir)
  shutil.copy(unigram_model, hf_dir / "tokenizer.model")
  (hf_dir / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "bos_token": "<s>",
       "eos_token": "</s>", "unk_token": "<unk>"}))
  return hf_dir


GENERATE = ["--prompt", "The object", "--max-new-tokens", 8, "--temperature", 0]


@pytest.fixture(scope="module")
def generated_from_hf(llama_dir):
  """What `lmjax generate --hf` prints for the tiny Llama."""
  with contextlib.redirect_stdout(io.StringIO()) as out:
    assert main([str(a) for a in ["generate", "--hf", llama_dir, *GENERATE]]) == 0
  return out.getvalue()


def test_generate_hf_reads_a_directory_with_only_tokenizer_model(llama_dir, generated_from_hf):
  import torch
  import transformers
  # The same text as transformers' greedy decoding of sentencepiece's own ids.
  sp = sentencepiece.SentencePieceProcessor(model_file=str(llama_dir / "tokenizer.model"))
  prompt = [sp.bos_id()] + sp.encode("The object")
  hf_model = transformers.LlamaForCausalLM.from_pretrained(llama_dir).eval()
  generated = hf_model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                                pad_token_id=0)[0].tolist()
  if sp.eos_id() in generated[len(prompt):]:  # lmjax stops at EOS as well
    generated = generated[:generated.index(sp.eos_id(), len(prompt)) + 1]
  special = {0, 1, 2, 3, 4}
  assert generated_from_hf.strip() == sp.decode([i for i in generated if i not in special]).strip()


def test_convert_keeps_the_model_file_and_the_run_generates_the_same(llama_dir, generated_from_hf,
                                                                      tmp_path, capsys):
  run_dir = tmp_path / "run"
  assert run_cli(capsys, "convert", "hf-to-lmjax", llama_dir, run_dir)[0] == 0
  tokenizer = Tokenizer.load(run_dir / "tokenizer")
  assert isinstance(tokenizer, SentencePieceTokenizer) and tokenizer.mask_id == 4
  assert run_cli(capsys, "generate", "--run-dir", run_dir, *GENERATE)[1] == generated_from_hf
