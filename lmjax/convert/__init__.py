"""Hugging Face import/export: one generic engine, one small key map per family.

    model, params = from_hf(hf_dir)                 # safetensors; float32; scanned layers
    to_hf(model, params, out_dir, dtype="bfloat16", tokenizer_dir=hf_dir)
    to_hf(lmjax.load(source), out_dir)              # keeps the source's config.json fields

Modules: `export` (to_hf), `runs` (HF directory <-> run directory, PEFT adapters) and `verify`
(an HF model against a run's). The format itself (config.json, key maps, safetensors, the
families) is lmjax.hf's; loading any model is lmjax.run.loader's (`lmjax.load`).
"""

from lmjax.convert.export import to_hf
from lmjax.hf.config import hf_config_to_model_config, model_config_to_hf_config
from lmjax.hf.engine import from_hf, read_hf_config
from lmjax.hf.tokenizer_files import copy_tokenizer_files

__all__ = ["copy_tokenizer_files", "from_hf", "hf_config_to_model_config",
           "model_config_to_hf_config", "read_hf_config", "to_hf"]
