"""GGUF files (llama.cpp's format) read as Hugging Face model directories.

A GGUF file holds a model's weights (quantized or not) with its hyperparameters, tokenizer and
chat template as metadata. lmjax imports one by writing the Hugging Face directory it describes
once, into a cache (`materialise`), and reading that like any other: every command that takes
an HF directory takes a `.gguf` file (lmjax.hf.hub.resolve_hf_dir calls `materialise`).

    reader.py        the file: metadata, tensor table, tensors dequantized to float32
    config.py        metadata -> config.json (and generation_config.json)
    tensors.py       GGUF tensor names -> HF names, llama.cpp's value transforms undone
    tokenizer.py     metadata -> tokenizer.json + tokenizer_config.json (transformers' converter)
    materialise.py   the cached HF directory, written atomically
    quantized.py     Q8_0 projections kept as the file's int8 blocks (int8, group_size 32)

What a model type's files store differently (its `general.architecture`, extra config keys, a
tensor transform) lives in its family file as a `GgufArch` (lmjax.hf.family); nothing here names
a family. The `gguf` library (and transformers, for the tokenizer) are the `lmjax[gguf]` extra,
imported only when a GGUF file is read.
"""
