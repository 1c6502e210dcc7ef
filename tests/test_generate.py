"""Inference: KV-cache decoding, left padding, sampling, fill-mask, scoring and their errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.errors import UserError
from lmjax.generate import fill_mask, filter_logits, generate, score
from lmjax.model import Transformer, init_cache, preset

TINY = dict(vocab_size=128, num_layers=2, embed_dim=64, num_heads=4, mlp_dim=128, max_seq_len=64)
# A wider init than the default 0.02 makes greedy continuations vary from token to token, instead
# of repeating the last prompt token, so that comparisons below have something to catch.
CAUSAL_PRESETS = {
    "gpt2": dict(name="tiny-gpt", initializer_range=0.2),
    "llama": dict(name="tiny-llama", initializer_range=0.2, num_kv_heads=2),
}
MAX_NEW = 8  # one value throughout, so tests share compiled decode loops
# The longest prompt passes generate's padding bucket of 16, so the batch is padded to 32 and the
# shortest prompt sits behind 30 padding slots.
PROMPTS = [[5, 17, 3, 99, 42], [7, 1], [11, 23, 35, 47, 59, 71, 83, 95, 107, 119, 2, 4, 6, 8, 10,
                                       12, 14]]


@functools.cache
def causal_model(family: str, scan_layers: bool = True):
  fields = dict(CAUSAL_PRESETS[family])
  config = preset(fields.pop("name"), **TINY, **fields, scan_layers=scan_layers)
  model = Transformer(config, jnp.float32)
  return model, init_params(model)


@functools.cache
def bert_model():
  model = Transformer(preset("tiny-bert", **TINY), jnp.float32)
  return model, init_params(model)


def init_params(model):
  # Jitted, and with an rbg key: eager init, or threefry's bit generation, compile for seconds.
  key = jax.random.key(0, impl="rbg")
  return jax.jit(model.init)(key, jnp.zeros((1, 8), jnp.int32))["params"]


@functools.cache
def jitted_apply(model):
  return jax.jit(lambda params, ids, types=None: model.apply({"params": params}, ids,
                                                            token_type_ids=types))


def causal_logits(model, params, sequence):
  """Logits [len, vocab] of one sequence, without cache; one compiled shape for every length."""
  buffer = np.zeros((1, 40), np.int32)  # right padding is invisible to a causal model
  buffer[0, :len(sequence)] = sequence
  return jitted_apply(model)(params, buffer)[0, :len(sequence)]


def greedy_by_recompute(model, params, prompt, num_tokens):
  """Argmax continuation by running the whole sequence again for every token, without cache."""
  sequence = list(prompt)
  for _ in range(num_tokens):
    sequence.append(int(jnp.argmax(causal_logits(model, params, sequence)[-1])))
  return sequence[len(prompt):]


# -- KV cache and padding ---------------------------------------------------------------------


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_with_kv_cache_matches_full_recompute(family, scan_layers):
  model, params = causal_model(family, scan_layers)
  out = generate(model, params, [PROMPTS[0]], max_new_tokens=MAX_NEW, temperature=0)
  assert out == [greedy_by_recompute(model, params, PROMPTS[0], MAX_NEW)]
  assert len(set(out[0])) > 2  # the model is not just repeating itself


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_batched_prompts_of_different_lengths_continue_as_each_alone(family):
  model, params = causal_model(family)
  batched = generate(model, params, PROMPTS, max_new_tokens=MAX_NEW, temperature=0)
  # Alone means unpadded: a full recompute per token (which the cached path matches, above).
  alone = [greedy_by_recompute(model, params, p, MAX_NEW) for p in PROMPTS]
  assert batched == alone
  assert all(len(row) == MAX_NEW for row in batched)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_incremental_decoding_logits_match_full_sequence(family):
  model, params = causal_model(family)
  rows = [[3, 14, 15, 92, 65, 35, 89, 79, 32, 38], [27, 18, 28, 18, 28, 45]]
  length, prefill = 10, 6
  # Row 1 is left-padded: its first prefill holds 4 padding slots and 2 real tokens.
  ids = np.zeros((2, length), np.int32)
  mask = np.zeros((2, length), np.int32)
  for r, row in enumerate(rows):
    ids[r, length - len(row):], mask[r, length - len(row):] = row, 1
  positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
  step = jax.jit(lambda p, ids, mask, pos, cache: model.apply(
      {"params": p}, ids, mask, positions=pos, cache=cache))
  cache = init_cache(model.config, 2, length)
  logits, cache = step(params, ids[:, :prefill], mask[:, :prefill], positions[:, :prefill], cache)
  chunks = [logits]
  for t in range(prefill, length):
    logits, cache = step(params, ids[:, t:t + 1], mask[:, t:t + 1], positions[:, t:t + 1], cache)
    chunks.append(logits)
  cached = np.concatenate(chunks, axis=1)  # [batch, length, vocab]

  for r, row in enumerate(rows):
    full = causal_logits(model, params, row)
    np.testing.assert_allclose(cached[r, length - len(row):], full, atol=1e-5, rtol=0)


# -- sampling ---------------------------------------------------------------------------------


def test_filter_logits_applies_top_k_then_renormalised_top_p():
  logits = jnp.log(jnp.asarray([[0.05, 0.5, 0.15, 0.3]]))
  kept = lambda **kw: np.isfinite(np.asarray(filter_logits(logits, **kw)))[0].tolist()
  assert kept(top_k=4, top_p=1.0) == [True, True, True, True]
  assert kept(top_k=1, top_p=1.0) == [False, True, False, False]
  assert kept(top_k=4, top_p=0.7) == [False, True, False, True]   # 0.5 < 0.7 <= 0.5 + 0.3
  assert kept(top_k=3, top_p=0.9) == [False, True, True, True]    # 0.8 / 0.95 < 0.9
  assert kept(top_k=4, top_p=1e-6) == [False, True, False, False]  # the top token always stays
  np.testing.assert_array_equal(filter_logits(logits, top_k=2, top_p=1.0)[0, 1], logits[0, 1])


def test_sampling_is_reproducible_per_seed_and_top_k_1_is_greedy():
  model, params = causal_model("gpt2")
  sample = functools.partial(generate, model, params, PROMPTS, max_new_tokens=MAX_NEW,
                             temperature=1.0)
  assert sample(seed=0) == sample(seed=0)
  assert sample(seed=0) != sample(seed=1)
  greedy = generate(model, params, PROMPTS, max_new_tokens=MAX_NEW, temperature=0)
  assert sample(seed=3, top_k=1) == greedy
  assert sample(seed=3, top_p=1e-6) == greedy
  assert sample(seed=3, temperature=1e-4, top_k=50, top_p=0.9) == greedy


def test_eos_ends_each_row_where_it_first_appears():
  model, params = causal_model("gpt2")
  greedy = generate(model, params, PROMPTS, max_new_tokens=MAX_NEW, temperature=0)
  eos = greedy[0][2]
  out = generate(model, params, PROMPTS, max_new_tokens=MAX_NEW, temperature=0, eos_id=eos)
  for row, full in zip(out, greedy):
    assert row == (full[:full.index(eos) + 1] if eos in full else full)
  assert out[0][-1] == eos and len(out[0]) <= 3


# -- fill-mask and scoring --------------------------------------------------------------------


def test_fill_mask_returns_sorted_top_k_of_the_mlm_softmax():
  model, params = bert_model()
  mask_id, top_k = 4, 5
  ids = [1, 20, mask_id, 33, 41, mask_id, 2]
  types = [0, 0, 0, 0, 1, 1, 1]
  candidates = fill_mask(model, params, ids, mask_id=mask_id, top_k=top_k, token_type_ids=types)
  logits = jitted_apply(model)(params, np.asarray([ids]), np.asarray([types]))[0]
  probs = jax.nn.softmax(logits, axis=-1)
  assert len(candidates) == 2
  for position, found in zip([2, 5], candidates):
    assert len(found) == top_k
    found_probs = [p for _, p in found]
    assert found_probs == sorted(found_probs, reverse=True)
    expected = np.argsort(-np.asarray(probs[position]))[:top_k]
    assert [t for t, _ in found] == expected.tolist()
    np.testing.assert_allclose(found_probs, probs[position, expected], rtol=1e-6)


def test_score_sums_next_token_log_probs_and_ignores_padding():
  model, params = causal_model("llama")
  row = [9, 8, 7, 6, 5]
  log_probs = jax.nn.log_softmax(causal_logits(model, params, row), axis=-1)
  expected = sum(float(log_probs[t - 1, row[t]]) for t in range(1, len(row)))
  ids = np.asarray([row + [-100, -100], [-100, -100] + row])  # right- and left-padded
  mask = (ids != -100).astype(np.int32)
  np.testing.assert_allclose(score(model, params, ids, mask), [expected, expected], rtol=1e-5)


# -- user errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompts=[[1, 2], []]), "prompt 1 is empty"),
    (dict(prompts=[[1] * 60], max_new_tokens=10), r"\(60 tokens\).*10.*max_seq_len=64.*at most 4"),
    (dict(prompts=[[1] * 70], max_new_tokens=10),
     r"\(70 tokens\).*shorten the prompt to fewer than 64 tokens \(to at most 54"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_k=0), "top_k must be >= 1"),
    (dict(temperature=-0.5), "temperature must be >= 0"),
    (dict(prompts=[[1, 500]]), "token id 500"),
])
def test_generate_rejects_bad_arguments(kwargs, message):
  model, params = causal_model("gpt2")
  kwargs = {"prompts": [[1, 2]], "max_new_tokens": 4, **kwargs}
  with pytest.raises(UserError, match=message):
    generate(model, params, **kwargs)


def test_generate_and_score_refuse_a_masked_lm_and_fill_mask_a_causal_lm():
  bert, bert_params = bert_model()
  with pytest.raises(UserError, match="use fill_mask"):
    generate(bert, bert_params, [[1, 2]], max_new_tokens=4)
  with pytest.raises(UserError, match="use fill_mask"):
    score(bert, bert_params, np.ones((1, 4), np.int32))
  gpt, gpt_params = causal_model("gpt2")
  with pytest.raises(UserError, match="use generate"):
    fill_mask(gpt, gpt_params, [1, 4, 2], mask_id=4)


def test_fill_mask_needs_a_mask_token():
  model, params = bert_model()
  with pytest.raises(UserError, match="no mask token"):
    fill_mask(model, params, [1, 20, 33, 2], mask_id=4)
