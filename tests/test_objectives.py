"""Losses and MLM masking."""

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.objectives import causal_lm_loss, cross_entropy_sums, mask_tokens_for_mlm


def test_causal_loss_is_shifted_and_skips_padding_and_document_starts():
  vocab = 11
  logits = jax.random.normal(jax.random.key(0), (1, 6, vocab))
  ids = jnp.array([[3, 4, 5, 6, 7, 0]])
  segments = jnp.array([[1, 1, 1, 2, 2, 0]])
  sums = causal_lm_loss(logits, ids, segments)
  # Counted: 0->1, 1->2 (doc 1) and 3->4 (doc 2); not 2->3 (a new doc) nor 4->5 (padding).
  assert float(sums.weight) == 3
  log_probs = jax.nn.log_softmax(logits[0])
  expected = -(log_probs[0, 4] + log_probs[1, 5] + log_probs[3, 7])
  np.testing.assert_allclose(float(sums.loss), float(expected), rtol=1e-6)


def test_cross_entropy_matches_log_softmax_and_counts_correct_predictions():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
  targets = jnp.array([0, 2])
  sums = cross_entropy_sums(logits, targets, jnp.array([1.0, 1.0]))
  log_probs = jax.nn.log_softmax(logits)
  np.testing.assert_allclose(float(sums.loss), float(-(log_probs[0, 0] + log_probs[1, 2])), rtol=1e-6)
  assert float(sums.correct) == 1.0


def test_mlm_masking_statistics_follow_bert():
  rng = np.random.default_rng(0)
  ids = rng.integers(10, 1000, size=(256, 512))
  maskable = np.ones_like(ids, dtype=bool)
  maskable[:, 0] = False          # e.g. [CLS]
  maskable[:, -100:] = False      # padding
  out = mask_tokens_for_mlm(np.random.default_rng(1), ids, maskable=maskable, mask_id=3,
                            vocab_size=1000, probability=0.15)
  selected = out["target_weights"] > 0
  assert not selected[~maskable].any()
  np.testing.assert_array_equal(out["targets"], ids)
  rate = selected.sum() / maskable.sum()
  assert abs(rate - 0.15) < 0.005
  masked = (out["input_ids"] == 3) & selected
  kept = (out["input_ids"] == ids) & selected
  replaced = selected & ~masked & ~kept
  n = selected.sum()
  assert abs(masked.sum() / n - 0.8) < 0.02
  assert abs(kept.sum() / n - 0.1) < 0.015  # (a random draw equal to the original counts as kept)
  assert abs(replaced.sum() / n - 0.1) < 0.015
  np.testing.assert_array_equal(out["input_ids"][~selected], ids[~selected])
