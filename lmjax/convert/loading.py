"""A language model and its tokenizer from wherever a command points: a run or an HF directory.

    loaded = load_model(run_dir="runs/demo")          # or hf_dir="llama-dir", step=, dtype=
    loaded.model, loaded.params, loaded.tokenizer, loaded.directory

Every inference command (generate, eval, score, eval-harness) loads through here, so they read
the same weights, tokenizer and `generation_config.json` the same way; an HF directory may be a hub id in the local
cache (lmjax.hub).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp

from lmjax.convert.base_model import load_run
from lmjax.convert.engine import from_hf
from lmjax.data.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.hub import resolve_hf_dir
from lmjax.model import Transformer
from lmjax.run import RunDir

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Loaded:
  model: Transformer
  params: Any
  tokenizer: Tokenizer
  directory: pathlib.Path  # the run or HF directory it came from
  is_run: bool

  def generation_config(self) -> dict[str, Any]:
    """The directory's `generation_config.json` (HF's sampling defaults), {} when absent."""
    path = self.directory / "generation_config.json"
    if not path.is_file():
      return {}
    try:
      settings = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      raise UserError(f"{path} is not readable JSON ({e}): fix or delete it.") from None
    if not isinstance(settings, dict):
      raise UserError(f"{path} holds a {type(settings).__name__}, not a JSON object: fix or "
                      f"delete it.")
    return settings


def load_model(*, run_dir: str | pathlib.Path | None = None,
               hf_dir: str | pathlib.Path | None = None, step: int | None = None,
               dtype: str = "float32") -> Loaded:
  """The model, params and tokenizer of run `run_dir` (checkpoint `step`, default the latest) or
  of HF directory `hf_dir`. `dtype="bfloat16"` casts the floating-point params and computes in
  bfloat16 (half the memory; on CPU often slower)."""
  if (run_dir is None) == (hf_dir is None):
    raise UserError("give exactly one of a run directory (--run-dir) or a Hugging Face "
                    "directory (--hf).")
  if dtype not in DTYPES:
    raise UserError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
  if hf_dir is not None:
    if step is not None:
      raise UserError(f"--step {step} selects a run's checkpoint, but {hf_dir} is a Hugging "
                      f"Face directory: drop --step.")
    hf_dir = resolve_hf_dir(hf_dir)
    model, params = from_hf(hf_dir)
    tokenizer, directory, is_run = Tokenizer.from_file(hf_dir), pathlib.Path(hf_dir), False
  else:
    model, params = load_run(run_dir, step=step)
    run = RunDir(run_dir)
    tokenizer, directory, is_run = Tokenizer.load(run.tokenizer_dir), run.path, True
  if dtype == "bfloat16":
    model = Transformer(model.config, jnp.bfloat16)
    params = jax.tree.map(
        lambda a: a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
  return Loaded(model, params, tokenizer, directory, is_run)
