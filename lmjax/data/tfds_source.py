"""TFDS datasets as a document source, without TensorFlow for array_record datasets.

array_record datasets are read by random access through `tfds.data_source`, which needs no
TensorFlow. tfrecord datasets can only be read through TensorFlow (`pip install
tensorflow-cpu`); without it they are refused with that advice.
"""

from __future__ import annotations

import os
import pathlib

from lmjax.errors import UserError


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError("TFDS sources need tensorflow-datasets: pip install 'lmjax[tfds]'.") from None
  return tfds


def _builder(tfds, name: str, data_dir: str | None):
  """The builder of a prepared dataset: registered by name, or read from its directory."""
  where = data_dir or "TFDS's default data_dir"
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception:  # not registered in this process: a dataset prepared elsewhere
    builder = None
    base, _, version = name.partition(":")
    root = pathlib.Path(os.path.expanduser(data_dir or "~/tensorflow_datasets")) / base
    versions = sorted(p for p in root.glob(version or "*") if (p / "dataset_info.json").is_file())
    if versions:
      builder = tfds.builder_from_directory(str(versions[-1]))
  if builder is None or not builder.is_prepared():
    raise UserError(
        f"TFDS dataset {name!r} is not prepared in {where}: check `data.paths` (name[/config]"
        f"[:version]) and `data.data_dir`, or prepare it first (tfds build {name.split(':')[0]} "
        f"--data_dir ...).")
  return builder


def read_tfds(name: str, *, split: str, data_dir: str | None, field: str,
              errors: str = "strict") -> list[str]:
  """The text feature `field` of every example of `name`'s `split`, in stored order."""
  tfds = _tfds()
  builder = _builder(tfds, name, data_dir)
  splits = sorted(builder.info.splits.keys())
  if split.split("[")[0] not in splits:
    raise UserError(f"TFDS dataset {name!r} has no split {split!r}; it has "
                    f"{', '.join(splits)}. Set `data.split`.")
  features = list(builder.info.features.keys())
  if field not in features:
    raise UserError(f"TFDS dataset {name!r} has no feature {field!r} (features: "
                    f"{', '.join(features)}). Set `data.field` to its text feature.")
  file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
  if "array_record" in file_format:
    examples = builder.as_data_source(split=split)
    values = (examples[i][field] for i in range(len(examples)))
  else:
    try:
      import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      raise UserError(f"TFDS dataset {name!r} is stored as {file_format}, which only TensorFlow "
                      f"reads: pip install tensorflow-cpu, or prepare it as array_record "
                      f"(tfds build --file_format=array_record).") from None
    values = (example[field] for example in tfds.as_numpy(builder.as_dataset(split=split)))
  documents = []
  for index, value in enumerate(values):
    if isinstance(value, bytes):
      try:
        value = value.decode("utf-8", errors=errors)
      except UnicodeDecodeError as e:
        raise UserError(f"Example {index} of TFDS {name!r}[{split}] is not valid UTF-8 ({e.reason}); "
                        f"set `data.encoding_errors: replace` to substitute U+FFFD.") from None
    if not isinstance(value, str):
      raise UserError(f"Feature {field!r} of TFDS {name!r} holds {type(value).__name__}, not "
                      f"text. Set `data.field` to a text feature.")
    documents.append(value)
  if not documents:
    raise UserError(f"TFDS dataset {name!r} split {split!r} has no examples.")
  return documents
