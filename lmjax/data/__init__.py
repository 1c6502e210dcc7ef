"""Data: document sources, tokenizers and packing into fixed-length rows (pure Python/numpy)."""

from lmjax.data.packing import pack_documents, pad_and_stack
from lmjax.data.sources import EncodingErrors, Source, builtin_corpus, read_documents
from lmjax.data.tokenizer import Tokenizer

__all__ = [
    "EncodingErrors",
    "Source",
    "Tokenizer",
    "builtin_corpus",
    "pack_documents",
    "pad_and_stack",
    "read_documents",
]
