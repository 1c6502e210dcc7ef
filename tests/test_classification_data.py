"""Labelled examples for the classify objective: sources, labels, encoding, the held-out split."""

import json

import numpy as np
import pytest

from lmjax.config import load_config
from lmjax.data.examples.classification import (encode_examples, example_tokenizer, label_set,
                                       stratified_split)
from lmjax.data.examples.labelled import Fields, read_examples
from lmjax.data.sources.documents import ReadStats
from lmjax.data.spec import BatchSpec, Objective
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.train.inputs import batch_sources, batch_spec, load_corpus
from tests.conftest import TINY

RECORDS = [("a fine film", "pos"), ("dull and long", "neg"), ("a joy", "pos"),
           ("not good", "neg"), ("superb acting", "pos"), ("boring", "neg")]


def write_jsonl(path, records, *, text="text", label="label"):
  path.write_text("".join(json.dumps({text: t, label: y}) + "\n" for t, y in records),
                  encoding="utf-8")
  return path


def classify_config(tmp_path, *extra, records=RECORDS, name="tiny-bert"):
  path = write_jsonl(tmp_path / "train.jsonl", records)
  return load_config(name, TINY + ["model.head=classification", "data.source=jsonl",
                                   f"data.paths=[{path}]", "data.eval_fraction=0.34",
                                   "train.batch_size=4", *extra])


# -- reading -------------------------------------------------------------------------------


def test_jsonl_csv_tsv_and_parquet_give_the_same_examples(tmp_path):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  write_jsonl(tmp_path / "d.jsonl", RECORDS)
  (tmp_path / "d.csv").write_text("label,text\n" + "".join(f'{y},"{t}"\n' for t, y in RECORDS))
  (tmp_path / "d.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in RECORDS))
  pq.write_table(pa.table({"text": [t for t, _ in RECORDS], "label": [y for _, y in RECORDS]}),
                 tmp_path / "d.parquet")
  expected = [t for t, _ in RECORDS], [y for _, y in RECORDS]
  for source, name in (("jsonl", "d.jsonl"), ("csv", "d.csv"), ("csv", "d.tsv"),
                       ("parquet", "d.parquet")):
    examples = read_examples(source, [str(tmp_path / name)], fields=Fields())
    assert (examples.texts, examples.labels) == expected, source
    assert examples.pairs is None and examples.where[0].startswith(str(tmp_path / name))


def test_integer_labels_compare_as_their_digits_and_sort_numerically(tmp_path):
  records = [("x", 10), ("y", 2), ("z", "2"), ("w", 1)]
  examples = read_examples("jsonl", [str(write_jsonl(tmp_path / "d.jsonl", records))],
                           fields=Fields())
  assert examples.labels == ["10", "2", "2", "1"]
  assert label_set(examples) == ("1", "2", "10")


@pytest.mark.parametrize("line, message", [
    ('{"text": "a"}', r"d.jsonl:2 has no field 'label'"),
    ('{"text": "a", "label": true}', r"d.jsonl:2: the label \(field 'label'\) is True"),
    ('{"text": 5, "label": "pos"}', r"d.jsonl:2: field 'text' holds int"),
    ('[1, 2]', r"d.jsonl:2 holds a JSON list"),
])
def test_a_bad_record_is_named_or_skipped(tmp_path, line, message):
  path = tmp_path / "d.jsonl"
  path.write_text('{"text": "ok", "label": "pos"}\n' + line + "\n", encoding="utf-8")
  with pytest.raises(UserError, match=message):
    read_examples("jsonl", [str(path)], fields=Fields())
  stats = ReadStats()
  skipped = read_examples("jsonl", [str(path)], fields=Fields(bad_records="skip"), stats=stats)
  assert skipped.texts == ["ok"] and stats.skipped == 1


def test_a_missing_csv_column_lists_the_columns(tmp_path):
  (tmp_path / "d.csv").write_text("review,stars\ngood,5\n")
  with pytest.raises(UserError, match=r"no column 'text' \(columns: 'review', 'stars'\)"):
    read_examples("csv", [str(tmp_path / "d.csv")], fields=Fields())


def test_unlabelled_sources_are_refused(tmp_path):
  with pytest.raises(UserError, match="holds no labels"):
    read_examples("builtin", [], fields=Fields())


# -- labels and the split -------------------------------------------------------------------


def test_labels_come_from_the_training_data_sorted_and_are_saved_in_the_config(tmp_path):
  config = classify_config(tmp_path)
  corpus = load_corpus(config)
  assert corpus.labels == ("neg", "pos")
  resolved = config.with_labels(corpus.labels)
  assert resolved.data.labels == ("neg", "pos") and resolved.model.num_labels == 2


def test_a_label_outside_data_labels_is_named(tmp_path):
  config = classify_config(tmp_path, "data.labels=[neg, pos]",
                           records=RECORDS + [("meh", "neutral")])
  with pytest.raises(UserError, match=r"train.jsonl:7: the training data has the label "
                                      r"'neutral', which is not one of the run's labels"):
    load_corpus(config)


def test_a_held_out_file_with_an_unknown_label_is_named(tmp_path):
  held = write_jsonl(tmp_path / "test.jsonl", [("fine", "pos"), ("odd", "other")])
  config = classify_config(tmp_path, f"data.eval_paths=[{held}]")
  with pytest.raises(UserError, match=r"test.jsonl:2: the held-out data has the label 'other'"):
    load_corpus(config)


def test_a_single_class_training_split_is_refused(tmp_path):
  config = classify_config(tmp_path, records=[(t, "pos") for t, _ in RECORDS])
  with pytest.raises(UserError, match="one label only"):
    load_corpus(config)


def test_num_labels_must_agree_with_the_labels(tmp_path):
  with pytest.raises(UserError, match=r"model.num_labels=3 disagrees with the 2 labels"):
    classify_config(tmp_path, "data.labels=[neg, pos]", "model.num_labels=3")
  config = classify_config(tmp_path, "model.num_labels=3")
  with pytest.raises(UserError, match=r"model.num_labels=3 disagrees with the 2 labels"):
    config.with_labels(load_corpus(config).labels)


def test_the_held_out_split_is_stratified_seeded_and_disjoint(tmp_path):
  records = [(f"text {i}", "a" if i % 4 else "b") for i in range(400)]  # 300 a, 100 b
  examples = read_examples("jsonl", [str(write_jsonl(tmp_path / "d.jsonl", records))],
                           fields=Fields())
  train, held = stratified_split(examples, ("a", "b"), fraction=0.1, seed=0)
  assert (held.labels.count("a"), held.labels.count("b")) == (30, 10)
  assert sorted(train.texts + held.texts) == sorted(examples.texts)
  again, _ = stratified_split(examples, ("a", "b"), fraction=0.1, seed=0)
  other, _ = stratified_split(examples, ("a", "b"), fraction=0.1, seed=1)
  assert again.texts == train.texts and other.texts != train.texts
  assert held.where == sorted(held.where, key=lambda w: int(w.rsplit(":", 1)[1]))  # file order


# -- encoding -------------------------------------------------------------------------------


def spec(*, bidirectional=True, token_types=True, seq_len=16):
  return BatchSpec(Objective.CLASSIFY, seq_len=seq_len, batch_size=2, seed=0, vocab_size=288,
                   bidirectional=bidirectional, token_types=token_types)


def test_pairs_encode_as_cls_a_sep_b_sep_with_token_types_for_encoders():
  tokenizer = example_tokenizer(Tokenizer.byte_level(), spec())
  bos, eos = tokenizer.bos_id, tokenizer.eos_id
  ids, types, cut = tokenizer.encode_example("ab", "c", max_length=16)
  a, b, c = (tokenizer.encode(x)[0] for x in "abc")
  assert ids == [bos, a, b, eos, c, eos] and types == [0, 0, 0, 0, 1, 1] and not cut
  untyped = example_tokenizer(Tokenizer.byte_level(), spec(token_types=False))
  assert untyped.encode_example("ab", "c", max_length=16)[1] == [0] * 6
  decoder = example_tokenizer(Tokenizer.byte_level(), spec(bidirectional=False))
  assert decoder.encode_example("ab", max_length=16)[0] == [a, b]  # decoders: the text itself


def test_truncation_cuts_from_the_right_longer_text_first_and_is_counted(tmp_path):
  tokenizer = example_tokenizer(Tokenizer.byte_level(), spec())
  ids, types, cut = tokenizer.encode_example("abcdefgh", "xy", max_length=8)
  assert cut and len(ids) == 8  # 3 special tokens, then 5 of text: "abc" and "xy"
  text_ids = [i for i, t in zip(ids, types) if t == 0][1:-1]
  pair_ids = [i for i, t in zip(ids, types) if t == 1][:-1]
  assert tokenizer.decode(text_ids) == "abc" and tokenizer.decode(pair_ids) == "xy"
  config = classify_config(tmp_path, "train.seq_len=8", "model.max_seq_len=8",
                           records=[(t * 5, y) for t, y in RECORDS])
  assert load_corpus(config).truncated == len(RECORDS)


def test_a_bert_tokenizer_encodes_examples_as_transformers_does(tmp_path):
  transformers = pytest.importorskip("transformers")
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a",
           "dog", "##s", "ran"]
  (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  hf = transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
  hf.save_pretrained(tmp_path / "tok")
  ours = example_tokenizer(Tokenizer.from_file(tmp_path / "tok"), spec())
  for text, pair, length in (("the cat sat on the mat", None, 32), ("the dogs ran", "a cat", 32),
                             ("the cat sat on the mat", "a dog ran on the mat", 9)):
    expected = hf(text, pair, truncation=True, max_length=length)
    ids, types, _ = ours.encode_example(text, pair, max_length=length)
    assert ids == expected["input_ids"] and types == expected["token_type_ids"], (text, pair)


def test_rows_are_padded_one_example_each_with_label_indices(tmp_path):
  tokenizer = example_tokenizer(Tokenizer.byte_level(), spec())
  examples = read_examples("jsonl", [str(write_jsonl(tmp_path / "d.jsonl", RECORDS[:2]))],
                           fields=Fields())
  rows, cut = encode_examples(tokenizer, examples, ("neg", "pos"), spec(seq_len=16))
  assert rows["labels"].tolist() == [1, 0] and cut == 0
  length = len("a fine film") + 2
  assert rows["segment_ids"][0].tolist() == [1] * length + [0] * (16 - length)
  assert rows["positions"][0, :length].tolist() == list(range(length))
  assert (rows["input_ids"][0, length:] == tokenizer.pad_id).all()


def test_evaluation_batches_visit_each_held_out_example_once(tmp_path):
  config = classify_config(tmp_path, "data.eval_fraction=0.6",
                           records=[(f"t{i}", "ab"[i % 2]) for i in range(10)])
  _, held_out = batch_sources(config, load_corpus(config))
  assert held_out.num_rows == 6 and held_out.eval_batches(99) == 2  # batches of 4
  labels = np.concatenate([held_out.batch(i, shuffle=False)["labels"] for i in range(2)])
  assert (labels[6:] == -1).all() and sorted(labels[:6].tolist()) == [0, 0, 0, 1, 1, 1]


def test_the_batch_spec_follows_the_model(tmp_path):
  assert batch_spec(classify_config(tmp_path)).bidirectional
  gpt = batch_spec(classify_config(tmp_path, name="tiny-gpt"))
  assert gpt.objective is Objective.CLASSIFY and not gpt.bidirectional and not gpt.token_types
