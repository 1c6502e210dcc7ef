"""A tiny TFDS text dataset (`lmjax_tiny_text`) that tests build for real in temporary
data_dirs, in either file format; its builder and the texts it holds. Import it after
`pytest.importorskip("tensorflow_datasets")`."""

import tensorflow_datasets as tfds

# 40 examples in 2 shards of ~20: more than tf.data's interleave block (16), so reading the
# shards interleaved instead of one after the other would change the order.
TRAIN_TEXTS = [f"train document {i}: the quick brown fox jumps over the lazy dog." for i in range(40)]
TEST_TEXTS = [f"test document {i}." for i in range(5)]
LATIN1_TEXTS = [b"caf\xe9 au lait", b"cr\xe8me"]  # not UTF-8


class LmjaxTinyText(tfds.core.GeneratorBasedBuilder):
  """A text dataset with a clean `train` and `test` split and a `latin1` split of bad bytes."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(TRAIN_TEXTS),
            "test": self._generate_examples(TEST_TEXTS),
            "latin1": self._generate_examples(LATIN1_TEXTS)}

  def _generate_examples(self, texts):
    for i, text in enumerate(texts):
      yield i, {"text": text, "label": i % 2}
