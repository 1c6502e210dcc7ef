"""Training losses: causal-LM, masked-LM, sequence classification and SFT (tokens.py), the
preference objectives DPO, IPO, ORPO and SimPO (preference.py) and GRPO (grpo.py).

Every loss returns *sums* (`LossSums`) rather than means, so that gradient accumulation and
multi-device reductions combine micro-batches exactly: the reported loss is always
`loss / weight`, the token-weighted mean over everything the step saw.
"""

from lmjax.objectives.grpo import GRPO_SUMS, GrpoSettings, grpo_sums
from lmjax.objectives.preference import (REWARD_SUMS, DpoLoss, PairLogps, Settings,
                                         chunked_token_log_probs, dpo_losses, pair_log_probs,
                                         preference_sums, token_log_probs)
from lmjax.objectives.tokens import (LossSums, causal_lm_loss, causal_lm_targets,
                                     chunked_cross_entropy_sums, chunked_objective_loss,
                                     classification_loss, confusion_counts, cross_entropy_sums,
                                     default_objective, masked_lm_loss, objective_loss,
                                     position_chunks, sft_targets, token_targets)

__all__ = [
    "GRPO_SUMS", "REWARD_SUMS", "DpoLoss", "GrpoSettings", "LossSums", "PairLogps", "Settings",
    "causal_lm_loss", "causal_lm_targets", "chunked_cross_entropy_sums", "chunked_objective_loss",
    "chunked_token_log_probs", "classification_loss", "confusion_counts", "cross_entropy_sums",
    "default_objective", "dpo_losses", "grpo_sums", "masked_lm_loss", "objective_loss",
    "pair_log_probs", "position_chunks", "preference_sums", "sft_targets", "token_log_probs",
    "token_targets",
]
