"""Mixtral (`mixtral`): Mistral's attention (one window for every layer, or none) with a sparse
Mixture-of-Experts MLP in every layer: 8 experts model.mlp_dim wide, 2 per token, their weights
renormalised over the chosen ones."""

from __future__ import annotations

from typing import Any, Mapping

from lmjax.errors import UserError
from lmjax.hf.config_fields import require
from lmjax.hf.families import decoder
from lmjax.hf.families.graphs import DECODER
from lmjax.hf.family import HfFamily, ModelType
from lmjax.model.config import ModelConfig
from lmjax.model.families import Family
from lmjax.model.moe_config import MoeConfig
from lmjax.model.options import Head

CLASS_DEFAULTS = {
    **decoder.CLASS_DEFAULTS, "intermediate_size": 14336, "num_key_value_heads": 8,
    "max_position_embeddings": 4096 * 32, "sliding_window": None, "rope_theta": 1e6,
    "num_local_experts": 8, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.001,
    "router_jitter_noise": 0.0}


def read(d: Mapping[str, Any], head: Head) -> dict[str, Any]:
  if d["router_jitter_noise"]:
    raise UserError(f"router_jitter_noise={d['router_jitter_noise']!r} is not supported: lmjax's "
                    f"router adds no noise in training; convert a model with 0.")
  fields = {**decoder.read(d, qkv_bias=False, use_bias=False),
            **decoder.read_every_layer_window(d)}
  # transformers v5 maps `num_experts` to `num_local_experts`
  width = d["intermediate_size"]
  fields["moe"] = MoeConfig(
      num_experts=d.get("num_experts", d["num_local_experts"]),
      experts_per_token=d["num_experts_per_tok"],
      mlp_dim=None if width == fields["mlp_dim"] else width, normalize_weights=True,
      aux_loss_coef=float(d["router_aux_loss_coef"]))
  return fields


def write(config: ModelConfig, act: str) -> dict[str, Any]:
  """(A capacity_factor is lmjax's dispatch, not the function: HF computes the same model
  dropless.)"""
  moe = config.moe
  require(config, "mixtral", qkv_bias=False, use_bias=False)
  if not moe.normalize_weights or config.expert_mlp_dim != config.mlp_dim:
    raise UserError(f"model.moe.normalize_weights={moe.normalize_weights} / model.moe.mlp_dim="
                    f"{moe.mlp_dim}: a Hugging Face mixtral model renormalises the top-k weights "
                    f"and its experts are model.mlp_dim wide; set normalize_weights=true and "
                    f"mlp_dim=null, or choose a Mixture-of-Experts family that has these.")
  return dict(decoder.write(config, "mixtral", act),
              **decoder.write_every_layer_window(config, "mixtral"),
              num_local_experts=moe.num_experts, router_jitter_noise=0.0,
              num_experts_per_tok=moe.experts_per_token, router_aux_loss_coef=moe.aux_loss_coef,
              output_router_logits=False)


FAMILY = HfFamily(
    Family("mixtral", {**DECODER, "moe": MoeConfig(num_experts=8, experts_per_token=2)},
           experts=True),
    (ModelType("mixtral", "mixtral", decoder.architectures("Mixtral"), CLASS_DEFAULTS,
               decoder.with_experts(decoder.KEY_MAP, "block_sparse_moe", "w1", "w3", "w2"),
               read, write, keys=frozenset({"sliding_window"}), experts=True),))
