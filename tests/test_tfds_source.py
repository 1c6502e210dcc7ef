"""TFDS datasets built for real in a temporary data_dir, read without TensorFlow."""

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from lmjax.config import load_config
from lmjax.data.sources import read_documents
from lmjax.errors import UserError
from lmjax.train.loop import train
from tests.conftest import TINY

TRAIN_TEXTS = [f"train document {i}: the quick brown fox jumps over the lazy dog." for i in range(40)]
TEST_TEXTS = [f"test document {i}." for i in range(5)]


class LmjaxTinyText(tfds.core.GeneratorBasedBuilder):
  """A two-split text dataset, written in whatever file format the test asks for."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(TRAIN_TEXTS),
            "test": self._generate_examples(TEST_TEXTS)}

  def _generate_examples(self, texts):
    for i, text in enumerate(texts):
      yield i, {"text": text, "label": i % 2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  directory = tmp_path_factory.mktemp("tfds")
  LmjaxTinyText(data_dir=str(directory), file_format="array_record").download_and_prepare()
  return str(directory)


def test_array_record_splits_read_without_tensorflow(data_dir):
  docs = read_documents(source="tfds", paths=["lmjax_tiny_text:1.0.0"], split="train",
                        data_dir=data_dir)
  assert sorted(docs) == sorted(TRAIN_TEXTS)
  assert sorted(read_documents(source="tfds", paths=["lmjax_tiny_text"], split="test",
                               data_dir=data_dir)) == sorted(TEST_TEXTS)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(paths=["no_such_dataset"]), "is not prepared in"),
    (dict(paths=["lmjax_tiny_text"], split="validation"), "has no split 'validation'"),
    (dict(paths=["lmjax_tiny_text"], field="body"), "has no feature 'body' (features: "),
    (dict(paths=["lmjax_tiny_text"], field="label"), "not text"),
])
def test_tfds_mistakes_are_explained(data_dir, kwargs, expected):
  with pytest.raises(UserError) as info:
    read_documents(source="tfds", data_dir=data_dir, **{"split": "train", **kwargs})
  assert expected in str(info.value)


def test_a_data_dir_without_the_dataset_is_named(tmp_path):
  with pytest.raises(UserError, match=str(tmp_path)):
    read_documents(source="tfds", paths=["lmjax_tiny_text"], data_dir=str(tmp_path))


def test_training_reads_a_tfds_dataset(data_dir, tmp_path):
  config = load_config("tiny-gpt", TINY + [
      "data.source=tfds", "data.paths=[lmjax_tiny_text]", f"data.data_dir={data_dir}",
      "train.steps=4", "train.eval_every=0"])
  result = train(config, tmp_path)
  assert result.final_step == 4
