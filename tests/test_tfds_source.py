"""TFDS datasets built for real in temporary data_dirs, in both file formats.

array_record datasets are read through `tfds.data_source`, without TensorFlow; tfrecord datasets
through TensorFlow (the `tfrecord` extra). Each format is built once per module: importing
TensorFlow and building take seconds.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from lmjax.config import load_config
from lmjax.data.sources.documents import ReadStats, read_documents
from lmjax.errors import UserError
from lmjax.train.loop import train
from tests.conftest import TINY
from tests.tfds_tiny import TEST_TEXTS, TRAIN_TEXTS, LmjaxTinyText

FORMATS = ["array_record", "tfrecord"]
HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory) -> dict[str, str]:
  """The dataset prepared once in each file format (tfrecord only where TensorFlow is installed)."""
  directories = {}
  for file_format in FORMATS:
    if file_format == "tfrecord" and not HAS_TENSORFLOW:
      continue
    directory = str(tmp_path_factory.mktemp(file_format))
    LmjaxTinyText(data_dir=directory, file_format=file_format).download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=2))
    directories[file_format] = directory
  return directories


@pytest.fixture(params=FORMATS)
def data_dir(request, data_dirs) -> str:
  if request.param not in data_dirs:
    pytest.skip("tfrecord datasets need TensorFlow: pip install 'lmjax[tfrecord]'")
  return data_dirs[request.param]


def test_splits_read_every_generated_document(data_dir):
  docs = read_documents(source="tfds", paths=["lmjax_tiny_text:1.0.0"], split="train",
                        data_dir=data_dir)
  assert sorted(docs) == sorted(TRAIN_TEXTS)
  assert sorted(read_documents(source="tfds", paths=["lmjax_tiny_text"], split="test",
                               data_dir=data_dir)) == sorted(TEST_TEXTS)


@pytest.mark.skipif(not HAS_TENSORFLOW, reason="tfrecord datasets need TensorFlow")
def test_both_formats_give_the_stored_order(data_dirs):
  def read(file_format, split):
    return read_documents(source="tfds", paths=["lmjax_tiny_text"], split=split,
                          data_dir=data_dirs[file_format])
  for split in ("train", "test"):
    assert read("tfrecord", split) == read("array_record", split)
  assert read("tfrecord", "train") != TRAIN_TEXTS  # TFDS stores examples shuffled by key


def test_bytes_that_are_not_utf8_follow_encoding_errors(data_dir):
  with pytest.raises(UserError, match="is not valid UTF-8"):
    read_documents(source="tfds", paths=["lmjax_tiny_text"], split="latin1", data_dir=data_dir)
  assert sorted(read_documents(source="tfds", paths=["lmjax_tiny_text"], split="latin1",
                               data_dir=data_dir, encoding_errors="replace")) == [
                                   "caf\ufffd au lait", "cr\ufffdme"]
  stats = ReadStats()  # data.bad_records=skip leaves them out and counts them
  with pytest.raises(UserError, match="yielded no documents.*or skipped"):
    read_documents(source="tfds", paths=["lmjax_tiny_text"], split="latin1", data_dir=data_dir,
                   bad_records="skip", stats=stats)
  assert stats.skipped == 2 and "is not valid UTF-8" in stats.first_problem


@pytest.mark.parametrize("kwargs, expected", [
    (dict(paths=["no_such_dataset"]), "TFDS dataset 'no_such_dataset' is not prepared in"),
    (dict(paths=["lmjax_tiny_text:9.9.9"]), "'lmjax_tiny_text:9.9.9' is not prepared in"),
    (dict(paths=["lmjax_tiny_text"], split="validation"), "has no split 'validation'"),
    (dict(paths=["lmjax_tiny_text"], field="body"), "has no feature 'body' (features: "),
    (dict(paths=["lmjax_tiny_text"], field="label"), "not text"),
])
def test_tfds_mistakes_are_explained(data_dir, kwargs, expected):
  with pytest.raises(UserError) as info:
    read_documents(source="tfds", data_dir=data_dir, **{"split": "train", **kwargs})
  assert expected in str(info.value)


def test_a_data_dir_without_the_dataset_is_named(tmp_path):
  with pytest.raises(UserError, match=f"'lmjax_tiny_text' is not prepared in {tmp_path}"):
    read_documents(source="tfds", paths=["lmjax_tiny_text"], data_dir=str(tmp_path))


def test_training_reads_a_tfds_dataset(data_dir, tmp_path):
  config = load_config("tiny-gpt", TINY + [
      "data.source=tfds", "data.paths=[lmjax_tiny_text]", f"data.data_dir={data_dir}",
      "train.steps=2", "train.eval_every=0"])
  result = train(config, tmp_path)
  assert result.final_step == 2


# In a fresh process: the array_record path must work for users without TensorFlow; a tfrecord
# dataset is then refused with the install advice, and read once TensorFlow can be imported.
FRESH_PROCESS = textwrap.dedent("""
    import sys
    from lmjax.data.sources.documents import ReadStats, read_documents
    from lmjax.errors import UserError
    array_record, tfrecord = sys.argv[1:]
    docs = read_documents(source="tfds", paths=["lmjax_tiny_text"], data_dir=array_record)
    assert len(docs) == 40, len(docs)
    assert "tensorflow" not in sys.modules, "reading array_record imported tensorflow"
    if tfrecord:
      sys.modules["tensorflow"] = None  # as if it were not installed: importing it fails
      try:
        read_documents(source="tfds", paths=["lmjax_tiny_text"], data_dir=tfrecord)
      except UserError as e:
        print(e)
      del sys.modules["tensorflow"]
      assert read_documents(source="tfds", paths=["lmjax_tiny_text"], data_dir=tfrecord) == docs
""")


def test_array_record_needs_no_tensorflow_and_tfrecord_says_how_to_get_it(data_dirs):
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  result = subprocess.run(
      [sys.executable, "-c", FRESH_PROCESS, data_dirs["array_record"], data_dirs.get("tfrecord", "")],
      capture_output=True, text=True, env=env, timeout=300, check=False,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 0, result.stderr
  if HAS_TENSORFLOW:
    assert "stored as tfrecord, which only TensorFlow reads: pip install 'lmjax[tfrecord]'" in (
        result.stdout)
    assert "cpu_feature_guard" not in result.stderr  # TensorFlow's C++ INFO lines stay hidden


def test_a_classifier_trains_on_tfds_labels_with_a_held_out_split(data_dir, tmp_path, tiny):
  from lmjax.data.examples.labelled import Fields, read_examples
  examples = read_examples("tfds", ["lmjax_tiny_text:1.0.0"], fields=Fields(), split="train",
                           data_dir=data_dir)
  assert sorted(zip(examples.texts, examples.labels)) == sorted(
      (t, str(i % 2)) for i, t in enumerate(TRAIN_TEXTS))  # ClassLabel names, in stored order
  result = train(load_config("tiny-bert", tiny + [
      "model.head=classification", "data.source=tfds", "data.paths=[lmjax_tiny_text:1.0.0]",
      f"data.data_dir={data_dir}", "data.eval_split=test", "train.steps=2",
      "train.eval_every=2"]), tmp_path / "run")
  assert result.last_row["eval_confusion"] and sum(map(sum, result.last_row["eval_confusion"])) == 5
