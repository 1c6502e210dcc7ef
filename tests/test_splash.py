"""The Pallas splash-attention kernel (TPU) gives the XLA attention's outputs and gradients.

On CPU the kernel runs in Pallas interpret mode: the same kernel code, executed by the
interpreter. Rows mix packed documents and padding; the models cover causal and bidirectional
masks, grouped key/value heads and QK-norm, and one runs under a mesh (the kernel per shard
through shard_map).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.model import AttentionImpl, ModelConfig, Transformer
from lmjax.sharding import MeshConfig, mesh_rules

SEQ = 128
SMALL = dict(vocab_size=97, num_layers=2, embed_dim=64, num_heads=4, mlp_dim=96, max_seq_len=SEQ)


def segments() -> np.ndarray:
  """[2, SEQ]: row 0 three packed documents, row 1 one document then padding."""
  rows = np.zeros((2, SEQ), np.int32)
  rows[0, :40], rows[0, 40:100], rows[0, 100:] = 1, 2, 3
  rows[1, :90] = 1
  return rows


@pytest.mark.parametrize("family, extra", [("llama", {"num_kv_heads": 2}), ("gpt2", {}),
                                           ("bert", {}),
                                           ("qwen3", {"num_kv_heads": 2, "head_dim": 32}),
                                           # Gemma 2's graph without the soft-cap splash lacks
                                           ("gemma2", {"num_kv_heads": 2, "head_dim": 32,
                                                       "attn_logit_softcap": None})])
def test_splash_attention_equals_the_xla_attention(family, extra):
  config = ModelConfig.for_family(family, **SMALL, **extra)
  xla = Transformer(config)
  splash = Transformer(ModelConfig.for_family(family, **SMALL, **extra,
                                              attention=AttentionImpl.SPLASH))
  ids = jax.random.randint(jax.random.key(0), (2, SEQ), 3, 97)
  params = nn.unbox(xla.init(jax.random.key(1), ids)["params"])
  seg = jnp.asarray(segments())
  real = np.asarray(seg) != 0
  positions = jnp.asarray(np.concatenate([np.arange(40), np.arange(60), np.arange(28)])[None]
                          .repeat(2, 0) * real)

  def loss(model):
    def f(p):
      out = model.apply({"params": p}, ids, segment_ids=seg, positions=positions)
      return jnp.sum(jnp.where(jnp.asarray(real)[..., None], out, 0.0) ** 2) * 1e-3, out
    return jax.jit(jax.value_and_grad(f, has_aux=True))

  (_, ours), grads = loss(splash)(params)
  (_, reference), expected = loss(xla)(params)
  np.testing.assert_allclose(np.asarray(ours)[real], np.asarray(reference)[real],
                             rtol=1e-4, atol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), grads,
               expected)


def test_splash_attention_runs_per_shard_under_a_mesh():
  config = ModelConfig.for_family("llama", **SMALL, num_kv_heads=2,
                                  attention=AttentionImpl.SPLASH)
  model, reference_model = Transformer(config), Transformer(ModelConfig.for_family(
      "llama", **SMALL, num_kv_heads=2))
  ids = jax.random.randint(jax.random.key(2), (2, SEQ), 3, 97)
  params = nn.unbox(model.init(jax.random.key(3), ids)["params"])
  placement = mesh_rules(MeshConfig(data=1), devices=jax.devices()[:1])

  @jax.jit
  def apply(p):
    with placement.activation_context():
      return model.apply({"params": p}, ids, segment_ids=jnp.asarray(segments()))

  real = segments() != 0
  expected = reference_model.apply({"params": params}, ids, segment_ids=jnp.asarray(segments()))
  np.testing.assert_allclose(np.asarray(apply(params))[real], np.asarray(expected)[real],
                             rtol=1e-4, atol=1e-4)
