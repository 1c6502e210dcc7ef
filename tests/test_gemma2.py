"""Gemma 2's model options on their own: soft-capped attention and output logits (and the
attention implementations that cannot compute them), (1 + w) RMSNorms, sandwich norms, the
KV cache past the window, and Gemma2ForSequenceClassification both ways. Parity with
transformers' Gemma2ForCausalLM is in tests/test_convert.py and tests/test_generation_parity.py."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.errors import UserError
from lmjax.model import AttentionImpl, Head, ModelConfig, NormPosition, Transformer, init_cache
from lmjax.model import attention
from tests.helpers import random_params

SMALL = dict(vocab_size=97, num_layers=2, embed_dim=48, num_heads=6, num_kv_heads=3,
             head_dim=10, mlp_dim=80, max_seq_len=32, sliding_window=4, sliding_layers=(0,),
             attn_logit_softcap=2.0, final_logit_softcap=1.5, query_pre_attn_scalar=6.0)
TOL = dict(atol=1e-5, rtol=1e-5)
IDS = jax.random.randint(jax.random.key(2), (2, 14), 0, 97)


def small(**overrides) -> ModelConfig:
  return ModelConfig.for_family("gemma2", **{**SMALL, **overrides})


@functools.lru_cache(maxsize=None)
def built(config: ModelConfig):
  """(jitted apply, params) of `config`: params from seed 0, norm scales random too."""
  model = Transformer(config)
  rng = np.random.default_rng(1)  # every param ~ N(0, 0.3): Gemma's stored gains 1 + N(0, 0.3)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.3, x.shape), jnp.float32),
                        random_params(model))
  return jax.jit(model.apply), params


def test_a_fresh_model_starts_with_unit_norm_gains_stored_as_zeros():
  model = Transformer(small())
  fresh = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  scales = [x for path, x in jax.tree_util.tree_leaves_with_path(fresh)
            if path[-1].key == "scale"]
  assert len(scales) == 5 and all(not np.any(x) for x in scales)  # 4 per block + final
  assert set(fresh["layers"]) >= {"attention_norm", "attention_post_norm", "mlp_norm",
                                  "mlp_post_norm"}


def test_output_logits_stay_within_the_final_soft_cap():
  apply, params = built(small(final_logit_softcap=0.5))
  logits = apply({"params": params}, IDS)
  assert float(jnp.max(jnp.abs(logits))) <= 0.5
  uncapped = built(small(final_logit_softcap=None))[0]({"params": params}, IDS)
  assert float(jnp.max(jnp.abs(uncapped))) > 0.5
  np.testing.assert_allclose(logits, 0.5 * jnp.tanh(uncapped / 0.5), **TOL)


def test_attention_soft_cap_changes_the_output():
  apply, params = built(small())
  capped = apply({"params": params}, IDS)
  loose = built(small(attn_logit_softcap=1e6))[0]({"params": params}, IDS)
  plain = built(small(attn_logit_softcap=None))[0]({"params": params}, IDS)
  np.testing.assert_allclose(loose, plain, atol=1e-4, rtol=1e-4)  # a cap far above the logits
  assert not np.allclose(capped, plain, atol=1e-3)


def test_decoding_with_a_kv_cache_past_the_window_equals_the_full_forward():
  config = small(scan_layers=False)
  apply, params = built(config)
  ids, mask = IDS, jnp.ones_like(IDS).at[1, :3].set(0)  # row 1 left-padded by 3
  positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
  expected = apply({"params": params}, ids, mask, positions=positions)
  out, cache = apply({"params": params}, ids[:, :5], mask[:, :5], positions=positions[:, :5],
                     cache=init_cache(config, 2, ids.shape[1]))
  steps = [out]
  for i in range(5, ids.shape[1]):
    out, cache = apply({"params": params}, ids[:, i:i + 1], mask[:, i:i + 1],
                       positions=positions[:, i:i + 1], cache=cache)
    steps.append(out)
  got = jnp.concatenate(steps, axis=1)
  np.testing.assert_allclose(got[0], expected[0], **TOL)
  np.testing.assert_allclose(got[1, 3:], expected[1, 3:], **TOL)


@pytest.mark.parametrize("backend, dtype", [("gpu", jnp.bfloat16), ("tpu", jnp.float32)])
def test_auto_attention_takes_xla_for_soft_capped_logits(monkeypatch, backend, dtype):
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  q = jnp.zeros((1, 128, 2, 128), dtype)   # [batch, q_len, heads, head_dim]: shapes splash takes
  k = jnp.zeros((1, 2, 128, 128), dtype)   # [batch, kv_heads, kv_len, head_dim]
  choose = functools.partial(attention._choose_impl, AttentionImpl.AUTO, q, k, False, False)
  assert choose() is not AttentionImpl.XLA
  assert choose(softcap=50.0) is AttentionImpl.XLA
  if backend == "tpu":  # splash scales by head_dim ** -0.5 only
    assert choose(plain_scale=False) is AttentionImpl.XLA


@pytest.mark.parametrize("fields, message", [
    (dict(attention=AttentionImpl.SPLASH, sliding_window=None, sliding_layers=None),
     r"model\.attention=splash cannot soft-cap the attention logits \(model\.attn_logit_softcap=2\)"),
    (dict(attention=AttentionImpl.CUDNN), r"model\.attention=cudnn cannot soft-cap"),
    (dict(attention=AttentionImpl.SPLASH, sliding_window=None, sliding_layers=None,
          attn_logit_softcap=None),
     r"model\.attention=splash scales the logits by head_dim \*\* -0\.5 only"),
    (dict(attn_logit_softcap=-1.0), r"model\.attn_logit_softcap=-1 is out of range"),
    (dict(final_logit_softcap=0.0), r"model\.final_logit_softcap=0 is out of range"),
    (dict(query_pre_attn_scalar=0.0), r"model\.query_pre_attn_scalar=0 is out of range"),
    (dict(norm_position=NormPosition.POST), r"model\.post_norms=true .* model\.norm_position=pre"),
])
def test_options_no_implementation_computes_are_refused_by_name(fields, message):
  with pytest.raises(UserError, match=message):
    small(**fields)


# -- Gemma2ForSequenceClassification, both ways --------------------------------------------------
# A bias-free `score` on the last real token, as every HF decoder classifier: transformers'
# classifier never soft-caps its logits (final_logit_softcapping is the LM head's), nor does
# lmjax's.


def test_an_imported_gemma2_classifier_gives_the_logits_of_transformers(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from lmjax.convert import from_hf, to_hf
  from tests.hf_models import _GEMMA2, assert_same_logits, randomise, read_tensors
  config = transformers.Gemma2Config(**{**_GEMMA2, "final_logit_softcapping": 0.5},
                                     pad_token_id=0, num_labels=3)
  hf_model = randomise(transformers.Gemma2ForSequenceClassification(config))
  hf_model.save_pretrained(tmp_path / "hf")
  model, params = from_hf(tmp_path / "hf")
  assert (model.config.head, model.config.num_labels, model.config.classifier_bias,
          model.config.final_logit_softcap) == (Head.CLASSIFICATION, 3, False, 0.5)
  assert_same_logits(hf_model, model, params)
  with torch.no_grad():  # the LM head's cap leaves the classifier alone, in both libraries
    assert float(hf_model(input_ids=torch.tensor(np.asarray(IDS))).logits.abs().max()) > 0.5
  to_hf(model, params, tmp_path / "out")
  assert read_tensors(tmp_path / "out") == read_tensors(tmp_path / "hf")


def test_an_exported_gemma2_classifier_gives_its_logits_in_transformers(tmp_path):
  transformers = pytest.importorskip("transformers")
  from lmjax.convert import from_hf, to_hf
  from tests.hf_models import assert_same_logits, random_lmjax
  config = small(vocab_size=89, head=Head.CLASSIFICATION, num_labels=2, scan_layers=False)
  model, params = random_lmjax(config)
  to_hf(model, params, tmp_path / "hf", config_overrides={"pad_token_id": 0})
  hf_model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
      tmp_path / "hf", output_loading_info=True)
  assert not any(info.values()), info
  assert type(hf_model).__name__ == "Gemma2ForSequenceClassification"
  assert_same_logits(hf_model.eval(), model, params)
  model2, params2 = from_hf(tmp_path / "hf", scan_layers=False)
  assert model2.config == config
  jax.tree.map(np.testing.assert_array_equal, params2, params)
