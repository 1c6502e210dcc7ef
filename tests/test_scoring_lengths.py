"""Scoring long windows: padded lengths a few percent above a batch's own, and log-probabilities
taken a chunk of positions at a time that equal log_softmax over the full logits."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.infer import continuation_log_likelihoods, score
from lmjax.infer import scoring
from lmjax.infer.scoring import bucket_length, target_log_probs
from lmjax.model import Transformer, preset

VOCAB = 300
# Long enough that rows pass several buckets, short enough to compile in seconds.
TINY = dict(vocab_size=VOCAB, num_layers=2, embed_dim=32, num_heads=4, mlp_dim=64,
            max_seq_len=512, initializer_range=0.3, num_kv_heads=2)
NO_CAP = 1 << 30


@functools.cache
def llama():
  model = Transformer(preset("tiny-llama", **TINY), jnp.float32)
  params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, 8), jnp.int32))
  return model, params["params"]


def reference_log_probs(model, params, input_ids, targets, attention_mask=None):
  """log p(target) and whether it is the argmax, from log_softmax over the whole logits."""
  logits = model.apply({"params": params}, input_ids, attention_mask)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return np.asarray(picked), np.asarray(jnp.argmax(logits, axis=-1) == targets)


# -- bucketed lengths -----------------------------------------------------------------------------


def bucket_bound(length: int) -> float:
  """The padding bucket_length promises: under max(_MIN_BUCKET, length / 8) positions."""
  return max(scoring._MIN_BUCKET, length / 8)


def test_padding_stays_under_an_eighth_just_past_every_bucket_boundary():
  buckets = sorted({bucket_length(n, NO_CAP) for n in range(1, 40_000)})
  for edge in buckets:
    for length in (edge + 1, edge + 2, edge + scoring._MIN_BUCKET - 1):
      padded = bucket_length(length, NO_CAP)
      assert length <= padded and padded % scoring._MIN_BUCKET == 0, length
      assert padded - length < bucket_bound(length), (length, padded)
  # the case in the issue: a 4,232-token document was scored as 8,192
  assert bucket_length(4232, 8192) == 4608


def test_padding_bound_holds_for_every_length_and_a_cap_only_lowers_it():
  for length in range(1, 20_000):
    padded = bucket_length(length, NO_CAP)
    assert length <= padded and padded - length < bucket_bound(length), length
    for cap in (length, length + 5, 2048):
      if length <= cap:
        assert length <= bucket_length(length, cap) <= min(padded, cap), (length, cap)


def test_few_lengths_are_compiled_per_doubling():
  # 8 multiples of 16 up to 128, then 8 lengths in each doubling after: 8 + 8 * 6 up to 8,192.
  assert len({bucket_length(n, NO_CAP) for n in range(1, 8193)}) == 8 + 8 * 6


# -- log-probabilities a chunk of positions at a time ---------------------------------------------


@pytest.mark.parametrize("chunk", [1, 5, 8, 37, 64])
def test_chunked_log_probs_equal_log_softmax_over_the_whole_logits(chunk):
  model, params = llama()
  rng = np.random.default_rng(chunk)
  input_ids = rng.integers(0, VOCAB, (3, 37)).astype(np.int32)  # 37: 5, 8, 64 leave a remainder
  targets = rng.integers(0, VOCAB, (3, 37)).astype(np.int32)
  mask = np.ones_like(input_ids)
  mask[1, 30:] = 0  # a right-padded row
  expected, expected_greedy = reference_log_probs(model, params, input_ids, targets, mask)
  got, greedy = target_log_probs(model, params, input_ids, targets, mask, chunk=chunk)
  assert got.shape == greedy.shape == (3, 37)
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=0)
  np.testing.assert_array_equal(np.asarray(greedy), expected_greedy)
  # a greedy target is recognised as such
  targets[0] = np.argmax(np.asarray(model.apply({"params": params}, input_ids[:1]))[0], axis=-1)
  _, greedy = target_log_probs(model, params, input_ids, targets, mask, chunk=chunk)
  assert np.asarray(greedy)[0].all()


def test_continuations_are_padded_to_their_bucket_and_scored_in_chunks(monkeypatch):
  model, params = llama()
  shapes = []
  real = scoring._continuation_sums

  def spy(model, params, input_ids, *args, chunk):
    shapes.append((input_ids.shape, chunk))
    return real(model, params, input_ids, *args, chunk=chunk)

  monkeypatch.setattr(scoring, "_continuation_sums", spy)
  # logits of 28 positions at a time: both windows take several chunks and a shorter last one,
  # which holds real positions of the second (40 tokens, scored at 48)
  monkeypatch.setattr(scoring, "_CHUNK_BYTES", 4 * VOCAB * 28)
  rng = np.random.default_rng(1)
  requests = [(rng.integers(0, VOCAB, 1).tolist(), rng.integers(0, VOCAB, 300).tolist()),
              (rng.integers(0, VOCAB, 29).tolist(), rng.integers(0, VOCAB, 12).tolist())]
  got = continuation_log_likelihoods(model, params, requests, max_length=512, batch_size=1)
  assert shapes == [((1, 320), 28), ((1, 48), 28)]  # not 512 and 64, the next powers of two
  for (context, continuation), (log_p, is_greedy) in zip(requests, got):
    whole = context + continuation
    ids = np.asarray([whole[:-1]], np.int32)
    expected, greedy = reference_log_probs(model, params, ids, np.asarray([whole[1:]], np.int32))
    np.testing.assert_allclose(log_p, expected[0, -len(continuation):].sum(), rtol=1e-5)
    assert is_greedy == greedy[0, -len(continuation):].all()


def test_score_in_chunks_ignores_left_and_right_padding(monkeypatch):
  model, params = llama()
  monkeypatch.setattr(scoring, "_CHUNK_BYTES", 4 * VOCAB * 2 * 3)  # 3 positions of 2 rows
  row = np.random.default_rng(2).integers(0, VOCAB, 20).tolist()
  expected, _ = reference_log_probs(model, params, np.asarray([row[:-1]]), np.asarray([row[1:]]))
  ids = np.asarray([row + [-100] * 3, [-100] * 3 + row])
  mask = (ids != -100).astype(np.int32)
  np.testing.assert_allclose(score(model, params, ids, mask), [expected.sum()] * 2, rtol=1e-5)


def greedy_continuation(model, params, context, num_tokens):
  """The argmax continuation of `context`, recomputing the whole sequence for each token."""
  apply = jax.jit(lambda ids: model.apply({"params": params}, ids))
  sequence = list(context)
  for _ in range(num_tokens):
    buffer = np.zeros((1, TINY["max_seq_len"]), np.int32)  # right padding: invisible, causal
    buffer[0, :len(sequence)] = sequence
    sequence.append(int(np.argmax(apply(buffer)[0, len(sequence) - 1])))
  return sequence[len(context):]


@pytest.mark.parametrize("block, blocks", [(64, [64] * 5), (100, [100, 100, 100, 20])])
def test_long_batches_read_a_block_of_queries_at_a_time_score_the_same(monkeypatch, block,
                                                                         blocks):
  model, params = llama()
  monkeypatch.setattr(scoring, "_QUERY_BLOCK", block)
  shapes = []
  real = scoring._block_sums

  def spy(model, params, cache, input_ids, *args, chunk):
    shapes.append(input_ids.shape)
    return real(model, params, cache, input_ids, *args, chunk=chunk)

  monkeypatch.setattr(scoring, "_block_sums", spy)
  rng = np.random.default_rng(3)
  context = rng.integers(0, VOCAB, 10).tolist()
  requests = [(rng.integers(0, VOCAB, 1).tolist(), rng.integers(0, VOCAB, 300).tolist()),
              (context, greedy_continuation(model, params, context, 150)),  # across blocks
              (rng.integers(0, VOCAB, 29).tolist(), rng.integers(0, VOCAB, 12).tolist())]
  got = continuation_log_likelihoods(model, params, requests, max_length=512, batch_size=2)
  # the two long rows as one batch of 320 positions, a block at a time; the short one at once
  assert shapes == [(2, n) for n in blocks]
  assert [g for _, g in got] == [False, True, False]
  for (context, continuation), (log_p, _) in zip(requests, got):
    whole = context + continuation
    expected, _ = reference_log_probs(model, params, np.asarray([whole[:-1]], np.int32),
                                      np.asarray([whole[1:]], np.int32))
    np.testing.assert_allclose(log_p, expected[0, -len(continuation):].sum(), rtol=1e-5)
