"""The trainer's inputs: the `BatchSpec` a config asks of the data layer, the corpus (one
tokenizer for all processes), and batches placed on the mesh step after step."""

from __future__ import annotations

import jax

from lmjax.config import Config
from lmjax.data.pipeline import corpus as data_corpus
from lmjax.data.pipeline.batches import BatchSource
from lmjax.data.pipeline.corpus import Corpus
from lmjax.data.pipeline.grain_pipeline import BatchIterator
from lmjax.data.pipeline.prepared import prepare
from lmjax.data.spec import BatchSpec, Objective
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.run.run_dir import RunDir
from lmjax.sharding import MeshRules
from lmjax.train.multihost import broadcast_json, is_writer
from lmjax.train.setup import objective_of
from lmjax.train.source_tokenizer import check_replacement, check_tokenizer_of_source


def batch_spec(config: Config) -> BatchSpec:
  """What the run's batches hold, for the data layer."""
  train, objective = config.train, objective_of(config)
  return BatchSpec(objective=objective, seq_len=train.seq_len,
                   batch_size=train.batch_size, seed=train.seed,
                   vocab_size=config.model.vocab_size, mlm_probability=train.mlm_probability,
                   max_new_tokens=(train.grpo.max_new_tokens
                                   if objective is Objective.GRPO else 0),
                   bidirectional=not config.model.causal,
                   token_types=config.model.type_vocab_size >= 2)


def inherit_labels(config: Config, saved: Config) -> Config:
  """`config`, with the labels of the run it continues (`saved`) when it names none: a
  classifier's head rows keep their meaning whatever the data holds now."""
  if config.data.labels or not saved.data.labels:
    return config
  return config.with_labels(saved.data.labels)


def load_corpus(config: Config, tokenizer: Tokenizer | None = None) -> Corpus:
  """The config's corpus (lmjax.data.pipeline.corpus.load_corpus), with `tokenizer` or the one the
  config chooses (`data.tokenizer`, else `model.init_from`'s, else a BPE trained on the corpus)."""
  return data_corpus.load_corpus(config.data, batch_spec(config), tokenizer=tokenizer,
                                 tokenizer_choice=config.tokenizer_choice)


def prepare_data(config: Config, out_dir, *, workers: int = 0, rows_per_shard: int = 65536
                 ) -> dict:
  """`lmjax data prepare`: the config's sources tokenized and packed into `out_dir` (new), as
  this config would train on them (lmjax.data.pipeline.prepared.prepare); returns the metadata."""
  check_tokenizer_of_source(config)
  return prepare(config.data, batch_spec(config), out_dir, tokenizer_choice=config.tokenizer_choice,
                 workers=workers, rows_per_shard=rows_per_shard)


def batch_sources(config: Config, corpus: Corpus) -> tuple[BatchSource, BatchSource]:
  """Train and eval BatchSources of the config's batches over `corpus`."""
  return corpus.batch_sources(batch_spec(config))


def shared_corpus(config: Config, run: RunDir) -> Corpus:
  """`load_corpus` with one tokenizer for all processes: the run's own, or one process 0 builds.

  Process 0 alone builds the tokenizer (BPE training is not worth trusting to be bit-identical
  across hosts); the others receive it over JAX's collectives, so no shared file system is
  needed. A UserError on process 0 (bad data, a tokenizer too large for the model) is raised on
  every process, so none is left waiting.
  """
  saved = Tokenizer.load(run.tokenizer_dir) if run.tokenizer_dir.is_dir() else None
  if saved is None:
    check_tokenizer_of_source(config)
  if jax.process_count() == 1:
    return _new_corpus(config, saved)
  if is_writer():
    try:
      loaded = _new_corpus(config, saved)
      message = {"tokenizer": loaded.tokenizer.to_dict()}
    except UserError as e:
      message = {"error": str(e)}
  message = broadcast_json(message if is_writer() else None)
  if "error" in message:
    raise UserError(message["error"])
  if is_writer():
    return loaded
  return load_corpus(config, Tokenizer.from_dict(message["tokenizer"]))


def _new_corpus(config: Config, saved: Tokenizer | None) -> Corpus:
  """`load_corpus`; a tokenizer made now that replaces the source's must match its size."""
  corpus = load_corpus(config, saved)
  if saved is None:
    check_replacement(config, corpus.tokenizer)
  return corpus


class TrainBatches:
  """The training batches, step after step, from the Grain pipeline
  (lmjax.data.pipeline.grain_pipeline), placed on the mesh; `state()` is the pipeline position a
  checkpoint records."""

  def __init__(self, source: BatchSource, placement: MeshRules, *, num_steps: int, start: int,
               workers: int, state: dict | None):
    self.source, self.placement = source, placement
    positions = placement.process_batch_positions(source.batch_size)
    self._iterator = BatchIterator(source, positions, num_steps=num_steps, start=start,
                                   workers=workers, state=state)

  def __next__(self) -> dict[str, jax.Array]:
    return self.placement.shard_batch(next(self._iterator), self.source.batch_size)

  def state(self) -> dict:
    return self._iterator.state()

  def close(self) -> None:
    self._iterator.close()
