"""Data: document sources, tokenizers, examples per objective, and the pipeline to batches.

    sources/    where documents come from: files and globs, tables, TFDS, Hugging Face datasets
    tokenize/   text <-> ids: tokenizer backends, special-token roles, truncation, chat templates
    examples/   per objective: labelled (classify), instruction (sft), MLM masking, packing
    pipeline/   the corpus, hf_datasets rows on demand, prepared shards, batches, Grain
    config.py, spec.py, rows.py   the data config, the trainer's BatchSpec, packed rows

Pure Python/numpy: this layer knows nothing of the model, the losses, the trainer or the run
directory; the trainer describes what it needs in a `BatchSpec` (spec.py).
"""

from lmjax.data.config import BadRecords, DataConfig, DataSource, EncodingErrors, Source
from lmjax.data.examples.packing import pack_documents, pad_and_stack
from lmjax.data.sources.documents import builtin_corpus, read_documents
from lmjax.data.spec import BatchSpec, Objective
from lmjax.data.tokenize import sentencepiece_model  # registers the sentencepiece backend
from lmjax.data.tokenize.tokenizer import Tokenizer

__all__ = [
    "BadRecords",
    "BatchSpec",
    "DataConfig",
    "DataSource",
    "EncodingErrors",
    "Objective",
    "Source",
    "Tokenizer",
    "builtin_corpus",
    "pack_documents",
    "pad_and_stack",
    "read_documents",
    "sentencepiece_model",
]
