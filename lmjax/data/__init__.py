"""Data: document sources, tokenizers, packing into rows, batches and the Grain pipeline.

Pure Python/numpy: this layer knows nothing of the model, the losses, the trainer or the run
directory; the trainer describes what it needs in a `BatchSpec` (spec.py).
"""

from lmjax.data import sentencepiece_tokenizer  # registers the sentencepiece backend
from lmjax.data.config import BadRecords, DataConfig, DataSource, EncodingErrors, Source
from lmjax.data.packing import pack_documents, pad_and_stack
from lmjax.data.sources import builtin_corpus, read_documents
from lmjax.data.spec import BatchSpec, Objective
from lmjax.data.tokenizer import Tokenizer

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
    "sentencepiece_tokenizer",
]
