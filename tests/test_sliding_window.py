"""Sliding-window attention: the window's reach, its per-layer choice, scanned and unrolled layers,
the KV cache, and the options it refuses. Parity with transformers' Mistral, Qwen2 and Qwen3
windows is in tests/test_convert.py and tests/test_generation_parity.py."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.errors import UserError
from lmjax.model import AttentionImpl, ModelConfig, Transformer, init_cache, unrolled
from lmjax.model import attention
from lmjax.model.attention import make_mask, sliding_window_mask

SMALL = dict(vocab_size=97, num_layers=2, embed_dim=48, num_heads=6, mlp_dim=80, max_seq_len=32)
TOL = dict(atol=1e-5, rtol=1e-5)
LENGTH = 14


def small(family: str, **overrides) -> ModelConfig:
  return ModelConfig.for_family(family, **{**SMALL, **overrides})


@functools.lru_cache(maxsize=None)
def built(config: ModelConfig):
  """(jitted apply, params) of `config`, params from seed 0."""
  model = Transformer(config)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  return jax.jit(model.apply), params


def logits(config: ModelConfig, ids, params=None, **kwargs):
  apply, own = built(config)
  return np.asarray(apply({"params": own if params is None else params}, ids, **kwargs))


IDS = jax.random.randint(jax.random.key(1), (2, LENGTH), 0, 97)


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("family", ["llama", "bert"])
def test_a_window_as_long_as_the_sequence_is_full_attention(family, scan):
  full = small(family, scan_layers=scan)
  _, params = built(full)
  for window in (LENGTH, LENGTH + 5):
    windowed = small(family, scan_layers=scan, sliding_window=window)
    np.testing.assert_allclose(logits(windowed, IDS, params), logits(full, IDS, params), **TOL)
  narrow = small(family, scan_layers=scan, sliding_window=LENGTH - 1)
  assert not np.allclose(logits(narrow, IDS, params), logits(full, IDS, params), **TOL)


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("family", ["llama", "qwen3", "bert"])
def test_tokens_outside_the_window_do_not_reach_the_output(family, scan):
  # Each layer reaches window - 1 slots further back (and, bidirectional, forward), so the last
  # token's output sees slots from LENGTH - 1 - layers * (window - 1) on: 9 here.
  window = 3
  config = small(family, scan_layers=scan, sliding_window=window)
  first_seen = LENGTH - 1 - SMALL["num_layers"] * (window - 1)
  base = logits(config, IDS)
  for old in (0, first_seen - 1):
    changed = logits(config, IDS.at[:, old].add(1) % 97)
    np.testing.assert_array_equal(changed[:, -1], base[:, -1])
  nearest_change = logits(config, IDS.at[:, first_seen].add(1) % 97)
  assert not np.array_equal(nearest_change[:, -1], base[:, -1])  # two hops away: a small change
  if family == "bert":  # symmetric: the first token does not see the last ones either
    far = logits(config, IDS.at[:, LENGTH - 1].add(1) % 97)
    np.testing.assert_array_equal(far[:, 0], base[:, 0])


@pytest.mark.parametrize("layers", [None, (1,), (0,)])
def test_scanned_and_unrolled_layers_slide_the_same_layers(layers):
  scanned = small("llama", num_kv_heads=3, sliding_window=3, sliding_layers=layers)
  _, params = built(scanned)
  flat_config, flat_params = unrolled(scanned, params)
  got = logits(flat_config, IDS, flat_params)
  np.testing.assert_allclose(got, logits(scanned, IDS, params), **TOL)
  if layers is not None:  # and the choice of layers matters
    every = small("llama", num_kv_heads=3, sliding_window=3)
    assert not np.allclose(got, logits(every, IDS, params), **TOL)


def test_decoding_with_a_kv_cache_past_the_window_equals_the_full_forward():
  config = small("llama", num_kv_heads=3, sliding_window=4, scan_layers=False)
  apply, params = built(config)
  ids, mask = IDS, jnp.ones_like(IDS).at[1, :3].set(0)  # row 1 left-padded by 3
  positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
  expected = apply({"params": params}, ids, mask, positions=positions)
  prefill = 5
  out, cache = apply({"params": params}, ids[:, :prefill], mask[:, :prefill],
                     positions=positions[:, :prefill], cache=init_cache(config, 2, LENGTH))
  steps = [out]
  for i in range(prefill, LENGTH):
    out, cache = apply({"params": params}, ids[:, i:i + 1], mask[:, i:i + 1],
                       positions=positions[:, i:i + 1], cache=cache)
    steps.append(out)
  got = jnp.concatenate(steps, axis=1)
  np.testing.assert_allclose(got[0], expected[0], **TOL)
  np.testing.assert_allclose(got[1, 3:], expected[1, 3:], **TOL)


@pytest.mark.parametrize("fields, message", [
    (dict(sliding_window=0), r"model\.sliding_window must be a positive integer .* got 0"),
    (dict(sliding_window=2.5), r"model\.sliding_window must be a positive integer"),
    (dict(sliding_layers=(1,)), r"model\.sliding_layers=\[1\] needs model\.sliding_window"),
    (dict(sliding_window=4, sliding_layers=(2,)), r"each in 0…1"),
    (dict(sliding_window=4, sliding_layers=(1, 0)), r"distinct layer indices in increasing"),
    (dict(sliding_window=4, attention=AttentionImpl.SPLASH),
     r"model\.attention=splash has no sliding window"),
])
def test_inconsistent_window_options_are_refused_by_name(fields, message):
  with pytest.raises(UserError, match=message):
    small("llama", **fields)


def test_layer_windows_name_each_layers_window():
  assert small("llama", sliding_window=4).layer_windows == (4, 4)
  assert small("llama", sliding_window=4, sliding_layers=(1,)).layer_windows == (None, 4)
  assert small("llama").layer_windows == (None, None)


def test_auto_attention_leaves_the_splash_kernel_out_when_a_window_is_set(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  q = jnp.zeros((1, 128, 2, 128))   # [batch, q_len, heads, head_dim]: shapes splash takes
  k = jnp.zeros((1, 2, 128, 128))   # [batch, kv_heads, kv_len, head_dim]
  choose = functools.partial(attention._choose_impl, AttentionImpl.AUTO, q, k, False)
  assert choose(False) is AttentionImpl.SPLASH
  assert choose(True) is AttentionImpl.XLA


@pytest.mark.parametrize("family, seq_len", [("mistral", 24), ("modernbert", 24),
                                              ("modernbert", 5), ("mistral", 3)])
def test_flops_count_the_keys_each_layers_window_holds(family, seq_len):
  """Model FLOPs per token count, per layer, the keys the attention mask lets a query see: the
  window's (counted on the mask itself, sliding_window_mask), or the whole (half, causal)
  context where a layer has none."""
  windowed = ModelConfig.for_family(family, vocab_size=50, num_layers=3, embed_dim=16,
                                    num_heads=2, mlp_dim=24, max_seq_len=32, sliding_window=4,
                                    sliding_layers=(0, 2))
  full = dataclasses.replace(windowed, sliding_window=None, sliding_layers=None)
  ids = jnp.ones((1, seq_len), jnp.int32)
  mask = make_mask(ids, ids, causal=windowed.causal)
  seen = int(sliding_window_mask(mask, 4, causal=windowed.causal).dense.sum()) / seq_len
  context = seq_len / 2 if windowed.causal else seq_len
  per_key = 3 * 4 * windowed.num_heads * windowed.dim_per_head  # per layer, key and token
  expected = 2 * (seen - context) if seq_len > 4 else 0.0  # two windowed layers
  assert windowed.flops_per_token(seq_len) - full.flops_per_token(seq_len) == pytest.approx(
      per_key * expected)
  assert full.flops_per_token(seq_len) == pytest.approx(
      3 * 2 * (3 * full.block_param_count() + 16 * 50) + per_key * 3 * context)
