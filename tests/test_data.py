"""The data layer: document sources, tokenizers and packing."""

import json

import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

from lmjax.data import Tokenizer, builtin_corpus, pack_documents, pad_and_stack, read_documents
from lmjax.errors import UserError

UNICODE_SAMPLES = [
    "",
    "plain ascii",
    "héllo wörld — ünïcödé",
    "emoji 🙂👍🏽 and 🇫🇷 flags",
    "line\nbreaks\n\nand\r\nCRLF\tand tabs  ",
    "  leading and trailing spaces  ",
    "日本語のテキスト、中文文本",
    "\x00 control \x1b bytes \u2028 separators \ufeff",
    "literal specials <eos> <pad> [MASK] stay text",
]


@pytest.fixture(scope="module")
def corpus():
  return builtin_corpus()


@pytest.fixture(scope="module")
def bpe(corpus):
  return Tokenizer.train_bpe(corpus, vocab_size=512)


# -- sources ----------------------------------------------------------------------------------


def test_builtin_corpus_is_nonempty_and_deterministic(corpus):
  assert len(corpus) > 10
  assert all(doc and doc == doc.strip() for doc in corpus)
  assert corpus == builtin_corpus()
  assert read_documents(source="builtin", paths=["ignored"]) == corpus


def test_text_source_reads_one_document_per_file_in_sorted_glob_order(tmp_path):
  (tmp_path / "b.txt").write_text("second file\n\nwith a paragraph", encoding="utf-8")
  (tmp_path / "a.txt").write_text("first file", encoding="utf-8")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "c.txt").write_text("nested", encoding="utf-8")
  docs = read_documents(source="text", paths=[str(tmp_path / "*.txt")])
  assert docs == ["first file", "second file\n\nwith a paragraph"]
  docs = read_documents(source="text", paths=[str(tmp_path / "**" / "*.txt")])
  assert docs == ["first file", "second file\n\nwith a paragraph", "nested"]
  # Patterns keep their order; a file named twice is read once.
  docs = read_documents(source="text", paths=[str(tmp_path / "b.txt"), str(tmp_path / "*.txt")])
  assert docs == ["second file\n\nwith a paragraph", "first file"]


def test_jsonl_source_reads_field_of_each_line_and_skips_blank_lines(tmp_path):
  path = tmp_path / "data.jsonl"
  path.write_text('{"text": "one", "id": 1}\n\n{"text": "two\\nlines"}\n  \n'
                  '{"body": "x", "text": "line sep \u2028 inside"}\n', encoding="utf-8")
  assert read_documents(source="jsonl", paths=[str(path)]) == [
      "one", "two\nlines", "line sep \u2028 inside"]
  other = tmp_path / "other.jsonl"
  other.write_text('{"body": "b"}\n', encoding="utf-8")
  assert read_documents(source="jsonl", paths=[str(other)], field="body") == ["b"]


def test_utf8_byte_order_mark_is_dropped(tmp_path):
  path = tmp_path / "bom.txt"
  path.write_bytes(b"\xef\xbb\xbfhello")
  assert read_documents(source="text", paths=[str(path)]) == ["hello"]


def test_encoding_errors_replace_substitutes_replacement_character(tmp_path):
  path = tmp_path / "latin1.txt"
  path.write_bytes("café".encode("latin-1"))
  assert read_documents(source="text", paths=[str(path)], encoding_errors="replace") == [
      "caf\ufffd"]


def _user_error(**kwargs) -> str:
  with pytest.raises(UserError) as info:
    read_documents(**kwargs)
  return str(info.value)


def test_unknown_source_lists_the_valid_ones():
  message = _user_error(source="parquet-ish")
  assert "parquet-ish" in message
  for valid in ("builtin", "text", "jsonl"):
    assert valid in message


def test_unknown_encoding_errors_value_is_a_user_error():
  assert "ignore" in _user_error(source="builtin", encoding_errors="ignore")


def test_missing_paths_and_unmatched_globs_are_named(tmp_path):
  assert "data.paths" in _user_error(source="text", paths=[])
  missing = str(tmp_path / "nothing-*.txt")
  assert missing in _user_error(source="text", paths=[missing])
  assert str(tmp_path) in _user_error(source="text", paths=[str(tmp_path)])  # a directory


def test_empty_file_is_named(tmp_path):
  path = tmp_path / "empty.txt"
  path.write_text("", encoding="utf-8")
  message = _user_error(source="text", paths=[str(path)])
  assert "empty.txt" in message and "empty" in message


def test_non_utf8_file_names_file_offset_and_the_replace_option(tmp_path):
  path = tmp_path / "latin1.txt"
  path.write_bytes("ok\ncafé".encode("latin-1"))
  message = _user_error(source="text", paths=[str(path)])
  assert "latin1.txt" in message
  assert "offset 6" in message and "line 2" in message
  assert "data.encoding_errors: replace" in message
  jsonl = tmp_path / "bad.jsonl"
  jsonl.write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
  message = _user_error(source="jsonl", paths=[str(jsonl)])
  assert "bad.jsonl" in message and "line 2" in message


def test_jsonl_line_that_is_not_json_is_named_with_its_line(tmp_path):
  path = tmp_path / "broken.jsonl"
  path.write_text('{"text": "fine"}\n\n{"text": oops}\n', encoding="utf-8")
  assert f"{path}:3" in _user_error(source="jsonl", paths=[str(path)])
  path.write_text('["a list"]\n', encoding="utf-8")
  assert f"{path}:1" in _user_error(source="jsonl", paths=[str(path)])


def test_jsonl_missing_or_non_string_field_names_line_field_and_keys(tmp_path):
  path = tmp_path / "fields.jsonl"
  path.write_text('{"text": "fine"}\n{"content": "x", "id": 7}\n', encoding="utf-8")
  message = _user_error(source="jsonl", paths=[str(path)])
  assert f"{path}:2" in message and "'text'" in message
  assert "'content'" in message and "'id'" in message
  path.write_text('{"text": null}\n', encoding="utf-8")
  message = _user_error(source="jsonl", paths=[str(path)])
  assert f"{path}:1" in message and "NoneType" in message and "'text'" in message


def test_source_without_documents_is_a_user_error(tmp_path):
  path = tmp_path / "blank.jsonl"
  path.write_text("\u00a0\n\u00a0\n", encoding="utf-8")  # not empty bytes, but only blank lines
  assert "no documents" in _user_error(source="jsonl", paths=[str(path)])


# -- tokenizers -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", UNICODE_SAMPLES)
def test_byte_level_round_trips_any_unicode(text):
  tok = Tokenizer.byte_level()
  ids = tok.encode(text)
  assert len(ids) == len(text.encode("utf-8"))
  assert tok.decode(ids) == text


def test_byte_level_layout_and_roles():
  tok = Tokenizer.byte_level()
  assert tok.vocab_size == 261
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.mask_id, tok.unk_id) == (0, 1, 2, 3, 4)
  assert tok.cls_id is None and tok.sep_id is None
  assert tok.special_ids == frozenset(range(5))
  assert tok.encode("A\n") == [5 + ord("A"), 5 + ord("\n")]
  assert tok.id_to_token(0) == "<pad>" and tok.token_to_id("<eos>") == 1


def test_special_spellings_in_text_are_text_unless_asked():
  tok = Tokenizer.byte_level()
  assert tok.eos_id not in tok.encode("a <eos> b")
  assert tok.encode("a<eos>", parse_special_tokens=True) == tok.encode("a") + [tok.eos_id]
  assert tok.eos_id not in tok.encode_batch(["<eos>"])[0]
  ids = tok.encode("hi") + [tok.eos_id]
  assert tok.decode(ids) == "hi"
  assert tok.decode(ids, skip_special_tokens=False) == "hi<eos>"


def test_bpe_trained_on_builtin_corpus_compresses_and_round_trips(bpe, corpus):
  assert bpe.vocab_size <= 512
  assert (bpe.pad_id, bpe.eos_id, bpe.bos_id, bpe.mask_id, bpe.unk_id) == (0, 1, 2, 3, 4)
  sample = corpus[:20]
  encoded = bpe.encode_batch(sample)
  assert encoded == [bpe.encode(doc) for doc in sample]
  assert [bpe.decode(ids) for ids in encoded] == sample
  assert sum(map(len, encoded)) < 0.75 * sum(len(doc.encode("utf-8")) for doc in sample)
  for text in UNICODE_SAMPLES:  # text unlike the corpus still encodes, byte by byte
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_vocab_size_below_byte_alphabet_is_a_user_error():
  with pytest.raises(UserError, match="261"):
    Tokenizer.train_bpe(["some text"], vocab_size=100)


def test_save_load_round_trip_preserves_ids_and_roles(bpe, tmp_path):
  bpe.save(tmp_path / "tok")
  assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [
      "tokenizer.json", "tokenizer_config.json"]
  loaded = Tokenizer.load(tmp_path / "tok")
  text = "def f(x):\n  return x  # 🙂"
  assert loaded.encode(text) == bpe.encode(text)
  assert loaded.vocab_size == bpe.vocab_size
  assert loaded.special_ids == bpe.special_ids
  assert loaded.roles == bpe.roles
  assert (loaded.pad_id, loaded.eos_id, loaded.bos_id, loaded.mask_id) == (0, 1, 2, 3)


def test_saved_tokenizer_json_loads_in_transformers(bpe, tmp_path):
  transformers = pytest.importorskip("transformers")
  bpe.save(tmp_path)
  fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
  text = "Unicode ✓ and code: x = [1, 2]\n"
  assert fast(text, add_special_tokens=False)["input_ids"] == bpe.encode(text)
  assert fast.decode(bpe.encode(text)) == text


def test_load_without_tokenizer_config_falls_back_to_common_spellings(tmp_path):
  Tokenizer.byte_level().save(tmp_path)
  (tmp_path / "tokenizer_config.json").unlink()
  tok = Tokenizer.load(tmp_path)
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.mask_id, tok.unk_id) == (0, 1, 2, 3, 4)


def _write_wordpiece_hf_dir(directory, config):
  """A small BERT-like HF tokenizer directory: tokenizer.json + tokenizer_config.json."""
  vocab = {t: i for i, t in enumerate(
      ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "!", "</s>"])}
  hf = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
  hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  hf.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
  directory.mkdir(parents=True, exist_ok=True)
  hf.save(str(directory / "tokenizer.json"))
  if config is not None:
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
  return hf


def test_from_file_reads_roles_from_hf_tokenizer_config(tmp_path):
  config = {"pad_token": "[PAD]", "mask_token": {"content": "[MASK]", "__type": "AddedToken"},
            "cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]",
            "eos_token": "<not-in-vocab>"}
  hf = _write_wordpiece_hf_dir(tmp_path / "bert", config)
  for path in (tmp_path / "bert", tmp_path / "bert" / "tokenizer.json"):
    tok = Tokenizer.from_file(path)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.eos_id is None  # named by the config but absent from the vocabulary
    assert tok.bos_id is None  # "</s>" is in the vocabulary, but the config decides
    assert tok.encode("hello world!") == hf.encode("hello world!", add_special_tokens=False).ids
    assert tok.encode("hello [MASK]", parse_special_tokens=True) == [5, 4]


def test_from_file_without_config_recognises_common_spellings(tmp_path):
  _write_wordpiece_hf_dir(tmp_path / "bare", config=None)
  tok = Tokenizer.from_file(tmp_path / "bare")
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.eos_id) == (
      0, 1, 2, 3, 4, 8)


def test_from_file_on_directory_saved_by_transformers(tmp_path):
  transformers = pytest.importorskip("transformers")
  hf = _write_wordpiece_hf_dir(tmp_path / "src", config=None)
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=hf, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
      sep_token="[SEP]", mask_token="[MASK]")
  fast.save_pretrained(tmp_path / "saved")
  tok = Tokenizer.from_file(tmp_path / "saved")
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.encode("hello world") == fast("hello world", add_special_tokens=False)["input_ids"]


def test_no_pad_token_falls_back_to_eos_then_zero(tmp_path):
  hf = tokenizers.Tokenizer(models.WordLevel({"a": 0, "b": 1, "</s>": 2}, unk_token=None))
  assert Tokenizer(hf, roles={"eos": "</s>"}).pad_id == 2
  assert Tokenizer(hf, roles={}).pad_id == 0


def test_missing_tokenizer_file_names_the_path(tmp_path):
  with pytest.raises(UserError, match="nowhere"):
    Tokenizer.from_file(tmp_path / "nowhere")
  with pytest.raises(UserError, match="nowhere"):
    Tokenizer.load(tmp_path / "nowhere")
  (tmp_path / "garbage.json").write_text("{not json", encoding="utf-8")
  with pytest.raises(UserError, match="garbage.json"):
    Tokenizer.from_file(tmp_path / "garbage.json")


# -- packing ----------------------------------------------------------------------------------


def _pieces(batch):
  """(row, segment) -> (token ids, positions) for every non-padding piece, in row order."""
  out = []
  for ids, segs, pos in zip(batch["input_ids"], batch["segment_ids"], batch["positions"]):
    for seg in range(1, segs.max() + 1):
      where = segs == seg
      out.append((ids[where].tolist(), pos[where].tolist()))
  return out


def test_packing_keeps_every_token_once_in_order_and_restarts_positions():
  rng = np.random.default_rng(0)
  docs = [rng.integers(10, 100, size=n).tolist() for n in (3, 1, 17, 0, 8, 40, 5, 2)]
  seq_len = 16
  batch = pack_documents(docs, seq_len=seq_len, eos_id=1, bos_id=2)
  assert set(batch) == {"input_ids", "segment_ids", "positions"}
  for array in batch.values():
    assert array.dtype == np.int32 and array.shape[1] == seq_len
  expected = [t for doc in docs for t in [2, *doc, 1]]
  is_token = batch["segment_ids"] > 0
  assert batch["input_ids"][is_token].tolist() == expected
  for ids, positions in _pieces(batch):
    assert positions == list(range(len(ids)))
    assert len(ids) <= seq_len
  # Only the tail of the last row is padding, and padding is all zeros.
  assert is_token[:-1].all()
  last_row = is_token[-1].tolist()
  assert last_row == sorted(last_row, reverse=True)
  for array in batch.values():
    assert (array[~is_token] == 0).all()


def test_packing_splits_over_long_documents_across_rows():
  doc = list(range(10, 35))  # 25 tokens + eos = 26 tokens over rows of 8
  batch = pack_documents([doc, [7]], seq_len=8, eos_id=1)
  assert batch["input_ids"].shape == (4, 8)
  assert batch["input_ids"][batch["segment_ids"] > 0].tolist() == doc + [1, 7, 1]
  assert batch["segment_ids"].tolist() == [
      [1] * 8, [1] * 8, [1] * 8, [1, 1, 2, 2, 0, 0, 0, 0]]
  assert batch["positions"][3].tolist() == [0, 1, 0, 1, 0, 0, 0, 0]


def test_packing_without_eos_or_bos_and_exact_fit():
  batch = pack_documents([[5, 6], [7, 8]], seq_len=2, eos_id=None)
  assert batch["input_ids"].tolist() == [[5, 6], [7, 8]]
  assert batch["segment_ids"].tolist() == [[1, 1], [1, 1]]


def test_packing_rejects_empty_input_and_bad_seq_len():
  with pytest.raises(UserError):
    pack_documents([], seq_len=8, eos_id=1)
  with pytest.raises(UserError):
    pack_documents([[], []], seq_len=8, eos_id=None)
  with pytest.raises(UserError, match="seq_len"):
    pack_documents([[1]], seq_len=0, eos_id=1)


def test_pad_and_stack_truncates_and_pads_one_document_per_row():
  batch = pad_and_stack([[5, 6, 7], list(range(10, 20)), []], seq_len=4, pad_id=9)
  assert batch["input_ids"].tolist() == [[5, 6, 7, 9], [10, 11, 12, 13], [9, 9, 9, 9]]
  assert batch["segment_ids"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
  assert batch["positions"].tolist() == [[0, 1, 2, 0], [0, 1, 2, 3], [0, 0, 0, 0]]
  assert all(a.dtype == np.int32 for a in batch.values())
  with pytest.raises(UserError):
    pad_and_stack([], seq_len=4, pad_id=0)


# -- Parquet ----------------------------------------------------------------------------------


def _write_parquet(path, columns, row_group_size=2):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq
  columns = {k: pa.array(v[1], type=getattr(pa, v[0])()) if isinstance(v, tuple) else v
             for k, v in columns.items()}  # (type name, values) for columns of only nulls
  pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
  return str(path)


def test_parquet_rows_become_documents_in_order_and_nulls_are_skipped(tmp_path):
  path = _write_parquet(tmp_path / "a.parquet", {"body": ["one", None, "two", "three", "four"],
                                                 "id": [1, 2, 3, 4, 5]})
  assert read_documents(source="parquet", paths=[path], field="body") == [
      "one", "two", "three", "four"]


@pytest.mark.parametrize("columns, field, expected", [
    ({"body": ["x"]}, "text", "has no column 'text' (columns: 'body')"),
    ({"body": [1, 2]}, "body", "holds int64, not strings"),
    ({"body": ("string", [None, None])}, "body", "has no text"),
])
def test_parquet_mistakes_name_the_file_and_column(tmp_path, columns, field, expected):
  path = _write_parquet(tmp_path / "bad.parquet", columns)
  with pytest.raises(UserError) as info:
    read_documents(source="parquet", paths=[path], field=field)
  assert expected in str(info.value) and "bad.parquet" in str(info.value)


def test_a_file_that_is_not_parquet_is_named(tmp_path):
  pytest.importorskip("pyarrow")
  path = tmp_path / "fake.parquet"
  path.write_text("not parquet at all")
  with pytest.raises(UserError, match="fake.parquet.*not a readable Parquet file"):
    read_documents(source="parquet", paths=[str(path)])
