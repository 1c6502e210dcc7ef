"""Where documents come from: files, globs, tables, TFDS and Hugging Face datasets."""
