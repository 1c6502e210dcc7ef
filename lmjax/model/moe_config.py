"""The `model.moe` section: a sparse Mixture-of-Experts MLP in every block (Mixtral, Qwen3-MoE).

Each token's router picks `experts_per_token` of `num_experts` gated (SwiGLU-style) experts; their
outputs are mixed by the router's softmax probabilities, renormalised over the chosen experts
when `normalize_weights` (Mixtral always; Qwen3-MoE's `norm_topk_prob`). How tokens reach their
experts is `capacity_factor`'s choice (lmjax.model.moe): null is dropless, a number gives each
expert a fixed buffer and drops what overflows it.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Mapping

from lmjax.ranges import NON_NEGATIVE, POSITIVE, Range, check_ranges


@dataclasses.dataclass(frozen=True)
class MoeConfig:
  RANGES: ClassVar[Mapping[str, Range]] = {
      "num_experts": Range(0, why="0: a dense MLP"),
      "experts_per_token": Range(1, why="each token needs at least one expert"),
      "mlp_dim": Range(1, why="unset it for model.mlp_dim"),
      "aux_loss_coef": NON_NEGATIVE, "capacity_factor": POSITIVE}

  num_experts: int = 0                 # 0: a dense MLP, no experts
  experts_per_token: int = 2           # top-k: HF `num_experts_per_tok`
  mlp_dim: int | None = None           # each expert's hidden width; None: model.mlp_dim
  normalize_weights: bool = True       # the top-k probabilities renormalised to sum to 1
  # The load-balancing loss (Switch Transformer's, computed as transformers'
  # `load_balancing_loss_func`) is added to the training loss times this; HF
  # `router_aux_loss_coef`. Logged as `moe_aux_loss` whatever the coefficient.
  aux_loss_coef: float = 0.001
  # None: dropless (every chosen expert computes every token it was routed, through one grouped
  # matmul, lax.ragged_dot). A number c: each expert takes at most ceil(c * tokens * k / experts)
  # tokens per batch (first choices before second ones), the rest of its tokens are dropped
  # (their residual passes unchanged); a static shape that shards over the `expert` mesh axis.
  capacity_factor: float | None = None

  def __post_init__(self):
    check_ranges(self, "model.moe", self.RANGES)

  @property
  def enabled(self) -> bool:
    return self.num_experts > 0
