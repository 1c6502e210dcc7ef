"""Published tokenizer.json files that pad and cut by themselves (sentence-transformers' fixed
`padding` and `truncation` sections): lmjax turns both off, as transformers does, and decides
lengths, padding and masks alone, on every data path and inference command."""

import json

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmjax.cli import main
from lmjax.config import load_config
from lmjax.data.examples.classification import encode_texts, example_tokenizer
from lmjax.data.spec import BatchSpec, Objective
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.train.inputs import load_corpus
from tests.conftest import TINY
from tests.labelled_text import two_corpora

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

FIXED = 16  # the published files' own padding and truncation length
TEXTS = [
    "Return a list.",                                               # short
    "an expression statement evaluates the list of items and returns a new object "
    "whose length is the number of its items",                        # over-long
]


def _corpus() -> list[str]:
  return [text for text, _ in two_corpora()][:400]


def _pad_and_cut(hf: tokenizers.Tokenizer, pad: str) -> tokenizers.Tokenizer:
  hf.enable_padding(length=FIXED, pad_id=hf.token_to_id(pad), pad_token=pad)
  hf.enable_truncation(max_length=FIXED)
  return hf


def wordpiece() -> tuple[tokenizers.Tokenizer, dict]:
  """A BERT-style WordPiece with [CLS] a [SEP] b [SEP] (types 0, 1)."""
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  hf = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
  hf.normalizer = normalizers.BertNormalizer(lowercase=True)
  hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  hf.decoder = decoders.WordPiece()
  hf.train_from_iterator(_corpus(), trainers.WordPieceTrainer(
      vocab_size=400, special_tokens=specials, show_progress=False))
  cls, sep = hf.token_to_id("[CLS]"), hf.token_to_id("[SEP]")
  hf.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
  roles = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
           "sep_token": "[SEP]", "mask_token": "[MASK]"}
  return _pad_and_cut(hf, "[PAD]"), roles


def byte_bpe() -> tuple[tokenizers.Tokenizer, dict]:
  """A GPT-2-style byte-level BPE without a template."""
  hf = tokenizers.Tokenizer(models.BPE())
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = decoders.ByteLevel()
  hf.train_from_iterator(_corpus(), trainers.BpeTrainer(
      vocab_size=400, special_tokens=["<|endoftext|>", "<pad>"], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  roles = {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "pad_token": "<pad>"}
  return _pad_and_cut(hf, "<pad>"), roles


def unigram() -> tuple[tokenizers.Tokenizer, dict]:
  """A SentencePiece-style Unigram (Metaspace) that appends </s>, as T5's tokenizer.json."""
  hf = tokenizers.Tokenizer(models.Unigram())
  hf.pre_tokenizer = pre_tokenizers.Metaspace()
  hf.decoder = decoders.Metaspace()
  hf.train_from_iterator(_corpus(), trainers.UnigramTrainer(
      vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
      show_progress=False))
  hf.post_processor = processors.TemplateProcessing(
      single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", hf.token_to_id("</s>"))])
  roles = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
  return _pad_and_cut(hf, "<pad>"), roles


BUILDERS = {"wordpiece": wordpiece, "bpe": byte_bpe, "unigram": unigram}


def write_tokenizer(directory, kind: str):
  """A published-style tokenizer directory: tokenizer.json with fixed padding and truncation,
  and a tokenizer_config.json naming the special tokens."""
  hf, roles = BUILDERS[kind]()
  directory.mkdir(parents=True, exist_ok=True)
  hf.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, **roles}))
  saved = json.loads((directory / "tokenizer.json").read_text())
  assert saved["padding"] and saved["truncation"]  # the hazard really is in the file
  return directory


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def published(request, tmp_path_factory):
  """(kind, directory, lmjax Tokenizer, transformers tokenizer) of one published file."""
  directory = write_tokenizer(tmp_path_factory.mktemp(request.param), request.param)
  return (request.param, directory, Tokenizer.from_file(directory),
          transformers.AutoTokenizer.from_pretrained(str(directory)))


def exact_text(hf_tokenizer, length: int) -> str:
  """A text that the transformers tokenizer encodes (without specials) to exactly `length`."""
  words = TEXTS[1].split()
  for n in range(1, len(words) + 1):
    text = " ".join(words[:n])
    if len(hf_tokenizer(text, add_special_tokens=False)["input_ids"]) >= length:
      return text
  raise AssertionError("the long text is too short")


def texts_for(hf_tokenizer) -> list[str]:
  return [TEXTS[0], exact_text(hf_tokenizer, FIXED), exact_text(hf_tokenizer, FIXED - 2),
          TEXTS[1]]


def test_documents_and_prompts_encode_as_transformers_whatever_their_length(published):
  _, _, ours, theirs = published
  texts = texts_for(theirs)
  plain = theirs(texts, add_special_tokens=False)["input_ids"]
  assert max(map(len, plain)) > FIXED  # an over-long text is there, and must stay whole
  assert ours.encode_batch(texts) == plain
  assert [ours.encode(t) for t in texts] == plain
  assert [ours.encode(t, add_special_tokens=True) for t in texts] == theirs(texts)["input_ids"]


def test_a_long_text_goes_to_the_library_in_pieces_with_the_whole_texts_ids(published,
                                                                            monkeypatch):
  """A text longer than PIECE_CHARS (here 64 characters) is encoded piece by piece, each cut
  before a space: the ids are transformers' for the whole text (a 50 MB line would otherwise
  go to the Rust tokenizer in one piece)."""
  from lmjax.data.tokenize import pieces
  _, _, ours, theirs = published
  text = "  ".join(_corpus()[:20])
  monkeypatch.setattr(pieces, "PIECE_CHARS", 64)
  assert len(pieces.split_long(text)) > len(text) // 64
  assert max(map(len, pieces.split_long("x" * 200 + " y" * 100))) <= 64  # no space: cut anyway
  whole = theirs(text, add_special_tokens=False)["input_ids"]
  assert ours.encode(text) == whole and ours.encode_batch(["a b", text])[1] == whole


@pytest.mark.parametrize("seq_len", [FIXED - 4, FIXED, 40])
def test_classifier_rows_equal_transformers_ids_masks_and_token_types(published, seq_len):
  kind, _, ours, theirs = published
  texts = texts_for(theirs)
  spec = BatchSpec(Objective.CLASSIFY, seq_len=seq_len, batch_size=4, seed=0, vocab_size=512,
                   bidirectional=kind == "wordpiece", token_types=kind == "wordpiece")
  tokenizer = example_tokenizer(ours, spec)
  for pairs in (None, texts[::-1]):
    rows, cut = encode_texts(tokenizer, texts, pairs, spec)
    want = theirs(texts, pairs, truncation=True, max_length=seq_len, padding="max_length",
                  return_token_type_ids=True)
    np.testing.assert_array_equal(rows["segment_ids"], want["attention_mask"])
    np.testing.assert_array_equal(rows["input_ids"], want["input_ids"])
    if kind == "wordpiece":
      np.testing.assert_array_equal(rows["token_type_ids"], want["token_type_ids"])
    whole = theirs(texts, pairs)["input_ids"]
    assert cut == sum(len(ids) > seq_len for ids in whole)  # the true count of cut examples


def _jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  return path


def test_causal_lm_corpora_keep_every_token_of_each_document(published, tmp_path):
  _, directory, _, theirs = published
  assert_corpus_keeps_documents(tmp_path, "tiny-gpt", directory, theirs, separators=1)


def test_masked_lm_corpora_keep_every_token_of_each_document(tmp_path):
  directory = write_tokenizer(tmp_path / "wordpiece", "wordpiece")  # the one with a [MASK]
  theirs = transformers.AutoTokenizer.from_pretrained(str(directory))
  assert_corpus_keeps_documents(tmp_path, "tiny-bert", directory, theirs, separators=2)


def assert_corpus_keeps_documents(tmp_path, name, directory, theirs, *, separators: int):
  """The packed corpus holds every token of every document (plus `separators` per document:
  eos, or cls and sep), none cut to the file's fixed length, no padding counted as text."""
  texts = [t for t, _ in two_corpora()][:40]
  data = _jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in texts])
  config = load_config(name, [*TINY, "model.vocab_size=512", f"data.tokenizer={directory}",
                              "data.source=jsonl", f"data.paths=[{data}]"])
  corpus = load_corpus(config)
  kept = sum(int((rows["segment_ids"] > 0).sum())
             for part in (corpus.train, corpus.held_out)
             for rows in [part.take(np.arange(len(part)))])
  tokens = sum(len(ids) for ids in theirs(texts, add_special_tokens=False)["input_ids"])
  assert tokens > FIXED * len(texts)  # documents are longer than the file's fixed length
  assert tokens <= kept <= tokens + separators * len(texts)


def test_instruction_examples_keep_their_whole_answers(published, tmp_path):
  kind, directory, ours, theirs = published
  rows = [{"prompt": "Question: " + t[:40], "completion": " " + t[:160]}
          for t, _ in two_corpora()[:6]]
  data = _jsonl(tmp_path / "sft.jsonl", rows)
  config = load_config("tiny-gpt", [*TINY, "model.vocab_size=512", f"data.tokenizer={directory}",
                                    "train.objective=sft", "data.source=jsonl",
                                    f"data.paths=[{data}]", "train.seq_len=256",
                                    "model.max_seq_len=256"])
  corpus = load_corpus(config)
  got = corpus.train.take(np.arange(len(corpus.train)))
  first = got["input_ids"][0][got["segment_ids"][0] == 1]
  answer = first[got["loss_mask"][0][got["segment_ids"][0] == 1] == 1]
  want = theirs(rows[0]["completion"], add_special_tokens=False)["input_ids"]
  eos = [] if ours.eos_id is None else [ours.eos_id]
  assert len(want) > FIXED and answer.tolist() == want + eos


def test_a_saved_tokenizer_is_the_file_as_published(published, tmp_path):
  _, directory, ours, _ = published
  ours.save(tmp_path / "saved")
  # As `tokenizers` itself writes the file back (it prints some Unigram scores' last digit
  # differently from how they were read), with the published padding and truncation.
  original = json.loads(tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json")).to_str())
  assert original["padding"]["strategy"] == {"Fixed": FIXED}
  saved = json.loads((tmp_path / "saved" / "tokenizer.json").read_text())
  assert saved == original
  again = Tokenizer.load(tmp_path / "saved")
  assert again.encode(TEXTS[1]) == ours.encode(TEXTS[1]) and len(ours.encode(TEXTS[1])) > FIXED
  moved = Tokenizer.from_dict(ours.to_dict())  # as sent to other processes
  moved.save(tmp_path / "moved")
  assert json.loads((tmp_path / "moved" / "tokenizer.json").read_text()) == original


# -- end to end: fine-tuning, predict, export, score, eval and generate ----------------------

SEQ_LEN = 40  # longer than the file's fixed length; some texts are longer still


@pytest.fixture(scope="module")
def fine_tuned_bert(tmp_path_factory, labelled):
  """(HF BERT directory with a padding WordPiece file, classifier run fine-tuned from it, the
  training log)."""
  root = tmp_path_factory.mktemp("padded_bert")
  hf_dir = write_tokenizer(root / "hf", "wordpiece")
  vocab = transformers.AutoTokenizer.from_pretrained(str(hf_dir)).vocab_size
  torch.manual_seed(0)
  transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=64,
      initializer_range=0.5)).save_pretrained(hf_dir)  # outputs that vary with the input
  examples = [{"text": t[:300], "label": y} for t, y in two_corpora()[::7]]
  data = _jsonl(root / "labelled.jsonl", examples)
  import logging
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logging.getLogger("lmjax").addHandler(handler)
  try:
    assert main(["train", "tiny-bert", "--run-dir", str(root / "run"), "--set",
                 f"model.init_from={hf_dir}", f"data.tokenizer={hf_dir}",
                 "model.head=classification", "data.source=jsonl",
                 f"data.paths=[{data}]", "data.eval_fraction=0.2", f"train.seq_len={SEQ_LEN}",
                 "train.batch_size=8", "train.steps=8", "train.eval_every=0",
                 "train.learning_rate=3e-3"]) == 0
  finally:
    logging.getLogger("lmjax").removeHandler(handler)
  return hf_dir, root / "run", [r.getMessage() for r in records], examples


def test_the_truncation_report_counts_the_examples_really_cut(fine_tuned_bert):
  hf_dir, _, log, examples = fine_tuned_bert
  theirs = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
  lengths = [len(ids) for ids in theirs([e["text"] for e in examples])["input_ids"]]
  cut = sum(n > SEQ_LEN for n in lengths)
  assert 0 < cut < len(examples)
  reports = [line for line in log if line.startswith("truncated ")]
  assert reports == [f"truncated {cut} of {len(examples)} examples to train.seq_len={SEQ_LEN} "
                     f"tokens (from the right, the longer text first)"]


def test_a_classifier_from_a_padding_tokenizer_predicts_as_its_export_in_transformers(
    fine_tuned_bert, tmp_path, capsys):
  hf_dir, run, _, _ = fine_tuned_bert
  assert main(["convert", "lmjax-to-hf", str(run), str(tmp_path / "out")]) == 0
  texts = [TEXTS[0], TEXTS[1], TEXTS[1] + " " + TEXTS[1]]  # shorter and longer than FIXED
  capsys.readouterr()
  assert main(["predict", "--run-dir", str(run), *sum((["--text", t] for t in texts), [])]) == 0
  ours = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  model = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out"))
  lengths = [len(ids) for ids in theirs(texts)["input_ids"]]
  assert lengths[0] < FIXED < lengths[1] <= SEQ_LEN < lengths[2]
  batch = theirs(texts, truncation=True, max_length=SEQ_LEN, padding=True, return_tensors="pt")
  with torch.no_grad():
    probs = torch.softmax(model(**batch).logits, -1).numpy()
  labels = [model.config.id2label[i] for i in range(probs.shape[1])]
  assert np.ptp(probs[:, 0]) > 0.01  # the inputs tell apart: a test that can fail
  for row, mine in zip(probs, ours):
    np.testing.assert_allclose([mine["probabilities"][name] for name in labels], row,
                               atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def padded_gpt2(tmp_path_factory):
  """(HF GPT-2 directory whose byte-level BPE file pads and cuts to FIXED, the model)."""
  hf_dir = write_tokenizer(tmp_path_factory.mktemp("padded_gpt2"), "bpe")
  theirs = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=len(theirs), n_embd=32, n_layer=2, n_head=4, n_positions=128,
      initializer_range=0.3, bos_token_id=theirs.bos_token_id,
      eos_token_id=theirs.eos_token_id)).eval()
  model.save_pretrained(hf_dir)
  return hf_dir, model, theirs


def test_score_and_eval_see_every_token_of_a_long_document(padded_gpt2, tmp_path, capsys):
  hf_dir, model, theirs = padded_gpt2
  text = TEXTS[1]
  ids = [theirs.bos_token_id] + theirs(text, add_special_tokens=False)["input_ids"]
  assert FIXED < len(ids) <= 128
  with torch.no_grad():
    log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], -1)
  nll = -float(log_probs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
  docs = _jsonl(tmp_path / "docs.jsonl", [{"text": text}])
  capsys.readouterr()
  assert main(["score", str(docs), "--hf", str(hf_dir)]) == 0
  row = json.loads(capsys.readouterr().out)
  assert row["tokens"] == len(ids) - 1
  np.testing.assert_allclose(row["log_likelihood"], -nll, atol=1e-4, rtol=1e-4)
  assert main(["eval", "--hf", str(hf_dir), "--data", str(docs)]) == 0
  report = json.loads(capsys.readouterr().out)
  assert report["tokens"] == len(ids) - 1
  np.testing.assert_allclose(report["loss"], nll / (len(ids) - 1), atol=1e-4, rtol=1e-4)


def test_generate_continues_the_whole_prompt_as_transformers(padded_gpt2, capsys):
  hf_dir, model, theirs = padded_gpt2
  prompt = TEXTS[1]
  ids = theirs(prompt, return_tensors="pt")
  assert ids["input_ids"].shape[1] > FIXED, ids
  with torch.no_grad():
    out = model.generate(**ids, max_new_tokens=6, do_sample=False,
                         pad_token_id=theirs.pad_token_id)
  want = theirs.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
  capsys.readouterr()
  assert main(["generate", "--hf", str(hf_dir), "--prompt", prompt, "--temperature", "0",
               "--max-new-tokens", "6", "--no-stream"]) == 0
  got = capsys.readouterr().out
  assert want in got


def test_fine_tuning_refuses_a_new_tokenizer_for_a_source_that_has_its_own(padded_gpt2, tmp_path,
                                                                         capsys):
  """data.tokenizer=bpe with model.init_from a pretrained source would train a new vocabulary
  under the source's embeddings: refused, naming the fix, which works."""
  hf_dir, _, _ = padded_gpt2
  data = _jsonl(tmp_path / "docs.jsonl", [{"text": t} for t, _ in two_corpora()[:40]])
  args = ["train", "tiny-gpt", "--run-dir", str(tmp_path / "run"), "--set",
          f"model.init_from={hf_dir}", "data.source=jsonl", f"data.paths=[{data}]",
          "train.seq_len=32", "train.batch_size=4", "train.steps=1", "train.eval_every=0"]
  capsys.readouterr()
  assert main([*args, "data.tokenizer=bpe"]) == 2
  err = capsys.readouterr().err
  assert "data.tokenizer='bpe' would make a new one" in err and "data.tokenizer=null" in err
  assert not (tmp_path / "run").exists()
  assert main([*args, "data.tokenizer=null"]) == 0
  saved = Tokenizer.load(tmp_path / "run" / "tokenizer")
  assert saved.encode(TEXTS[1]) == Tokenizer.from_file(hf_dir).encode(TEXTS[1])
