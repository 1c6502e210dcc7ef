"""From tokenized examples to batches: the corpus, packed rows, prepared shards, the Grain
pipeline."""
