"""The classify objective's corpus: labelled examples, one per row, encoded and padded.

    labels      `data.labels`, else the training split's, sorted (numerically when they are all
                integers), reported; a label outside them in held-out data is an error naming
                the record; a training split of one label is an error
    encoding    the tokenizer's own template ([CLS] a [SEP] b [SEP] for BERT's), or for
                encoders whose tokenizer adds none, lmjax's: bos/cls a eos/sep (b eos/sep), the
                second text of token type 1 where the model has token types; decoders get the
                text as it is and classify from its last token
    truncation  to `train.seq_len` from the right, the longer text first; counted and reported
    held out    `data.eval_paths` / `data.eval_split`, else a stratified `data.eval_fraction` of
                each label's examples (seeded by `train.seed`)

Rows are padded to `seq_len` (no packing): input_ids, segment_ids (1 on tokens), positions,
token_type_ids, and the label index (`labels`, one per row).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from lmjax.data.config import DataConfig, Source
from lmjax.data.examples.labelled import Examples, Fields, read_examples
from lmjax.data.sources.documents import ReadStats
from lmjax.data.spec import BatchSpec
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError

log = logging.getLogger(__name__)


def read_labelled(data: DataConfig, spec: BatchSpec, stats: ReadStats
                  ) -> tuple[Examples, Examples, tuple[str, ...]]:
  """(training examples, held-out examples, the label set) of `data`, checked."""
  if data.mixture:
    raise UserError("data.mixture is for language-model corpora; a classifier trains on one "
                    "labelled source (data.source, data.paths).")
  fields = Fields(text=data.field, pair=data.pair_field, label=data.label_field,
                  encoding_errors=data.encoding_errors, bad_records=data.bad_records)
  train = read_examples(data.source, data.paths, fields=fields, split=data.split,
                        data_dir=data.data_dir, stats=stats)
  labels = data.labels or label_set(train)
  check_labels(train, labels, "the training data")
  counts = Counter(train.labels)
  if len(counts) < 2:
    raise UserError(f"the training data has one label only ({train.labels[0]!r}, "
                    f"{len(train)} examples): a classifier needs examples of two labels or more.")
  held_out = _read_held_out(data, fields, stats)
  if held_out is None:
    train, held_out = stratified_split(train, labels, fraction=data.eval_fraction, seed=spec.seed)
  else:
    check_labels(held_out, labels, "the held-out data")
  log.info("labels%s: %s; %d training and %d held-out examples",
           "" if data.labels else " (from the training data, sorted)",
           ", ".join(f"{name} ({counts[name]})" for name in labels), len(train), len(held_out))
  return train, held_out, labels


def _read_held_out(data: DataConfig, fields: Fields, stats: ReadStats) -> Examples | None:
  if data.eval_split is not None and data.source not in (Source.TFDS.value,
                                                         Source.HF_DATASETS.value):
    raise UserError(f"data.eval_split names a TFDS or datasets split; for "
                    f"data.source={data.source!r} give the held-out files as data.eval_paths.")
  if data.eval_split is not None:
    return read_examples(data.source, data.paths, fields=fields, split=data.eval_split,
                         data_dir=data.data_dir, stats=stats)
  if data.eval_paths:
    return read_examples(data.source, data.eval_paths, fields=fields, split=data.split,
                         data_dir=data.data_dir, stats=stats)
  return None


def label_set(examples: Examples) -> tuple[str, ...]:
  """The labels the examples use, sorted: numerically when all are integers."""
  found = set(examples.labels)
  numeric = all(name.lstrip("-").isdigit() for name in found)
  return tuple(sorted(found, key=int if numeric else None))


def check_labels(examples: Examples, labels: tuple[str, ...], what: str) -> None:
  """UserError naming the first example whose label is not one of `labels` (unlabelled ones,
  read with `labels_required=False`, pass)."""
  known = set(labels)
  for label, here in zip(examples.labels, examples.where):
    if label is not None and label not in known:
      raise UserError(f"{here}: {what} has the label {label!r}, which is not one of the run's "
                      f"labels ({', '.join(labels)}; data.labels). Fix the record, or add the "
                      f"label to data.labels when starting a new run.")


def stratified_split(examples: Examples, labels: tuple[str, ...], *, fraction: float, seed: int
                     ) -> tuple[Examples, Examples]:
  """(train, held out): of each label's examples, a seeded random `fraction` (at least one
  where the label has two or more) is held out; both keep the examples' order."""
  held = []
  for index, name in enumerate(labels):
    members = [i for i, label in enumerate(examples.labels) if label == name]
    if len(members) < 2:
      continue
    count = min(max(1, round(len(members) * fraction)), len(members) - 1)
    chosen = np.random.default_rng([seed, 3, index]).permutation(len(members))[:count]
    held.extend(members[i] for i in chosen)
  held_set = set(held)
  train = [i for i in range(len(examples)) if i not in held_set]
  return examples.take(train), examples.take(sorted(held))


def example_tokenizer(tokenizer: Tokenizer, spec: BatchSpec) -> Tokenizer:
  """`tokenizer`, or for an encoder whose tokenizer adds no special tokens, a copy with lmjax's
  template (bos/cls text eos/sep)."""
  if not spec.bidirectional or tokenizer.adds_special_tokens():
    return tokenizer
  first = tokenizer.cls_id if tokenizer.cls_id is not None else tokenizer.bos_id
  last = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id
  if first is None or last is None:
    raise UserError("the tokenizer has no [CLS]/<bos> and [SEP]/<eos> tokens to mark an "
                    "example's start and end for an encoder: use a tokenizer that has them "
                    "(data.tokenizer=bpe makes one).")
  return tokenizer.with_example_template(first=first, last=last,
                                         second_type=1 if spec.token_types else 0)


def encode_texts(tokenizer: Tokenizer, texts: list[str], pairs: list[str] | None,
                 spec: BatchSpec) -> tuple[dict[str, np.ndarray], int]:
  """(rows, how many texts were truncated): input_ids, segment_ids, positions and
  token_type_ids, each [len(texts), spec.seq_len], padded with the tokenizer's pad id."""
  n, seq_len = len(texts), spec.seq_len
  input_ids = np.full((n, seq_len), tokenizer.pad_id, np.int32)
  type_ids = np.zeros((n, seq_len), np.int32)
  lengths = np.zeros(n, np.int64)
  cut = 0
  for row in range(n):
    pair = None if pairs is None else pairs[row]
    ids, types, truncated = tokenizer.encode_example(texts[row], pair, max_length=seq_len)
    input_ids[row, :len(ids)], type_ids[row, :len(ids)] = ids, types
    lengths[row], cut = len(ids), cut + truncated
  is_token = np.arange(seq_len)[None, :] < lengths[:, None]
  rows = {"input_ids": input_ids, "segment_ids": is_token.astype(np.int32),
          "positions": (np.arange(seq_len)[None, :] * is_token).astype(np.int32),
          "token_type_ids": type_ids if spec.token_types else np.zeros_like(type_ids)}
  return rows, cut


def encode_examples(tokenizer: Tokenizer, examples: Examples, labels: tuple[str, ...],
                    spec: BatchSpec) -> tuple[dict[str, np.ndarray], int]:
  """`encode_texts` of the examples, with their labels [n] (indices into `labels`)."""
  rows, cut = encode_texts(tokenizer, examples.texts, examples.pairs, spec)
  index = {name: i for i, name in enumerate(labels)}
  rows["labels"] = np.asarray([index[label] for label in examples.labels], np.int32)
  return rows, cut
