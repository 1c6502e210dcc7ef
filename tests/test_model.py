"""The Transformer's shapes, masking and numerics on tiny configs."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.model import Head, ModelConfig, PRESET_NAMES, Remat, Transformer, preset
from tests.helpers import random_params

SMALL = dict(vocab_size=97, num_layers=2, embed_dim=48, num_heads=6, mlp_dim=80, max_seq_len=32)


def small(family: str, **overrides) -> ModelConfig:
  return ModelConfig.for_family(family, **{**SMALL, **overrides})


def init(config: ModelConfig, seq_len: int = 12):
  model = Transformer(config)
  return model, random_params(model, seq_len)


@functools.lru_cache(maxsize=None)
def jitted(model: Transformer):
  """model.apply compiled once per model (eager dispatch of every op is slow on CPU)."""
  return jax.jit(model.apply)


# Every preset with scanned layers; the unrolled layout (the same layers under per-layer names,
# compared with the scanned one in test_scan_and_unrolled_layers_compute_the_same_function) on
# the tiny preset of each family: tracing 48 unrolled MoE layers of a full-size preset costs
# ten seconds and checks nothing a tiny one does not.
SHAPE_CASES = [(name, True) for name in PRESET_NAMES] + [
    (name, False) for name in PRESET_NAMES if name.startswith("tiny-")]


@pytest.mark.parametrize("name, scan", SHAPE_CASES)
def test_every_preset_has_the_expected_shapes(name, scan):
  config = preset(name, scan_layers=scan)
  model = Transformer(config)
  ids = jax.ShapeDtypeStruct((2, 16), jnp.int32)
  variables = nn.unbox(jax.eval_shape(lambda i: model.init(jax.random.key(0), i), ids))
  out = jax.eval_shape(lambda v, i: model.apply(v, i), variables, ids)
  expected = {Head.NONE: (2, 16, config.embed_dim)}.get(config.head, (2, 16, config.vocab_size))
  assert out.shape == expected and out.dtype == jnp.float32
  params = jax.tree.leaves(variables["params"])
  count = sum(int(np.prod(p.shape)) for p in params)
  # The analytic count of block matmuls is a lower bound that dominates the total.
  assert count >= config.num_layers * config.block_param_count()
  if scan:
    attention = variables["params"]["layers"]["attention"]["query"]["kernel"]
    assert attention.shape[0] == config.num_layers  # params carry a leading `layers` axis


def test_gpt2_small_has_its_published_parameter_count():
  config = preset("gpt2-small")
  model = Transformer(config)
  variables = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))))
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
  assert count == 124_439_808  # HF GPT2LMHeadModel, tied embeddings counted once


def test_distilbert_base_has_the_parameter_count_of_transformers():
  model = Transformer(preset("distilbert-base"))
  ids = jnp.zeros((1, 8), jnp.int32)
  variables = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), ids)))
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
  assert count == 66_985_530  # DistilBertForMaskedLM(DistilBertConfig()), tied decoder once


def test_gemma2_2b_has_the_parameter_count_of_transformers():
  model = Transformer(preset("gemma2-2b"))
  ids = jnp.zeros((1, 8), jnp.int32)
  variables = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), ids)))
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
  assert count == 2_614_341_888  # Gemma2ForCausalLM(Gemma2Config()), tied output once


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen3", "gemma2", "gemma3"])
def test_changing_a_future_token_never_changes_an_earlier_logit(family):
  model, params = init(small(family, num_kv_heads=None if family == "gpt2" else 3))
  ids = jax.random.randint(jax.random.key(1), (2, 12), 0, 97)
  changed = ids.at[:, 7].set((ids[:, 7] + 1) % 97)
  a, b = jitted(model)({"params": params}, ids), jitted(model)({"params": params}, changed)
  np.testing.assert_array_equal(a[:, :7], b[:, :7])
  assert not np.allclose(a[:, 7:], b[:, 7:])


def test_bert_is_bidirectional():
  model, params = init(small("bert"))
  ids = jax.random.randint(jax.random.key(1), (1, 12), 0, 97)
  a = jitted(model)({"params": params}, ids)
  b = jitted(model)({"params": params}, ids.at[:, 10].set((ids[:, 10] + 1) % 97))
  assert not np.allclose(a[:, :10], b[:, :10])


@pytest.mark.parametrize("family", ["gpt2", "bert", "llama", "qwen3"])
def test_padding_does_not_change_the_logits_of_real_tokens(family):
  model, params = init(small(family))
  ids = jax.random.randint(jax.random.key(2), (1, 9), 0, 97)
  alone = jitted(model)({"params": params}, ids)
  padded = jnp.concatenate([ids, jnp.zeros((1, 5), jnp.int32)], axis=1)
  mask = jnp.concatenate([jnp.ones((1, 9)), jnp.zeros((1, 5))], axis=1).astype(jnp.int32)
  out = jitted(model)({"params": params}, padded, attention_mask=mask)
  np.testing.assert_allclose(out[:, :9], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "bert", "llama", "qwen3"])
def test_packed_documents_do_not_see_each_other(family):
  model, params = init(small(family))
  first = jax.random.randint(jax.random.key(3), (1, 5), 0, 97)
  second = jax.random.randint(jax.random.key(4), (1, 7), 0, 97)
  packed = jnp.concatenate([first, second], axis=1)
  segments = jnp.array([[1] * 5 + [2] * 7])
  positions = jnp.array([list(range(5)) + list(range(7))])
  out = jitted(model)({"params": params}, packed, segment_ids=segments, positions=positions)
  np.testing.assert_allclose(out[:, :5], jitted(model)({"params": params}, first), atol=1e-5)
  np.testing.assert_allclose(out[:, 5:], jitted(model)({"params": params}, second), atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "bert", "llama", "qwen3"])
def test_scan_and_unrolled_layers_compute_the_same_function(family):
  scanned_model, scanned = init(small(family, scan_layers=True))
  unrolled_model, _ = init(small(family, scan_layers=False))
  unrolled = {k: v for k, v in scanned.items() if k != "layers"}
  for i in range(SMALL["num_layers"]):
    unrolled[f"layers_{i}"] = jax.tree.map(lambda x: x[i], scanned["layers"])
  ids = jax.random.randint(jax.random.key(5), (2, 10), 0, 97)
  np.testing.assert_allclose(jitted(scanned_model)({"params": scanned}, ids),
                             jitted(unrolled_model)({"params": unrolled}, ids), atol=1e-5)


@pytest.mark.parametrize("remat", [Remat.FULL, Remat.SAVE_DOTS])
def test_remat_changes_memory_not_values(remat):
  plain_model, params = init(small("llama", remat=Remat.NONE))
  remat_model = Transformer(small("llama", remat=remat))
  ids = jax.random.randint(jax.random.key(6), (2, 10), 0, 97)
  loss = lambda m: lambda p: jnp.sum(jitted(m)({"params": p}, ids) ** 2)
  g1 = jax.grad(loss(plain_model))(params)
  g2 = jax.grad(loss(remat_model))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g1, g2)


def test_bfloat16_compute_keeps_float32_params_and_close_logits():
  config = small("llama")
  model, params = init(config)
  ids = jax.random.randint(jax.random.key(7), (2, 10), 0, 97)
  full = jitted(model)({"params": params}, ids)
  half = Transformer(config, dtype=jnp.bfloat16).apply({"params": params}, ids)
  assert half.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert float(jnp.max(jnp.abs(full - half))) < 0.1


def test_every_param_carries_logical_axis_names():
  model = Transformer(small("bert", pooler=True))
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
  leaves = jax.tree.leaves(boxed["params"], is_leaf=lambda x: hasattr(x, "names"))
  assert leaves and all(hasattr(leaf, "names") and len(leaf.names) == leaf.value.ndim
                        for leaf in leaves)


def test_qk_norm_params_are_per_head_dim_and_named_like_the_other_norms():
  def attention_params(config):
    return jax.eval_shape(lambda: Transformer(config).init(
        jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]["layers"]["attention"]
  attention = attention_params(small("qwen3", num_kv_heads=2, head_dim=10))  # 6 x 10 from 48
  assert attention["query"]["kernel"].value.shape == (2, 48, 6, 10)
  for name in ("query_norm", "key_norm"):
    assert set(attention[name]) == {"scale"}  # an RMSNorm: no bias
    scale = attention[name]["scale"]
    assert scale.value.shape == (2, 10) and scale.names == ("layers", "kv")
  assert not {"query_norm", "key_norm"} & set(attention_params(small("llama")))


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_qk_norm_makes_logits_blind_to_the_scale_of_query_and_key_projections(family):
  # QK-norm normalises each head's query and key, so scaling their projections changes nothing;
  # without it the attention logits scale with them.
  model, params = init(small(family, num_kv_heads=2))
  scaled = jax.tree.map(lambda x: x, params)  # fresh dicts, the same arrays
  attention = scaled["layers"]["attention"]
  for name in ("query", "key"):
    attention[name]["kernel"] = attention[name]["kernel"] * 7
  ids = jax.random.randint(jax.random.key(8), (2, 10), 0, 97)
  a, b = jitted(model)({"params": params}, ids), jitted(model)({"params": scaled}, ids)
  if family == "qwen3":
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
  else:
    assert not np.allclose(a, b, atol=1e-2)
