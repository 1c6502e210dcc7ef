"""TFDS datasets as a document source, without TensorFlow for array_record datasets.

array_record datasets are read by random access through `tfds.data_source`, which needs no
TensorFlow. tfrecord datasets can only be read through TensorFlow (`pip install
'lmjax[tfrecord]'`); without it they are refused with that advice. Either way the examples come
in their stored order (shard after shard), so both formats of a dataset give the same documents.

A `data_dir` may be on gs://: TFDS lists it through etils.epath (fsspec's gcsfs, as lmjax.storage
sets up), and array_record's C++ reader opens gs:// shards itself, through the Google Cloud C++
storage client built into it. That client reads neither gcsfs's settings nor
STORAGE_EMULATOR_HOST, and where it finds no credentials it asks the GCE metadata server, retrying
for many minutes (what looked like a hang): `_gcs_reader_ready` gives it the emulator
(CLOUD_STORAGE_EMULATOR_ENDPOINT) or checks first, with google-auth, that credentials exist.
s3:// is refused (lmjax.data.config): array_record opens local files and gs:// only; so is a
tfrecord dataset on gs:// (TensorFlow's own GCS file system would read it, which ignores the
emulator's settings: untested here).
"""

from __future__ import annotations

import os

from lmjax.errors import UserError
from lmjax.extras import install_hint, require
from lmjax.storage import as_path, is_remote, url_scheme


def _tfds():
  return require("tensorflow_datasets", extra="tfds", needed_for="data.source: tfds",
                 package="tensorflow-datasets")


def _builder(tfds, name: str, data_dir: str | None):
  """The builder of a prepared dataset: registered by name, or read from its directory."""
  where = data_dir or "TFDS's default data_dir"
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception:  # not registered in this process: a dataset prepared elsewhere
    builder = None
    base, _, version = name.partition(":")
    root = as_path(os.path.expanduser(data_dir or "~/tensorflow_datasets")) / base  # or gs://
    versions = sorted(p for p in root.glob(version or "*") if (p / "dataset_info.json").is_file())
    if versions:
      builder = tfds.builder_from_directory(str(versions[-1]))
  if builder is None or not builder.is_prepared():
    raise UserError(
        f"TFDS dataset {name!r} is not prepared in {where}: check `data.paths` (name[/config]"
        f"[:version]) and `data.data_dir`, or prepare it first (tfds build {name.split(':')[0]} "
        f"--data_dir ...).")
  return builder


_tensorflow_configured = False


def _tensorflow(name: str, file_format: str):
  """TensorFlow, kept off GPUs and spare threads: here it only reads files.

  Hiding GPUs keeps TensorFlow from reserving the accelerator memory that JAX needs. Its C++
  INFO lines stay hidden because JAX, imported with lmjax, sets TF_CPP_MIN_LOG_LEVEL=1 unless
  the user chose a level.
  """
  global _tensorflow_configured  # pylint: disable=global-statement
  try:
    import tensorflow as tf  # deferred: an extra (lmjax[tfrecord]), ~1.4 GB
  except ImportError:
    raise UserError(f"TFDS dataset {name!r} is stored as {file_format}, which only TensorFlow "
                    f"reads: {install_hint('tfrecord')} (or tensorflow-cpu), or prepare it as "
                    f"array_record (tfds build --file_format=array_record).") from None
  if not _tensorflow_configured:
    _tensorflow_configured = True
    try:  # only possible before TensorFlow's runtime starts; once it has, it is the user's
      tf.config.set_visible_devices([], "GPU")
      tf.config.threading.set_inter_op_parallelism_threads(1)
      tf.config.threading.set_intra_op_parallelism_threads(1)
    except RuntimeError:
      pass
  return tf


def _tfrecord_examples(tfds, builder, *, name: str, split: str, file_format: str):
  """Each example (a dict of features), in stored order, read through TensorFlow."""
  _tensorflow(name, file_format)
  # One file at a time (no interleaving of shards) and no shuffling: the stored order, which is
  # also the order `as_data_source` gives for an array_record copy of the dataset.
  read_config = tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False)
  dataset = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
  return tfds.as_numpy(dataset)


def _open(name: str, *, split: str, data_dir: str | None, fields: list[tuple[str, str]]):
  """(the examples of `name`'s `split` in stored order, the dataset's features), after checking
  the split and each (feature, config key) of `fields`."""
  tfds = _tfds()
  builder = _builder(tfds, name, data_dir)
  splits = sorted(builder.info.splits.keys())
  if split.split("[")[0] not in splits:
    raise UserError(f"TFDS dataset {name!r} has no split {split!r}; it has "
                    f"{', '.join(splits)}. Set `data.split`.")
  features = builder.info.features
  for field, key in fields:
    if field not in features:
      raise UserError(f"TFDS dataset {name!r} has no feature {field!r} (features: "
                      f"{', '.join(features.keys())}). Set `{key}` to one of them.")
  file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
  if "array_record" in file_format:
    _gcs_reader_ready(name, data_dir)
    source = builder.as_data_source(split=split)
    return (source[i] for i in range(len(source))), features
  if is_remote(data_dir or ""):
    raise UserError(
        f"TFDS dataset {name!r} in data.data_dir {data_dir} is stored as {file_format}, which "
        f"TensorFlow would read from the bucket through its own GCS file system (not gcsfs: it "
        f"ignores STORAGE_EMULATOR_HOST, and lmjax does not test it): prepare it as "
        f"array_record (tfds build --file_format=array_record), which lmjax reads from gs://, "
        f"or copy it to a local data_dir (gcloud storage cp -r).")
  return _tfrecord_examples(tfds, builder, name=name, split=split, file_format=file_format), features


def _gcs_reader_ready(name: str, data_dir: str | None) -> None:
  """Before array_record's own GCS client opens shards under a gs:// `data_dir`: points it at
  the emulator gcsfs uses (STORAGE_EMULATOR_HOST), if any; else UserError, in seconds, where
  google-auth finds no credentials (that client would retry the GCE metadata server for
  minutes). Both look in the same places: GOOGLE_APPLICATION_CREDENTIALS, gcloud's application
  default credentials, the metadata server."""
  if url_scheme(data_dir or "") != "gs" or os.environ.get("CLOUD_STORAGE_EMULATOR_ENDPOINT"):
    return
  emulator = os.environ.get("STORAGE_EMULATOR_HOST")
  if emulator:
    os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = (
        emulator if "://" in emulator else f"http://{emulator}")
    return
  import google.auth  # noqa: PLC0415 -- comes with gcsfs, which a gs:// data_dir needs
  from google.auth.exceptions import DefaultCredentialsError  # noqa: PLC0415
  try:
    google.auth.default()
  except DefaultCredentialsError:
    raise UserError(
        f"TFDS dataset {name!r} in data.data_dir {data_dir}: array_record reads gs:// shards "
        f"through its own Google Cloud client, which finds no credentials here (and would retry "
        f"the GCE metadata server for minutes): run `gcloud auth application-default login` or "
        f"set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or copy the "
        f"prepared dataset to a local data_dir (gcloud storage cp -r).") from None


def _text(value, *, field: str, name: str, split: str, index: int, errors: str, skip):
  """A text feature's value as a str; None when it is not UTF-8 and `skip` took it."""
  if isinstance(value, bytes):
    try:
      value = value.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
      problem = f"Example {index} of TFDS {name!r}[{split}] is not valid UTF-8 ({e.reason})"
      if skip is not None:
        skip(problem)
        return None
      raise UserError(f"{problem}; set `data.encoding_errors: replace` to substitute U+FFFD, "
                      f"or `data.bad_records: skip` to leave such examples out.") from None
  if not isinstance(value, str):
    raise UserError(f"Feature {field!r} of TFDS {name!r} holds {type(value).__name__}, not "
                    f"text. Set `data.field` to a text feature.")
  return value


def read_tfds(name: str, *, split: str, data_dir: str | None, field: str,
              errors: str = "strict", skip=None) -> list[str]:
  """The text feature `field` of every example of `name`'s `split`, in stored order.

  errors: how bytes that are not UTF-8 are decoded ("strict" raises a UserError, "replace"
  substitutes U+FFFD).
  skip: None, or a callable taking a problem: then an example that is not UTF-8 is left out
  and `skip` is called with its description instead of raising.
  """
  examples, _ = _open(name, split=split, data_dir=data_dir, fields=[(field, "data.field")])
  documents, index = [], -1
  for index, example in enumerate(examples):
    text = _text(example[field], field=field, name=name, split=split, index=index,
                 errors=errors, skip=skip)
    if text is not None:
      documents.append(text)
  if index < 0:
    raise UserError(f"TFDS dataset {name!r} split {split!r} has no examples.")
  return documents


def read_tfds_examples(name: str, *, split: str, data_dir: str | None, field: str,
                       pair_field: str | None, label_field: str, errors: str = "strict",
                       skip=None) -> tuple[list[str], list[str] | None, list, list[str]]:
  """(texts, second texts or None, labels, "dataset[split]:index" of each) of `name`'s `split`.

  A ClassLabel feature gives its label names; other labels come as stored (ints or bytes).
  """
  fields = [(field, "data.field"), (label_field, "data.label_field")]
  if pair_field is not None:
    fields.append((pair_field, "data.pair_field"))
  examples, features = _open(name, split=split, data_dir=data_dir, fields=fields)
  names = getattr(features[label_field], "names", None)
  texts, pairs, labels, where = [], [] if pair_field is not None else None, [], []
  for index, example in enumerate(examples):
    decode = lambda f: _text(example[f], field=f, name=name, split=split, index=index,
                             errors=errors, skip=skip)
    text = decode(field)
    pair = decode(pair_field) if pair_field is not None else ""
    if text is None or pair is None:
      continue
    label = example[label_field]
    if isinstance(label, bytes):
      label = label.decode("utf-8", errors="replace")
    elif names is not None:
      label = names[int(label)]
    texts.append(text)
    labels.append(label)
    where.append(f"{name}[{split}]:{index}")
    if pairs is not None:
      pairs.append(pair)
  if not where:
    raise UserError(f"TFDS dataset {name!r} split {split!r} has no examples.")
  return texts, pairs, labels, where
