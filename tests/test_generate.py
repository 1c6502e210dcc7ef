"""Inference: KV-cache decoding, left padding, streaming, sampling, logit processors, fill-mask,
scoring and their errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.errors import UserError
from lmjax.infer import fill_mask, filter_logits, generate, score, stream_generate
from lmjax.infer.sampling import penalise_repetitions
from lmjax.model import Transformer, init_cache, preset
from tests.helpers import random_params

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
  return model, random_params(model)


@functools.cache
def bert_model():
  model = Transformer(preset("tiny-bert", **TINY), jnp.float32)
  return model, random_params(model)


@functools.cache
def jitted_apply(model):
  return jax.jit(lambda params, ids, types=None: model.apply({"params": params}, ids,
                                                            token_type_ids=types))


def causal_logits(model, params, sequence):
  """Logits [len, vocab] of one sequence, without cache; one compiled shape for every length."""
  buffer = np.zeros((1, 40), np.int32)  # right padding is invisible to a causal model
  buffer[0, :len(sequence)] = sequence
  return jitted_apply(model)(params, buffer)[0, :len(sequence)]


def greedy_by_recompute(model, params, prompt, num_tokens, *, penalty=1.0, eos=(), min_new=0):
  """Argmax continuation by running the whole sequence again for every token, without cache;
  with HF's repetition penalty and `min_new` tokens before any of `eos` (which ends the row),
  written out in numpy as the reference."""
  sequence = list(prompt)
  for step in range(num_tokens):
    logits = np.asarray(causal_logits(model, params, sequence)[-1], np.float32).copy()
    seen = sorted(set(sequence))
    logits[seen] = np.where(logits[seen] < 0, logits[seen] * penalty, logits[seen] / penalty)
    if step < min_new:
      logits[list(eos)] = -np.inf
    sequence.append(int(np.argmax(logits)))
    if sequence[-1] in eos:
      break
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


# -- streaming --------------------------------------------------------------------------------


def joined(stream):
  rows = None
  for new_ids in stream:
    rows = [[] for _ in new_ids] if rows is None else rows
    for row, ids in zip(rows, new_ids):
      row.extend(ids)
  return rows


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_joined_stream_equals_generate(chunk, temperature):
  model, params = causal_model("gpt2")
  kwargs = dict(max_new_tokens=MAX_NEW, temperature=temperature, seed=4)
  whole = generate(model, params, PROMPTS, **kwargs)
  eos = whole[0][3]  # ends row 0 inside a chunk, leaving the others running
  whole = generate(model, params, PROMPTS, eos_id=eos, **kwargs)
  chunks = list(stream_generate(model, params, PROMPTS, chunk=chunk, eos_id=eos, **kwargs))
  assert len(chunks) == -(-MAX_NEW // chunk)
  assert all(len(ids) <= chunk for new_ids in chunks for ids in new_ids)
  assert joined(iter(chunks)) == whole
  assert whole[0][-1] == eos and len(whole[0]) <= 4


def test_rows_ended_between_chunks_stop_there_while_the_others_continue():
  model, params = causal_model("llama")
  kwargs = dict(max_new_tokens=MAX_NEW, temperature=1.0, seed=2)
  whole = generate(model, params, PROMPTS, **kwargs)
  stream = stream_generate(model, params, PROMPTS, chunk=3, **kwargs)
  first = next(stream)
  assert first == [row[:3] for row in whole]
  second = stream.send({1})  # row 1 ends now, as at a stop string
  assert second[1] == [] and second[0] == whole[0][3:6] and second[2] == whole[2][3:6]
  with pytest.raises(StopIteration):  # every row has ended: the stream stops before MAX_NEW
    stream.send([0, 2])


def test_stream_arguments_are_checked_before_the_first_chunk():
  model, params = causal_model("gpt2")
  with pytest.raises(UserError, match="chunk must be >= 1"):
    stream_generate(model, params, PROMPTS, max_new_tokens=4, chunk=0)
  stream = stream_generate(model, params, PROMPTS, max_new_tokens=4, chunk=2)
  next(stream)
  with pytest.raises(UserError, match="cannot end row 3: the stream has rows 0 to 2"):
    stream.send({0, 3})


# -- logit processors -------------------------------------------------------------------------


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
  logits = jnp.asarray([[2.0, -2.0, 1.0, -1.0]])
  seen = jnp.asarray([[True, True, False, False]])
  np.testing.assert_array_equal(penalise_repetitions(logits, seen, jnp.float32(2.0)),
                                [[1.0, -4.0, 1.0, -1.0]])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_with_repetition_penalty_matches_the_reference(family):
  model, params = causal_model(family)
  # A penalty that changes the continuation, on prompts with repeated ids and padding.
  prompts = [[5, 5, 17, 3, 5], [7, 1]]
  plain = generate(model, params, prompts, max_new_tokens=MAX_NEW, temperature=0)
  got = generate(model, params, prompts, max_new_tokens=MAX_NEW, temperature=0,
                 repetition_penalty=3.0)
  expected = [greedy_by_recompute(model, params, p, MAX_NEW, penalty=3.0) for p in prompts]
  assert got == expected and got != plain
  # Penalised greedy text repeats less than plain greedy text.
  assert sum(len(set(r)) for r in got) > sum(len(set(r)) for r in plain)


def test_min_new_tokens_bans_every_eos_id_until_reached():
  model, params = causal_model("gpt2")
  greedy = generate(model, params, PROMPTS, max_new_tokens=MAX_NEW, temperature=0)
  eos = (greedy[0][1], greedy[2][0])  # the first row would end at token 2, the last at 1
  got = generate(model, params, PROMPTS, max_new_tokens=MAX_NEW, temperature=0, eos_id=eos,
                 min_new_tokens=4)
  expected = [greedy_by_recompute(model, params, p, MAX_NEW, eos=eos, min_new=4)
              for p in PROMPTS]
  assert got == expected
  assert all(len(row) >= 4 and not set(row[:3]) & set(eos) for row in got)
  sampled = generate(model, params, PROMPTS, max_new_tokens=MAX_NEW, temperature=1.0,
                     eos_id=eos, min_new_tokens=MAX_NEW)
  assert all(len(row) == MAX_NEW and not set(row[:-1]) & set(eos) for row in sampled)


def test_several_eos_ids_each_end_a_row():
  model, params = causal_model("gpt2")
  greedy = generate(model, params, PROMPTS, max_new_tokens=MAX_NEW, temperature=0)
  eos = [greedy[0][4], greedy[1][1]]
  out = generate(model, params, PROMPTS, max_new_tokens=MAX_NEW, temperature=0, eos_id=eos)
  for row, full in zip(out, greedy):
    ends = [i for i, t in enumerate(full) if t in eos]
    assert row == (full[:ends[0] + 1] if ends else full)
  assert len(out[0]) <= 5 and len(out[1]) <= 2


def test_num_return_sequences_gives_each_prompt_consecutive_independent_samples():
  model, params = causal_model("llama")
  n = 3
  out = generate(model, params, PROMPTS[:2], max_new_tokens=MAX_NEW, temperature=1.0,
                 num_return_sequences=n, seed=5)
  assert len(out) == 2 * n and all(len(row) == MAX_NEW for row in out)
  assert len({tuple(row) for row in out[:n]}) == n  # sampled independently
  # Consecutive per prompt: with top_k=1 every sample of a prompt is its greedy continuation.
  greedy = generate(model, params, PROMPTS[:2], max_new_tokens=MAX_NEW, temperature=0)
  top1 = generate(model, params, PROMPTS[:2], max_new_tokens=MAX_NEW, temperature=1.0,
                  top_k=1, num_return_sequences=n)
  assert top1 == [greedy[0]] * n + [greedy[1]] * n


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_bfloat16_greedy_decoding_runs_and_mostly_agrees_with_float32(family):
  model, params = causal_model(family)
  bf16 = Transformer(model.config, jnp.bfloat16)
  bf16_params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  out = generate(bf16, bf16_params, PROMPTS, max_new_tokens=MAX_NEW, temperature=0)
  f32 = generate(model, params, PROMPTS, max_new_tokens=MAX_NEW, temperature=0)
  assert [len(row) for row in out] == [MAX_NEW] * len(PROMPTS)
  assert all(0 <= t < model.config.vocab_size for row in out for t in row)
  assert all(len(set(row)) > 2 for row in out)  # not a degenerate repeat
  # bfloat16 rounding may flip a close argmax, after which a row diverges; the first tokens of
  # most rows agree.
  assert sum(a[0] == b[0] for a, b in zip(out, f32)) >= 2


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
    (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
    (dict(repetition_penalty=float("nan")), "repetition_penalty must be > 0"),
    (dict(min_new_tokens=5), r"min_new_tokens must be between 0 and max_new_tokens=4, got 5"),
    (dict(min_new_tokens=-1), r"min_new_tokens must be between 0 and max_new_tokens=4, got -1"),
    (dict(num_return_sequences=0), "num_return_sequences must be >= 1"),
    (dict(num_return_sequences=2, temperature=0), r"greedy decoding.*2 copies.*temperature > 0"),
])
def test_generate_rejects_bad_arguments(kwargs, message):
  model, params = causal_model("gpt2")
  kwargs = {"prompts": [[1, 2]], "max_new_tokens": 4, **kwargs}
  with pytest.raises(UserError, match=message):
    generate(model, params, **kwargs)


def test_generate_and_score_refuse_a_masked_lm_and_fill_mask_a_causal_lm():
  # The commands as they are spelled (`fill-mask`), and the Python functions.
  bert, bert_params = bert_model()
  with pytest.raises(UserError, match=r"use `lmjax fill-mask` \(lmjax.infer.fill_mask\)"):
    generate(bert, bert_params, [[1, 2]], max_new_tokens=4)
  with pytest.raises(UserError, match=r"use `lmjax fill-mask` \(lmjax.infer.fill_mask\)"):
    score(bert, bert_params, np.ones((1, 4), np.int32))
  gpt, gpt_params = causal_model("gpt2")
  with pytest.raises(UserError, match=r"use `lmjax generate` \(lmjax.generate\)"):
    fill_mask(gpt, gpt_params, [1, 4, 2], mask_id=4)


def test_fill_mask_needs_a_mask_token():
  model, params = bert_model()
  with pytest.raises(UserError, match="no mask token"):
    fill_mask(model, params, [1, 20, 33, 2], mask_id=4)
