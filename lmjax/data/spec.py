"""What the trainer asks of the data layer: a `BatchSpec`, the narrow contract between them.

The trainer builds it from the run config (lmjax.train.inputs); the data layer reads nothing
else of the model or the run. `Objective` names which arrays a batch carries.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np


class Objective(enum.Enum):
  """What a batch is for, and so which arrays it holds (see `batch_fields`)."""

  CAUSAL_LM = "causal_lm"   # packed documents; the loss predicts each next token
  MASKED_LM = "masked_lm"   # packed documents with BERT masking: targets and their weights
  CLASSIFY = "classify"     # one labelled example per row, padded: token types and a label
  SFT = "sft"               # whole instruction examples packed; the loss only on the answers
  # Preference pairs (lmjax.data.examples.preference), one pair to a row: prompt + chosen is
  # segment 1, prompt + rejected segment 2, so one forward pass scores both.
  DPO = "dpo"
  IPO = "ipo"
  ORPO = "orpo"
  SIMPO = "simpo"
  # Sampled completions (lmjax.train.rollout), one to a row: prompt + completion as segment 1,
  # the completion in loss_mask, with its advantage and the old policy's and the reference's
  # log-probs of each predicted token (0 where unused).
  GRPO = "grpo"

  @property
  def is_preference(self) -> bool:
    return self in (Objective.DPO, Objective.IPO, Objective.ORPO, Objective.SIMPO)

  @property
  def needs_reference(self) -> bool:
    """Whether the loss compares the policy with a reference model (orpo, simpo do not)."""
    return self in (Objective.DPO, Objective.IPO)


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """The shape and content of the batches a run trains on."""

  objective: Objective
  seq_len: int                # tokens per row
  batch_size: int             # global, in rows
  seed: int                   # the shuffle and the MLM masks derive from it
  vocab_size: int             # the model's; a tokenizer may not exceed it
  mlm_probability: float = 0.15
  max_new_tokens: int = 0     # grpo: each completion's most tokens; a prompt may use the rest
  bidirectional: bool = False  # an encoder: classify examples get [CLS]-style special tokens
  token_types: bool = False    # the model has token types (a pair's second text is type 1)


PER_EXAMPLE = ("labels", "advantages")  # fields of one value per row ([batch]); the others are [batch, seq_len]


def batch_fields(objective: Objective) -> dict[str, np.dtype]:
  """The arrays of a batch for `objective` and their dtypes: [batch, seq_len] each, except the
  PER_EXAMPLE ones, [batch]."""
  fields = {"input_ids": np.dtype(np.int32), "segment_ids": np.dtype(np.int32),
            "positions": np.dtype(np.int32)}
  if objective is Objective.MASKED_LM:
    fields.update(targets=np.dtype(np.int32), target_weights=np.dtype(np.float32))
  if objective is Objective.CLASSIFY:
    fields.update(token_type_ids=np.dtype(np.int32), labels=np.dtype(np.int32))
  if objective is Objective.SFT or objective.is_preference or objective is Objective.GRPO:
    fields.update(loss_mask=np.dtype(np.int32))  # 1: a token of an answer (lmjax.data.examples.sft)
  if objective is Objective.GRPO:
    fields.update(old_logps=np.dtype(np.float32), ref_logps=np.dtype(np.float32),
                  advantages=np.dtype(np.float32))
  return fields
