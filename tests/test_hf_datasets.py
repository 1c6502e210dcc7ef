"""`data.source: hf_datasets`: datasets built here with the `datasets` library (save_to_disk and
local data files), read into the same pipeline as every other source; mistakes named."""

import json

import pytest

datasets = pytest.importorskip("datasets")

from lmjax.config import load_config  # noqa: E402
from lmjax.data.examples import Fields, read_examples  # noqa: E402
from lmjax.data.sources import builtin_corpus, read_documents  # noqa: E402
from lmjax.errors import UserError  # noqa: E402
from lmjax.train.loop import train  # noqa: E402
from tests.conftest import TINY  # noqa: E402

TEXTS = [t for t in builtin_corpus()[:60] if t.strip()]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A DatasetDict (train, test) and a single Dataset, saved with save_to_disk."""
  root = tmp_path_factory.mktemp("datasets")
  labels = [n % 2 for n in range(len(TEXTS))]
  splits = datasets.DatasetDict({
      "train": datasets.Dataset.from_dict({"text": TEXTS[:50], "label": labels[:50],
                                           "length": [len(t) for t in TEXTS[:50]]}),
      "test": datasets.Dataset.from_dict({"text": TEXTS[50:], "label": labels[50:],
                                          "length": [len(t) for t in TEXTS[50:]]})})
  splits.save_to_disk(root / "dict")
  splits["train"].save_to_disk(root / "single")
  return root


def test_documents_come_from_a_saved_split_in_order(saved):
  assert read_documents(source="hf_datasets", paths=[saved / "dict"]) == TEXTS[:50]
  assert read_documents(source="hf_datasets", paths=[saved / "dict"], split="test") == TEXTS[50:]
  assert read_documents(source="hf_datasets", paths=[saved / "dict"],
                        split="train[:20%]") == TEXTS[:10]
  assert read_documents(source="hf_datasets", paths=[saved / "single"]) == TEXTS[:50]


def test_load_dataset_reads_local_data_files(tmp_path):
  (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in TEXTS[:5]))
  assert read_documents(source="hf_datasets", paths=[tmp_path / "a.jsonl"],
                        field="body") == TEXTS[:5]
  folder = tmp_path / "folder"
  folder.mkdir()
  datasets.Dataset.from_dict({"text": TEXTS[:7]}).to_parquet(folder / "part-0.parquet")
  assert read_documents(source="hf_datasets", paths=[folder]) == TEXTS[:7]


def test_training_on_a_dataset_is_training_on_the_same_documents(saved, tmp_path):
  """The same documents from a saved dataset and from a JSON Lines file give the same run."""
  (tmp_path / "same.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                               for t in TEXTS[:50]))
  common = TINY + ["train.steps=6", "train.log_every=2", "train.eval_every=6"]
  losses = {}
  for name, data in {"datasets": ["data.source=hf_datasets", f"data.paths=[{saved / 'dict'}]"],
                     "jsonl": ["data.source=jsonl", f"data.paths=[{tmp_path / 'same.jsonl'}]"]
                     }.items():
    train(load_config("tiny-gpt", common + data), tmp_path / name)
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().split("\n")
            if line]
    losses[name] = [(r["step"], r.get("loss"), r.get("eval_loss")) for r in rows]
  assert losses["datasets"] == losses["jsonl"] and len(losses["jsonl"]) >= 3


def test_labelled_examples_and_their_held_out_split(saved):
  fields = Fields(text="text", label="label")
  train_examples = read_examples("hf_datasets", [str(saved / "dict")], fields=fields)
  test_examples = read_examples("hf_datasets", [str(saved / "dict")], fields=fields,
                                split="test")
  assert train_examples.texts == TEXTS[:50] and test_examples.texts == TEXTS[50:]
  assert train_examples.labels == [str(n % 2) for n in range(50)]  # labels are compared as text
  assert train_examples.where[3].endswith("[train] row 3")


@pytest.mark.parametrize("paths, split, field, message", [
    (["dict"], "validation", "text", "has no split 'validation'; it has 'train', 'test'"),
    (["dict"], "train", "body", "has no column 'body' (columns: 'text', 'label', 'length')"),
    (["dict"], "train", "length", "holds int64, not strings"),
    (["single"], "test", "text", "is a single split"),
    (["missing"], "train", "text", "does not exist"),
    ([], "train", "text", "needs datasets in `data.paths`"),
])
def test_mistakes_name_what_the_dataset_has(saved, paths, split, field, message):
  with pytest.raises(UserError) as caught:
    read_documents(source="hf_datasets", paths=[saved / p for p in paths], split=split,
                   field=field)
  assert message in str(caught.value)
