"""Hugging Face import/export: one generic engine, one small key map per family.

    model, params = from_hf(hf_dir)                 # safetensors; float32; scanned layers
    to_hf(model, params, out_dir, dtype="bfloat16", tokenizer_dir=hf_dir)
    m = load(source); to_hf(m, out_dir)             # keeps the source's config.json fields

Modules: `key_maps` (per-family name tables), `transforms` (exact tensor reshapes), `bindings`
(rules bound to a model's params, scan or not), `safetensors_files` (streaming safetensors I/O
and sharding), `tokenizer_files`, `engine` (from_hf / to_hf), `runs` (HF directory <-> run
directory) and `verify` (an HF model against a run's). The config.json translation is the model
config's twin, lmjax.hf.config.
"""

from lmjax.convert.loading import Loaded, load, to_hf
from lmjax.hf.config import hf_config_to_model_config, model_config_to_hf_config
from lmjax.hf.engine import from_hf, read_hf_config
from lmjax.hf.tokenizer_files import copy_tokenizer_files

__all__ = ["Loaded", "copy_tokenizer_files", "load", "from_hf", "hf_config_to_model_config",
           "model_config_to_hf_config", "read_hf_config", "to_hf"]
