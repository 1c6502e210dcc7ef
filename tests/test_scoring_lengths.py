"""Scoring long windows: padded lengths a few percent above a batch's own, log-probabilities
taken a chunk of positions at a time that equal log_softmax over the full logits, and causal
attention read a block of queries at a time (or, for right-padded single-document rows, in tiles
masked by slot alone) that equals attention in one pass."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.infer import continuation_log_likelihoods, score
from lmjax.infer import scoring
from lmjax.infer.scoring import bucket_length, target_log_probs
from lmjax.model import Transformer, attention, causal, preset

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
  """The padding bucket_length promises: under max(16, min(length / 8, 128)) positions."""
  return max(scoring._MIN_BUCKET, min(length / 8, scoring._MAX_STEP))


def test_padding_stays_under_an_eighth_and_128_positions_just_past_every_bucket_boundary():
  buckets = sorted({bucket_length(n, NO_CAP) for n in range(1, 40_000)})
  for edge in buckets:
    for length in (edge + 1, edge + 2, edge + scoring._MIN_BUCKET - 1):
      padded = bucket_length(length, NO_CAP)
      assert length <= padded and padded % scoring._MIN_BUCKET == 0, length
      assert padded - length < bucket_bound(length), (length, padded)
  # the case in the issue: a 4,232-token document was scored as 8,192 (2.8% padding, not 94%)
  assert bucket_length(4232, 8192) == 4352
  assert bucket_length(8193 - 127, 8192) == 8192 and bucket_length(8000, 8192) == 8064


def test_padding_bound_holds_for_every_length_and_a_cap_only_lowers_it():
  for length in range(1, 20_000):
    padded = bucket_length(length, NO_CAP)
    assert length <= padded and padded - length < bucket_bound(length), length
    for cap in (length, length + 5, 2048):
      if length <= cap:
        assert length <= bucket_length(length, cap) <= min(padded, cap), (length, cap)


def test_few_lengths_are_compiled_per_doubling():
  # 8 multiples of 16 up to 128, 8 lengths in each doubling to 1,024, then multiples of 128
  assert len({bucket_length(n, NO_CAP) for n in range(1, 8193)}) == 8 + 8 * 3 + 7 * 1024 // 128


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


# -- causal attention a block of queries at a time -------------------------------------------------


@pytest.mark.parametrize("block, calls, softcap, window", [(16, 5, None, None), (35, 2, 3.0, 20)])
def test_causal_attention_a_block_of_queries_at_a_time_equals_one_pass(monkeypatch, block, calls,
                                                                         softcap, window):
  rng = np.random.default_rng(block)
  q = jnp.asarray(rng.normal(size=(2, 70, 4, 8)), jnp.float32)      # [batch, len, heads, dim]
  k, v = (jnp.asarray(rng.normal(size=(2, 2, 70, 8)), jnp.float32) for _ in range(2))
  # row 0: two packed documents; row 1: right padding
  segments = jnp.asarray([[1] * 30 + [2] * 40, [1] * 50 + [0] * 20], jnp.int32)
  mask = attention.make_mask(segments, segments, causal=True)
  if window is not None:
    mask = attention.sliding_window_mask(mask, window, causal=True)
  expected = attention._dense_attention(q, k, v, mask.dense, scale=0.3, softcap=softcap)
  monkeypatch.setattr(attention, "QUERY_BLOCK", block)
  shapes = []
  real = attention._dense_attention

  def spy(q, k, *args, **kwargs):
    shapes.append((q.shape[1], k.shape[2]))
    return real(q, k, *args, **kwargs)

  monkeypatch.setattr(attention, "_dense_attention", spy)
  got = attention.dot_product_attention(q, k, v, mask, impl=attention.AttentionImpl.XLA,
                                        causal=True, scale=0.3, softcap=softcap)
  # each block of queries sees the keys up to its own end only
  assert shapes == [(min(block, 70 - n), min(n + block, 70)) for n in range(0, 70, block)]
  assert len(shapes) == calls
  real_rows = np.asarray(segments != 0)  # padded queries attend to nothing: any value
  np.testing.assert_allclose(np.asarray(got)[real_rows], np.asarray(expected)[real_rows],
                             atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["llama", "gemma2"])  # gemma2: soft-capped, sliding windows
def test_a_model_reading_blocks_of_queries_gives_transformers_logits(monkeypatch, tmp_path, name):
  hf_models = pytest.importorskip("tests.hf_models")  # transformers
  from lmjax.convert import from_hf
  hf_model = hf_models.build_hf(name)
  hf_model.save_pretrained(tmp_path)
  model, params = from_hf(tmp_path)
  monkeypatch.setattr(attention, "QUERY_BLOCK", 4)  # sample_inputs has 11 positions: 4, 4, 3
  blocks = []
  real = attention._dense_attention
  monkeypatch.setattr(attention, "_dense_attention",
                      lambda q, *args, **kwargs: blocks.append(q.shape[1]) or real(q, *args,
                                                                                   **kwargs))
  hf_models.assert_same_outputs(hf_model, model, params)
  assert set(blocks) == {4, 3}


# -- right-padded single-document rows: causal tiles masked by slot alone --------------------------


@pytest.mark.parametrize("softcap, window, tiled", [(None, None, True), (3.0, None, False),
                                                    (None, 100, False)])
def test_right_padded_rows_read_in_causal_tiles_equal_dense_attention(monkeypatch, softcap, window,
                                                                      tiled):
  rng = np.random.default_rng(11)
  monkeypatch.setattr(causal, "BLOCK", 64)
  n = 300  # 5 tiles of 64, the last one padded; grouped query heads
  q = jnp.asarray(rng.normal(size=(2, n, 4, 8)), jnp.float32)       # [batch, len, heads, dim]
  k, v = (jnp.asarray(rng.normal(size=(2, 2, n, 8)), jnp.float32) for _ in range(2))
  segments = jnp.asarray([[1] * n, [1] * 190 + [0] * (n - 190)], jnp.int32)  # right padding
  mask = attention.make_mask(segments, segments, causal=True)
  if window is not None:
    mask = attention.sliding_window_mask(mask, window, causal=True)
  expected = attention._dense_attention(q, k, v, mask.dense, scale=0.3, softcap=softcap)
  calls = []
  real = causal.attention
  monkeypatch.setattr(causal, "attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
  got = attention.dot_product_attention(
      q, k, v, mask._replace(rows=attention.Rows.RIGHT_PADDED), impl=attention.AttentionImpl.XLA,
      causal=True, windowed=window is not None, scale=0.3, softcap=softcap)
  # soft-capped or windowed rows keep the dense path, which masks every score
  assert bool(calls) == tiled
  real_rows = np.asarray(segments != 0)  # padded queries: any value
  np.testing.assert_allclose(np.asarray(got)[real_rows], np.asarray(expected)[real_rows],
                             atol=1e-6, rtol=0)


def test_score_reads_right_padded_rows_in_causal_tiles_and_left_padded_ones_densely(monkeypatch):
  model, params = llama()
  monkeypatch.setattr(causal, "BLOCK", 8)  # 29 positions: 4 tiles, the last one padded
  calls = []
  real = causal.attention
  monkeypatch.setattr(causal, "attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
  row = np.random.default_rng(3).integers(0, VOCAB, 26).tolist()
  expected, _ = reference_log_probs(model, params, np.asarray([row[:-1]]), np.asarray([row[1:]]))
  right = np.asarray([row + [-100] * 3, row[:20] + [-100] * 9])
  got = score(model, params, right, (right != -100).astype(np.int32))
  assert calls  # traced through the tiles (once: the layers are scanned)
  np.testing.assert_allclose(got[0], expected.sum(), rtol=1e-5)
  np.testing.assert_allclose(got[1], expected[0, :19].sum(), rtol=1e-5)
  calls.clear()
  left = np.asarray([[-100] * 3 + row])
  np.testing.assert_allclose(score(model, params, left, (left != -100).astype(np.int32)),
                             [expected.sum()], rtol=1e-5)
  assert not calls
