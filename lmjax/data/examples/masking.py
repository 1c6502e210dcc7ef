"""BERT's masking of input tokens for masked-LM training, in numpy: it runs in the pipeline."""

from __future__ import annotations

import numpy as np


def mask_tokens_for_mlm(rng: np.random.Generator, input_ids: np.ndarray, *, maskable: np.ndarray,
                        mask_id: int, vocab_size: int, probability: float = 0.15
                        ) -> dict[str, np.ndarray]:
  """Selects each maskable token (not special, not padding) with `probability`; of those, 80%
  become `mask_id`, 10% a uniformly random token and 10% stay as they are.

  input_ids, maskable: [batch, len]. Returns `input_ids` (corrupted), `targets` (the originals)
  and `target_weights` (1.0 on selected positions), each [batch, len].
  """
  selected = (rng.random(input_ids.shape) < probability) & maskable
  action = rng.random(input_ids.shape)
  corrupted = np.where(selected & (action < 0.8), mask_id, input_ids)
  random_tokens = rng.integers(0, vocab_size, size=input_ids.shape)
  corrupted = np.where(selected & (action >= 0.8) & (action < 0.9), random_tokens, corrupted)
  return {"input_ids": corrupted.astype(np.int32), "targets": input_ids.astype(np.int32),
          "target_weights": selected.astype(np.float32)}
