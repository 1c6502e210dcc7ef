"""The Mixture-of-Experts MLP on its own: both dispatches against the dense reference (and the
capacity's drops against a plain loop), the load-balancing loss against transformers', the
loss the train step minimises, and the configs lmjax refuses. Parity of whole Mixtral and
Qwen3-MoE models with transformers, both ways, is in tests/test_convert.py and
tests/test_generation_parity.py; expert x fsdp sharding in tests/test_sharding.py."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmjax.data.spec import Objective
from lmjax.errors import UserError
from lmjax.model import ModelConfig, Transformer
from lmjax.hf.config import hf_config_to_model_config, model_config_to_hf_config
from lmjax.model.moe import MoeMlp, dense_moe, load_balancing_loss, route
from lmjax.model.moe_config import MoeConfig
from lmjax.run.record import TrainState
from lmjax.train.step import train_step
from tests.helpers import random_params

SMALL = dict(vocab_size=61, num_layers=2, embed_dim=24, num_heads=3, num_kv_heads=1, mlp_dim=20,
             max_seq_len=32)


def config(**moe) -> ModelConfig:
  return ModelConfig.for_family("mixtral", **SMALL, moe=MoeConfig(
      **{"num_experts": 5, "experts_per_token": 2, **moe}))


def mlp_params(cfg: ModelConfig, seed: int = 0):
  x = jnp.zeros((1, 4, cfg.embed_dim))
  params = nn.unbox(MoeMlp(cfg).init(jax.random.key(seed), x, jnp.ones((1, 4), bool))["params"])
  keys = jax.random.split(jax.random.key(seed + 1), len(params))
  return {name: 0.3 * jax.random.normal(k, p.shape)
          for k, (name, p) in zip(keys, sorted(params.items()))}


X = jax.random.normal(jax.random.key(7), (3, 9, 24))


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("capacity_factor", [None, 10.0])  # 10: room for every token
def test_both_dispatches_equal_every_expert_on_every_token(capacity_factor, normalize):
  cfg = config(capacity_factor=capacity_factor, normalize_weights=normalize)
  params = mlp_params(cfg)
  valid = jnp.ones(X.shape[:2], bool)
  apply = lambda p: MoeMlp(cfg).apply({"params": p}, X, valid)
  dense = lambda p: dense_moe(X, p, cfg)
  # Each side compiled (one program, not its ops one by one), as a model runs.
  np.testing.assert_allclose(jax.jit(apply)(params), jax.jit(dense)(params), atol=1e-5, rtol=1e-5)
  # And so do their gradients (the grouped matmul's and the buffers' transposes).
  probe = jax.random.normal(jax.random.key(8), X.shape)
  loss = lambda f: lambda p: jnp.sum(f(p) * probe + 0.1 * f(p) ** 2)
  grads = jax.jit(jax.grad(loss(apply)))(params)
  expected = jax.jit(jax.grad(loss(dense)))(params)
  for name in params:
    np.testing.assert_allclose(grads[name], expected[name], atol=1e-4, rtol=1e-4, err_msg=name)


def test_a_full_expert_drops_the_tokens_past_its_capacity_first_choices_first():
  cfg = config(capacity_factor=0.6)  # ceil(0.6 * 9 * 2 / 5) = 3 slots per expert and sequence
  params = mlp_params(cfg)
  valid = jnp.ones(X.shape[:2], bool).at[1, 6:].set(False)  # padding takes no slots
  out = np.asarray(MoeMlp(cfg).apply({"params": params}, X, valid))
  # Which (token, choice) pairs keep their expert, by a loop over each sequence: every token's
  # first choice before any second choice, tokens in order, each expert 3 slots.
  probs = jax.nn.softmax(X @ params["router"])
  weights, chosen = (np.asarray(a) for a in route(probs, 2, True))
  kept = np.zeros(chosen.shape, bool)
  for b in range(X.shape[0]):
    used = np.zeros(5, int)
    for j in range(2):
      for t in range(X.shape[1]):
        if valid[b, t] and used[chosen[b, t, j]] < 3:
          used[chosen[b, t, j]] += 1
          kept[b, t, j] = True
  assert 0 < kept[np.asarray(valid)].mean() < 1  # some dropped, some kept
  per_expert = np.asarray(jax.vmap(lambda e: dense_moe_one(X, params, cfg, e))(jnp.arange(5)))
  expected = np.zeros_like(out)
  for b, t, j in zip(*np.nonzero(kept)):
    expected[b, t] += weights[b, t, j] * per_expert[chosen[b, t, j], b, t]
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


def dense_moe_one(x, params, cfg, e):
  """Expert e's output for every token."""
  gate, up, down = (params[n][e] for n in ("experts_gate", "experts_up", "experts_down"))
  return (jax.nn.silu(x @ gate) * (x @ up)) @ down


def test_capacity_of_the_whole_sequence_never_drops_even_decoding_one_token():
  cfg = config(capacity_factor=1.0)
  params = mlp_params(cfg)
  one = X[:, :1]  # capacity min(1, ceil(1.0 * 1 * 2 / 5)) = 1: each expert gets <= 1 token
  np.testing.assert_allclose(MoeMlp(cfg).apply({"params": params}, one, jnp.ones((3, 1), bool)),
                             dense_moe(one, params, cfg), atol=1e-5, rtol=1e-5)


def test_the_load_balancing_loss_equals_transformers_with_padding():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
  from lmjax.convert import from_hf
  import tempfile
  torch.manual_seed(0)
  hf_config = transformers.MixtralConfig(
      vocab_size=61, hidden_size=24, intermediate_size=20, num_hidden_layers=2,
      num_attention_heads=3, num_key_value_heads=1, num_local_experts=5, num_experts_per_tok=2)
  hf_model = transformers.MixtralForCausalLM(hf_config).eval()
  with torch.no_grad():
    for p in hf_model.parameters():
      p.normal_(0.0, 0.3)
  ids = np.random.default_rng(0).integers(3, 61, (2, 11))
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  with tempfile.TemporaryDirectory() as tmp:
    hf_model.save_pretrained(tmp)
    model, params = from_hf(tmp)
  with torch.no_grad():
    out = hf_model(torch.tensor(ids), attention_mask=torch.tensor(mask), output_router_logits=True)
  expected = load_balancing_loss_func(out.router_logits, 5, 2, torch.tensor(mask)).item()
  _, state = model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask),
                         mutable=["intermediates"])
  np.testing.assert_allclose(float(load_balancing_loss(state["intermediates"])), expected,
                             rtol=1e-5)


def test_the_train_step_minimises_the_loss_plus_the_weighted_load_balancing_loss():
  cfg = config(aux_loss_coef=0.5)
  model = Transformer(cfg)
  ids = jax.random.randint(jax.random.key(3), (4, 12), 0, 61)
  params = random_params(model, seq_len=12)
  tx = optax.sgd(0.1)
  state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params))
  batch = {"input_ids": ids, "segment_ids": jnp.ones_like(ids)}
  step = jax.jit(functools.partial(train_step, model=model, objective=Objective.CAUSAL_LM,
                                   make_tx=lambda hyper: tx, grad_accum_steps=1, seed=0))
  hyper = {"peak": 0.1, "alpha": 1.0, "warmup": 0.0, "decay": 1.0}  # the logged rate: 0.1
  new, metrics = step(state, batch, hyper)
  aux = float(_aux(model, params, batch))
  assert float(metrics["moe_aux_loss"]) == pytest.approx(aux, rel=1e-5)
  assert float(metrics["loss"]) == pytest.approx(float(_ce(model, params, batch)), rel=1e-5)
  # The update is SGD's on loss + 0.5 * aux, not on the loss alone.
  router = lambda params: np.asarray(params["layers"]["mlp"]["router"])
  # Compiled, as the train step is: one program each instead of the model's ops one by one.
  total = jax.jit(jax.grad(lambda p: _ce(model, p, batch) + 0.5 * _aux(model, p, batch)))(params)
  alone = jax.jit(jax.grad(lambda p: _ce(model, p, batch)))(params)
  moved = router(params) - router(new.params)
  np.testing.assert_allclose(moved, 0.1 * router(total), atol=1e-6, rtol=1e-4)
  assert not np.allclose(moved, 0.1 * router(alone), atol=1e-6)


def _ce(model, params, batch):
  logits = model.apply({"params": params}, batch["input_ids"])
  targets = batch["input_ids"][:, 1:]
  logp = jax.nn.log_softmax(logits[:, :-1])
  return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


def _aux(model, params, batch):
  _, state = model.apply({"params": params}, batch["input_ids"], mutable=["intermediates"])
  return load_balancing_loss(state["intermediates"])


def test_flops_count_the_experts_a_token_goes_through_not_all_of_them():
  dense = ModelConfig.for_family("mistral", **SMALL)
  sparse = config(num_experts=8, experts_per_token=2)
  d, f = SMALL["embed_dim"], SMALL["mlp_dim"]
  assert sparse.block_param_count() - dense.block_param_count() == d * 8 + (2 - 1) * 3 * d * f


_MIXTRAL = {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "hidden_size": 24,
            "num_attention_heads": 3, "num_key_value_heads": 1, "num_hidden_layers": 2,
            "intermediate_size": 20, "vocab_size": 61, "num_local_experts": 4}
_QWEN3_MOE = {**_MIXTRAL, "model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"],
              "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 12}


def test_hub_configs_read_with_their_class_defaults():
  mixtral = hf_config_to_model_config(_MIXTRAL)
  assert (mixtral.moe.num_experts, mixtral.moe.experts_per_token, mixtral.moe.normalize_weights,
          mixtral.expert_mlp_dim, mixtral.rope_theta) == (4, 2, True, 20, 1e6)
  qwen = hf_config_to_model_config(_QWEN3_MOE)
  assert (qwen.moe.num_experts, qwen.moe.normalize_weights, qwen.expert_mlp_dim,
          qwen.qk_norm, qwen.dim_per_head) == (4, False, 12, True, 8)
  assert model_config_to_hf_config(qwen)["num_experts"] == 4


@pytest.mark.parametrize("hf, message", [
    ({**_MIXTRAL, "router_jitter_noise": 0.1}, r"router_jitter_noise=0\.1 is not supported"),
    ({**_QWEN3_MOE, "mlp_only_layers": [1]}, r"mlp_only_layers=\[1\] makes some layers dense"),
    ({**_QWEN3_MOE, "decoder_sparse_step": 2}, r"decoder_sparse_step=2"),
])
def test_hf_options_lmjax_does_not_compute_are_refused(hf, message):
  with pytest.raises(UserError, match=message):
    hf_config_to_model_config(hf)


@pytest.mark.parametrize("make, message", [
    (lambda: ModelConfig.for_family("mixtral", **SMALL, moe=MoeConfig()),
     r"model.family=mixtral is a Mixture-of-Experts model: set model.moe.num_experts"),
    (lambda: config(num_experts=2, experts_per_token=3), r"experts_per_token=3 exceeds"),
    (lambda: ModelConfig.for_family("gpt2", **{**SMALL, "num_kv_heads": None}, moe=MoeConfig(4)),
     r"experts are gated"),
    (lambda: MoeConfig(num_experts=4, capacity_factor=0.0), r"capacity_factor=0 is out of range"),
    (lambda: model_config_to_hf_config(ModelConfig.for_family("llama", **SMALL,
                                                              moe=MoeConfig(4))),
     r"a Hugging Face llama model has no experts"),
    (lambda: model_config_to_hf_config(config(normalize_weights=False)),
     r"renormalises the top-k weights"),
])
def test_configs_that_cannot_work_are_refused_naming_the_key(make, message):
  with pytest.raises(UserError, match=message):
    make()
