"""`lmjax convert verify HF_DIR RUN_DIR`: the Hugging Face model (PyTorch) and the run's model
on the same random tokens, compared: max |Δlogit|, mean KL and top-1 agreement. An HF_DIR on a
bucket is copied to a temporary local directory first (transformers reads local files only)."""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np

from lmjax.run.loader import load_run
from lmjax.errors import UserError
from lmjax.extras import require
from lmjax.hf.engine import read_hf_config
from lmjax.hf.hub import resolve_hf_dir
from lmjax.hf.safetensors_files import CheckpointReader
from lmjax.model import Head
from lmjax.storage import as_path, local_copy


@dataclasses.dataclass(frozen=True)
class Agreement:
  max_abs_diff: float          # max |lmjax - HF| over real positions (logits or hidden states)
  mean_kl: float | None        # mean KL(HF || lmjax) per position; None for headless models
  top1_agreement: float | None  # fraction of positions whose argmax agrees


def verify(hf_dir: str | os.PathLike, run_dir: str | os.PathLike, *, step: int | None = None,
           batch_size: int = 2, seq_len: int = 32, seed: int = 0,
           allow_pickle: bool = False) -> Agreement:
  """Runs the HF model (PyTorch) and the run's model on the same random tokens and compares.

  Like the import, it refuses pickled weights (pytorch_model.bin) unless `allow_pickle`.
  """
  hf_dir = resolve_hf_dir(hf_dir, what="HF_DIR")
  CheckpointReader(as_path(hf_dir), allow_pickle=allow_pickle)  # headers: what it holds
  model, params = load_run(run_dir, step=step)
  with local_copy(hf_dir, weights=True) as local:  # PyTorch reads local files only
    torch_model = _load_torch_model(local)
  config = model.config
  seq_len = min(seq_len, config.max_seq_len)
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, config.vocab_size, size=(batch_size, seq_len)).astype(np.int64)
  mask = np.ones_like(ids)
  mask[1:, seq_len - seq_len // 4:] = 0  # some right padding in every row but the first
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids, jnp.int32),
                                attention_mask=jnp.asarray(mask, jnp.int32)))
  torch = require("torch", extra="hf", needed_for="`lmjax convert verify`")
  with torch.no_grad():
    out = torch_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
  theirs = (out.logits if config.head is not Head.NONE else out.last_hidden_state).float().numpy()
  real = mask.astype(bool)
  diff = float(np.max(np.abs(ours[real] - theirs[real])))
  if config.head is Head.NONE:
    return Agreement(diff, None, None)
  log_p, log_q = _log_softmax(theirs[real]), _log_softmax(ours[real])
  kl = float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))
  top1 = float(np.mean(np.argmax(ours[real], -1) == np.argmax(theirs[real], -1)))
  return Agreement(diff, kl, top1)


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = x.astype(np.float64)
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _load_torch_model(hf_dir):
  transformers = require("transformers", extra="hf", needed_for="`lmjax convert verify` (it "
                         "runs the Hugging Face model with PyTorch)")
  architectures = read_hf_config(hf_dir).get("architectures") or []
  cls = getattr(transformers, architectures[0], None) if architectures else None
  if cls is None:
    raise UserError(f"{hf_dir}/config.json names no architecture transformers knows "
                    f"({architectures!r}).")
  return cls.from_pretrained(str(hf_dir), torch_dtype="float32").eval()
