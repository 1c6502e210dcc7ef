"""Losses and MLM masking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.config import load_config
from lmjax.data.examples.masking import mask_tokens_for_mlm
from lmjax.model import Transformer
from lmjax.objectives import causal_lm_loss, cross_entropy_sums
from lmjax.train.inputs import batch_sources, load_corpus
from lmjax.train.setup import objective_of
from lmjax.train.step import _forward_sums
from tests.conftest import TINY
from tests.helpers import random_params


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


@pytest.mark.parametrize("name, extra", [
    ("tiny-gpt", []),                                    # causal, tied embeddings
    ("tiny-llama", ["model.tie_embeddings=false"]),      # causal, separate lm_head
    ("tiny-bert", []),                                   # MLM, with the decoder bias
])
def test_chunked_loss_and_gradients_equal_the_whole_batch_ones(name, extra):
  # 32 positions in chunks of 5: the last chunk is partial, so padding must not count.
  config = load_config(name, TINY + extra)
  model = Transformer(config.model)
  corpus = load_corpus(config)
  source, _ = batch_sources(config, corpus)
  batch = {k: jnp.asarray(v) for k, v in source.batch(0).items()}
  params = random_params(model, seq_len=batch["input_ids"].shape[1])

  def loss_and_grads(chunk):
    def loss(p):
      sums, _, _ = _forward_sums(model, objective_of(config), p, batch, train=False,
                                 loss_chunk=chunk)
      return sums.loss / sums.weight, sums
    (_, sums), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return sums, grads

  (whole, whole_grads), (chunked, chunked_grads) = loss_and_grads(0), loss_and_grads(5)
  assert float(whole.weight) > 0
  for a, b in zip(whole, chunked):
    np.testing.assert_allclose(float(b), float(a), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(whole_grads), jax.tree.leaves(chunked_grads)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
