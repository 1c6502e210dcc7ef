"""`data.source: hf_datasets`: datasets built here with the `datasets` library (save_to_disk and
local data files), read into the same pipeline as every other source, rows built on demand;
exact resume, two processes joined by `jax.distributed` on 127.0.0.1; mistakes named."""

import json
import pickle

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from lmjax.config import load_config  # noqa: E402
from lmjax.data.pipeline.dataset_rows import DatasetRows  # noqa: E402
from lmjax.data.examples.labelled import Fields, read_examples  # noqa: E402
from lmjax.data.sources.hf_datasets import TextColumn  # noqa: E402
from lmjax.data.pipeline.grain_pipeline import BatchIterator  # noqa: E402
from lmjax.data.rows import ConcatenatedRows  # noqa: E402
from lmjax.data.sources.documents import builtin_corpus, read_documents  # noqa: E402
from lmjax.errors import UserError  # noqa: E402
from lmjax.train.inputs import batch_sources, load_corpus  # noqa: E402
from lmjax.train.loop import train  # noqa: E402
from tests.conftest import TINY  # noqa: E402
from tests.processes import children, cpu_env, free_port  # noqa: E402

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
  datasets.Dataset.from_dict({"text": []}, features=datasets.Features(
      {"text": datasets.Value("string")})).save_to_disk(root / "empty")
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
    (["empty"], "train", "text", "holds no rows"),
    ([], "train", "text", "needs datasets in `data.paths`"),
])
def test_mistakes_name_what_the_dataset_has(saved, paths, split, field, message):
  with pytest.raises(UserError) as caught:
    read_documents(source="hf_datasets", paths=[saved / p for p in paths], split=split,
                   field=field)
  assert message in str(caught.value)


@pytest.fixture(scope="module")
def untidy(tmp_path_factory):
  """Random documents of 1 to 300 bytes (up to ~10 rows of 32 tokens), blank and null rows
  among them: saved with save_to_disk, as a JSON Lines file load_dataset reads, and as the
  same documents in the JSON Lines source (`documents.jsonl`, blank and null rows left out)."""
  root, rng = tmp_path_factory.mktemp("untidy"), np.random.default_rng(0)
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz     "))
  texts = ["".join(rng.choice(letters, size=rng.integers(1, 300))) for _ in range(150)]
  texts[3], texts[40], texts[41] = None, "   ", ""
  datasets.Dataset.from_dict({"text": texts}).save_to_disk(root / "saved")
  (root / "rows.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  (root / "documents.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts
                                                if t and t.strip()))
  return root


def hf_overrides(path) -> list[str]:
  return TINY + ["data.source=hf_datasets", f"data.paths=[{path}]", "data.eval_fraction=0.1"]


def every_row(corpus) -> dict[str, np.ndarray]:
  return {k: np.concatenate([part.take(np.arange(len(part)))[k]
                             for part in (corpus.train, corpus.held_out)])
          for k in ("input_ids", "segment_ids", "positions")}


@pytest.mark.parametrize("model", ["tiny-gpt", "tiny-bert"])  # text<eos>, <bos>text<eos>
@pytest.mark.parametrize("dataset", ["saved", "rows.jsonl"])
def test_rows_built_on_demand_are_the_rows_packing_in_memory_gives(untidy, model, dataset):
  on_demand = load_corpus(load_config(model, hf_overrides(untidy / dataset)))
  assert isinstance(on_demand.train, DatasetRows) and isinstance(on_demand.held_out, DatasetRows)
  in_memory = load_corpus(load_config(model, TINY + [
      "data.source=jsonl", f"data.paths=[{untidy / 'documents.jsonl'}]",
      "data.eval_fraction=0.1"]))
  assert (len(on_demand.train), len(on_demand.held_out)) == \
      (len(in_memory.train), len(in_memory.held_out))
  ours, theirs = every_row(on_demand), every_row(in_memory)
  for key in ours:
    np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
  # Rows in any order, repeated, or none: the same as the rows taken one by one.
  picked = np.array([5, 0, len(on_demand.train) - 1, 5])
  np.testing.assert_array_equal(on_demand.train.take(picked)["segment_ids"],
                                in_memory.train.take(picked)["segment_ids"])
  assert on_demand.train.take(np.zeros(0, np.int64))["input_ids"].shape == (0, 32)


def test_a_mixture_with_a_dataset_mixes_rows_held_in_memory_and_read_on_demand(untidy):
  documents = untidy / "documents.jsonl"
  mixed, plain = (load_corpus(load_config("tiny-gpt", TINY + [
      f"data.mixture=[{{source: jsonl, paths: [{documents}], weight: 1}}, "
      f"{{source: {kind}, paths: [{path}], weight: 2}}]"]))
      for kind, path in (("hf_datasets", untidy / "saved"), ("jsonl", documents)))
  assert isinstance(mixed.train, ConcatenatedRows)
  mixed_source, _ = batch_sources(load_config("tiny-gpt", TINY), mixed)
  np.testing.assert_array_equal(mixed.train.source_ids, plain.train.source_ids)
  for step in (0, 3):
    indices = mixed_source.row_indices(step)
    for key, value in mixed.train.take(indices).items():
      np.testing.assert_array_equal(value, plain.train.take(indices)[key], err_msg=key)


def test_a_batch_reads_only_the_documents_its_rows_hold(untidy, monkeypatch):
  corpus = load_corpus(load_config("tiny-gpt", hf_overrides(untidy / "saved")))
  read = []
  texts = TextColumn.texts
  monkeypatch.setattr(TextColumn, "texts", lambda self, rows: read.extend(rows) or
                      texts(self, rows))
  corpus.train.take(np.array([7, 100]))
  index = corpus.train.index
  begins = index.ends - np.diff(index.ends, prepend=0)
  # Each row's documents: those whose packed tokens overlap its 32 tokens, nothing else.
  wanted = set()
  for row in (7, 100):
    overlaps = (index.ends > row * 32) & (begins < row * 32 + 32)
    wanted |= set(index.doc_row[overlaps].tolist())
  assert sorted(read) == sorted(wanted) and 0 < len(read) < 10


def test_a_dataset_without_text_or_changed_under_a_run_is_explained(untidy, tmp_path,
                                                                    monkeypatch):
  datasets.Dataset.from_dict({"text": ["", None, "  \n"]}).save_to_disk(tmp_path / "blank")
  with pytest.raises(UserError, match="has no text: every row of column 'text'"):
    load_corpus(load_config("tiny-gpt", hf_overrides(tmp_path / "blank")))
  corpus = load_corpus(load_config("tiny-gpt", hf_overrides(untidy / "saved")))
  monkeypatch.setattr(TextColumn, "texts", lambda self, rows: ["edited " * 60] * len(rows))
  with pytest.raises(UserError, match="the dataset changed while the run was reading it"):
    corpus.train.take(np.array([0]))


def test_resuming_mid_epoch_gives_the_batches_of_an_uninterrupted_run(untidy):
  config = load_config("tiny-bert", hf_overrides(untidy / "rows.jsonl"))  # MLM masks too
  source, _ = batch_sources(config, load_corpus(config))
  steps_per_epoch = source.num_rows // source.batch_size
  stop, steps = steps_per_epoch // 2, steps_per_epoch + 3  # stop mid-epoch, run into the next
  positions = np.arange(source.batch_size)
  straight = BatchIterator(source, positions, num_steps=steps)
  expected = [next(straight) for _ in range(steps)]
  straight.close()
  first = BatchIterator(source, positions, num_steps=steps)
  for _ in range(stop):
    next(first)
  state = json.loads(json.dumps(first.state()))  # as a checkpoint stores it
  first.close()
  # Resumed on a pickled copy, as a Grain worker process gets it: the dataset reopens by path.
  copy = pickle.loads(pickle.dumps(source))
  assert copy.rows.index.columns[0]._view is None
  resumed = BatchIterator(copy, positions, num_steps=steps, state=state)
  got = [next(resumed) for _ in range(steps - stop)]
  resumed.close()
  for want, have in zip(expected[stop:], got, strict=True):
    for key in want:
      np.testing.assert_array_equal(have[key], want[key], err_msg=key)


def test_two_processes_get_the_global_batches_of_one(tmp_path, untidy):
  address = f"127.0.0.1:{free_port()}"
  with children(tmp_path) as group:
    for process_id in (0, 1):
      group.start(f"process{process_id}", [
          "tests/pipeline_worker.py", str(untidy / "saved"), str(tmp_path / f"{process_id}.npy"),
          address, str(process_id), "2", "hf_datasets"],
          cpu_env(1, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo"))
    group.check(timeout=120)
  config = load_config("tiny-gpt", TINY + ["data.source=hf_datasets",
                                           f"data.paths=[{untidy / 'saved'}]"])
  source, _ = batch_sources(config, load_corpus(config))
  steps = source.num_rows // source.batch_size
  glued = np.zeros((steps, source.batch_size, 32), np.int32)
  for process_id in (0, 1):
    rows = np.load(tmp_path / f"{process_id}.npy")
    positions = np.load(tmp_path / f"{process_id}.positions.npy")
    assert len(positions) == source.batch_size // 2  # each process holds half of each batch
    glued[:, positions] = rows.reshape(steps, len(positions), 32)
  for step in range(steps):
    np.testing.assert_array_equal(glued[step], source.batch(step)["input_ids"])
