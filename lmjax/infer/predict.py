"""`lmjax predict`: a classifier's label and class probabilities for each input text.

    lmjax predict (--run-dir DIR | --hf HF_DIR) (--text T ... | --input FILE.jsonl) [--output F]

Texts are encoded as the classifier was trained (the run's tokenizer with its template, its
`train.seq_len`, `data.field` / `data.pair_field` for JSON Lines inputs; for a Hugging Face
`*ForSequenceClassification` directory its own tokenizer and `id2label`), classified in batches,
and written as JSON Lines: the text, `label` (the most likely), `score` (its probability) and
`probabilities` by label. An input record that carries a label (`data.label_field`) keeps it as
`expected`, and the accuracy over those is reported; a label outside the classifier's is an
error naming the record.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from lmjax.data.config import Source
from lmjax.data.examples.classification import check_labels, encode_texts, example_tokenizer
from lmjax.data.examples.labelled import Examples, Fields, read_examples
from lmjax.data.spec import BatchSpec, Objective
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.files import check_new_file, write_text_atomic
from lmjax.hf.config import hf_labels
from lmjax.hf.engine import read_hf_config
from lmjax.hf.hub import resolve_hf_dir
from lmjax.infer import classify
from lmjax.model import Head, Transformer
from lmjax.run import RunDir
from lmjax.run.loader import load

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A sequence classifier ready to label texts."""

  model: Transformer
  params: Any
  tokenizer: Tokenizer
  labels: tuple[str, ...]
  seq_len: int            # texts are cut to this many tokens
  field: str = "text"     # JSON Lines inputs: the text, second text and label fields
  pair_field: str | None = None
  label_field: str = "label"

  @property
  def spec(self) -> BatchSpec:
    cfg = self.model.config
    return BatchSpec(objective=Objective.CLASSIFY, seq_len=self.seq_len, batch_size=1, seed=0,
                     vocab_size=cfg.vocab_size, bidirectional=not cfg.causal,
                     token_types=cfg.type_vocab_size >= 2)


def load_classifier(*, run_dir: str | None = None, hf_dir: str | None = None,
                    step: int | None = None) -> Classifier:
  """The classifier of an lmjax run directory or of a Hugging Face model directory."""
  if hf_dir is not None:
    hf_dir = resolve_hf_dir(hf_dir)
    architectures = read_hf_config(hf_dir).get("architectures") or ["(none)"]
    if not str(architectures[0]).endswith("ForSequenceClassification"):
      raise UserError(f"{hf_dir} holds a {architectures[0]}, not a sequence classifier "
                      f"(*ForSequenceClassification): predict labels texts with one.")
    loaded = load(hf_dir, require_tokenizer=True, kind="hf")
    return Classifier(loaded.model, loaded.params, loaded.tokenizer,
                      hf_labels(read_hf_config(hf_dir)),
                      seq_len=min(loaded.config.max_seq_len, 512))
  run = RunDir(run_dir)
  config = run.require_config()
  if config.model.head is not Head.CLASSIFICATION:
    raise UserError(f"{run_dir} holds a {config.model.head.value} model, not a classifier "
                    f"(model.head=classification): use generate or fill-mask with it.")
  loaded = load(run.path, step=step, require_tokenizer=True, kind="run")
  return Classifier(loaded.model, loaded.params, loaded.tokenizer, config.data.labels,
                    seq_len=config.train.seq_len, field=config.data.field,
                    pair_field=config.data.pair_field, label_field=config.data.label_field)


def texts_input(texts: Sequence[str]) -> Examples:
  return Examples(list(texts), None, [None] * len(texts),
                  [f"--text {i + 1}" for i in range(len(texts))])


def read_inputs(file: str, classifier: Classifier) -> Examples:
  """The records of a JSON Lines file: text (and second text), and a label where present."""
  fields = Fields(text=classifier.field, pair=classifier.pair_field,
                  label=classifier.label_field, labels_required=False)
  inputs = read_examples(Source.JSONL.value, [file], fields=fields)
  check_labels(inputs, classifier.labels, "the input")
  return inputs


def predict(classifier: Classifier, inputs: Examples, *, batch_size: int = 32
            ) -> Iterator[dict[str, Any]]:
  """One output record per input, in order, classified `batch_size` at a time."""
  if batch_size < 1:
    raise UserError(f"--batch-size must be at least 1, got {batch_size}.")
  tokenizer = example_tokenizer(classifier.tokenizer, classifier.spec)
  cut = 0
  for start in range(0, len(inputs.texts), batch_size):
    stop = min(start + batch_size, len(inputs.texts))
    pairs = None if inputs.pairs is None else inputs.pairs[start:stop]
    rows, truncated = encode_texts(tokenizer, inputs.texts[start:stop], pairs, classifier.spec)
    cut += truncated
    probabilities = classify(classifier.model, classifier.params, rows["input_ids"],
                             rows["segment_ids"], rows["token_type_ids"])
    for i, row in enumerate(probabilities.tolist()):
      yield _output(classifier, inputs, start + i, row)
  if cut:
    log.warning("truncated %d of %d inputs to %d tokens", cut, len(inputs.texts),
                classifier.seq_len)


def _output(classifier: Classifier, inputs: Examples, i: int, probabilities: list[float]
            ) -> dict[str, Any]:
  best = max(range(len(probabilities)), key=probabilities.__getitem__)
  out = {"text": inputs.texts[i]}
  if inputs.pairs is not None:
    out["text_pair"] = inputs.pairs[i]
  out.update(label=classifier.labels[best], score=probabilities[best],
             probabilities=dict(zip(classifier.labels, probabilities)))
  if inputs.labels[i] is not None:
    out["expected"] = inputs.labels[i]
  return out


def write_predictions(records: Iterator[dict[str, Any]], output: str | None) -> dict[str, Any]:
  """Writes the records as JSON Lines to `output` (a new file, written whole or not at all) or
  stdout; returns a summary: how many, and the accuracy over those with an expected label."""
  if output is not None:
    output = check_new_file(output)
  lines, count, right, labelled = [], 0, 0, 0
  for record in records:
    line = json.dumps(record, ensure_ascii=False)
    count += 1
    if output is None:
      print(line)
    else:
      lines.append(line)
    if "expected" in record:
      labelled += 1
      right += record["expected"] == record["label"]
  if output is not None:
    write_text_atomic(output, "".join(f"{line}\n" for line in lines))
  sys.stdout.flush()
  summary = {"records": count, "labelled": labelled}
  if labelled:
    summary["accuracy"] = right / labelled
    log.info("accuracy %.4f on the %d inputs with a label", right / labelled, labelled)
  return summary
