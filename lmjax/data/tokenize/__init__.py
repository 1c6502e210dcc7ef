"""Text <-> token ids: the tokenizer backends, special-token roles, truncation, chat templates."""
