"""Qwen3-MoE (`qwen3_moe`): Qwen3's attention (QK-norm, one window for every layer, or none)
with a sparse Mixture-of-Experts MLP in every layer (128 experts, 8 per token, as
Qwen3-30B-A3B; its `norm_topk_prob` says whether their weights are renormalised)."""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.errors import UserError
from lmjax.hf.config_fields import refuse, require
from lmjax.hf.families import decoder
from lmjax.hf.families.graphs import DECODER
from lmjax.hf.family import HfFamily, ModelType
from lmjax.model.config import ModelConfig
from lmjax.model.families import Family
from lmjax.model.moe_config import MoeConfig
from lmjax.model.options import Head

# Its intermediate_size is for dense layers, which lmjax does not build; its experts are
# moe_intermediate_size wide. head_dim defaults to hidden_size / num_attention_heads (its code's
# getattr), its window to every layer.
CLASS_DEFAULTS = {
    **decoder.CLASS_DEFAULTS, **decoder.LAYERED_WINDOW_DEFAULTS, "vocab_size": 151936,
    "max_position_embeddings": 32768, "hidden_size": 2048, "intermediate_size": 6144,
    "num_hidden_layers": 24, "num_key_value_heads": 4, "head_dim": None, "max_window_layers": 0,
    "decoder_sparse_step": 1, "moe_intermediate_size": 768, "num_experts_per_tok": 8,
    "num_experts": 128, "norm_topk_prob": False, "router_aux_loss_coef": 0.001,
    "mlp_only_layers": None}


def read(d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  sparse_step, dense_layers = d["decoder_sparse_step"], d["mlp_only_layers"] or []
  if sparse_step != 1 or dense_layers:
    raise UserError(f"decoder_sparse_step={sparse_step} with mlp_only_layers={dense_layers} makes "
                    f"some layers dense, which lmjax's uniform (scanned) stack does not build; "
                    f"convert a model with experts in every layer (decoder_sparse_step=1, "
                    f"mlp_only_layers=[]).")
  refuse(d, "attention_bias", True, "its attention_bias biases q/k/v and o_proj but not the "
         "MLP, and lmjax has one switch for o_proj and the MLP")
  # Its window covers every layer; its config has no layer_types.
  fields = {**decoder.read(d, qkv_bias=False, use_bias=False),
            **decoder.read_layered_window({**d, "layer_types": None, "max_window_layers": 0})}
  # transformers v5 writes `num_experts` as `num_local_experts`
  width = d["moe_intermediate_size"]
  fields["moe"] = MoeConfig(
      num_experts=d.get("num_local_experts", d["num_experts"]),
      experts_per_token=d["num_experts_per_tok"],
      mlp_dim=None if width == fields["mlp_dim"] else width,
      normalize_weights=bool(d["norm_topk_prob"]), aux_loss_coef=float(d["router_aux_loss_coef"]))
  return fields


def write(config: ModelConfig, act: str) -> dict[str, Any]:
  """(A capacity_factor is lmjax's dispatch, not the function: HF computes the same model
  dropless.)"""
  moe = config.moe
  require(config, "qwen3_moe", qkv_bias=False, use_bias=False)
  window = decoder.write_every_layer_window(config, "qwen3_moe")["sliding_window"]
  return dict(decoder.write(config, "qwen3_moe", act), attention_bias=False,
              use_sliding_window=window is not None, sliding_window=window,
              num_experts=moe.num_experts, norm_topk_prob=moe.normalize_weights,
              moe_intermediate_size=config.expert_mlp_dim, decoder_sparse_step=1,
              mlp_only_layers=[], num_experts_per_tok=moe.experts_per_token,
              router_aux_loss_coef=moe.aux_loss_coef, output_router_logits=False)


FAMILY = HfFamily(
    Family("qwen3_moe", {**DECODER, "qk_norm": True, "norm_eps": 1e-6,
                         "moe": MoeConfig(num_experts=128, experts_per_token=8)}, experts=True),
    (ModelType("qwen3_moe", "qwen3_moe", decoder.architectures("Qwen3Moe"), CLASS_DEFAULTS,
               decoder.with_experts(decoder.with_qk_norms(decoder.KEY_MAP), "mlp", "gate_proj",
                                    "up_proj", "down_proj"),
               read, write, keys=frozenset({"sliding_window"}), experts=True),))
