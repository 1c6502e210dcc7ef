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


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """The shape and content of the batches a run trains on."""

  objective: Objective
  seq_len: int                # tokens per row
  batch_size: int             # global, in rows
  seed: int                   # the shuffle and the MLM masks derive from it
  vocab_size: int             # the model's; a tokenizer may not exceed it
  mlm_probability: float = 0.15


def batch_fields(objective: Objective) -> dict[str, np.dtype]:
  """The arrays of a batch for `objective` and their dtypes; each is [batch, seq_len]."""
  fields = {"input_ids": np.dtype(np.int32), "segment_ids": np.dtype(np.int32),
            "positions": np.dtype(np.int32)}
  if objective is Objective.MASKED_LM:
    fields.update(targets=np.dtype(np.int32), target_weights=np.dtype(np.float32))
  return fields
