"""A GGUF file's metadata -> the Hugging Face `config.json` (and `generation_config.json`) of the
model it holds.

llama.cpp writes the hyperparameters every decoder has under the same keys, prefixed by the
architecture (`<arch>.block_count`, `<arch>.attention.head_count`, …); they map to config.json
keys here, once for all model types. What only some architectures write (Gemma's soft-caps, a
window) or imply (biases present or not, a fixed query scale) comes from the model type's
`GgufArch.config` in its family file. Values a GGUF cannot state (llama.cpp hard-codes them per
architecture) are the transformers config class's defaults, as transformers reads these files.
"""

from __future__ import annotations

from typing import Any

from lmjax.errors import UserError
from lmjax.hf.family import ModelType, model_types
from lmjax.hf.gguf.reader import GgufFile
from lmjax.model import Head

# llama.cpp's hyperparameter keys (after "<arch>.") -> config.json keys.
_KEYS = {
    "context_length": "max_position_embeddings", "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers", "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps", "attention.key_length": "head_dim",
    "rope.freq_base": "rope_theta",
}
_REQUIRED = ("context_length", "embedding_length", "block_count", "feed_forward_length",
             "attention.head_count", "attention.layer_norm_rms_epsilon")
EMBEDDING, OUTPUT = "token_embd.weight", "output.weight"
# tokenizer.ggml.<key>_token_id -> the config.json / generation_config.json key
_TOKEN_IDS = {"bos": "bos_token_id", "eos": "eos_token_id", "padding": "pad_token_id"}


def gguf_archs() -> dict[str, ModelType]:
  """The registered model types by the `general.architecture` of their GGUF files."""
  return {t.gguf.name: t for t in model_types().values() if t.gguf is not None}


def model_type_of_gguf(file: GgufFile) -> ModelType:
  archs = gguf_archs()
  if file.arch not in archs:
    raise UserError(f"{file.path} holds a {file.arch!r} model (general.architecture); lmjax "
                    f"imports GGUF files of architecture {', '.join(sorted(archs))}. Convert "
                    f"the model's Hugging Face checkpoint instead, if lmjax supports its family.")
  return archs[file.arch]


def _uniform(file: GgufFile, key: str) -> Any:
  """A hyperparameter that may be written per layer (a list): one value for every layer."""
  value = file.arch_keys[key]
  if isinstance(value, list):
    if len(set(value)) != 1:
      raise UserError(f"{file.path}: {file.arch}.{key} differs between layers ({value}); lmjax "
                      f"builds every layer alike.")
    value = value[0]
  return value


def _rope_scaling(file: GgufFile) -> dict[str, Any]:
  """config.json's rope_scaling from `<arch>.rope.scaling.*` (linear only), {} for none."""
  kind = file.arch_keys.get("rope.scaling.type", "none")
  if kind == "none":
    return {}
  if kind != "linear":
    raise UserError(f"{file.path}: RoPE scaling {kind!r} ({file.arch}.rope.scaling.type) is not "
                    f"supported for GGUF import; lmjax imports none and linear.")
  return dict(rope_scaling={"rope_type": "linear",
                            "factor": float(file.arch_keys.get("rope.scaling.factor", 1.0))})


def _token_ids(file: GgufFile) -> dict[str, int]:
  """The special token ids the file states, under their config.json keys."""
  return {hf: file.metadata[f"tokenizer.ggml.{key}_token_id"] for key, hf in _TOKEN_IDS.items()
          if f"tokenizer.ggml.{key}_token_id" in file.metadata}


def hf_config(file: GgufFile) -> dict[str, Any]:
  """The config.json dict of the model in `file` (UserError for what lmjax cannot build)."""
  model_type = model_type_of_gguf(file)
  missing = [f"{file.arch}.{key}" for key in _REQUIRED if key not in file.arch_keys]
  if missing:
    raise UserError(f"{file.path} lacks the metadata {', '.join(missing)} that a {file.arch} "
                    f"model file has: it is damaged, or not a model.")
  if EMBEDDING not in file.tensors:
    raise UserError(f"{file.path} has no {EMBEDDING} tensor: it is not a whole model.")
  fields = {hf: _uniform(file, key) for key, hf in _KEYS.items() if key in file.arch_keys}
  fields.setdefault("num_key_value_heads", fields["num_attention_heads"])
  fields.setdefault("head_dim", fields["hidden_size"] // fields["num_attention_heads"])
  fields.setdefault("rope_theta", 10000.0)  # llama.cpp's default base
  rotary = file.arch_keys.get("rope.dimension_count", fields["head_dim"])
  if rotary != fields["head_dim"]:
    raise UserError(f"{file.path}: RoPE rotates {rotary} of each head's {fields['head_dim']} "
                    f"dims ({file.arch}.rope.dimension_count); lmjax rotates every head dim.")
  causal_lm = next(name for name, head in model_type.architectures.items()
                   if head is Head.CAUSAL_LM)
  return {
      "architectures": [causal_lm], "model_type": model_type.name, **fields,
      "vocab_size": file.shape(EMBEDDING)[0],
      # llama.cpp writes the output projection only when it is not the embedding matrix.
      "tie_word_embeddings": OUTPUT not in file.tensors,
      **_rope_scaling(file), **_token_ids(file),
      **model_type.gguf.config(file.arch_keys, file.tensor_names)}


# general.sampling.<key> -> generation_config.json key
_SAMPLING = {"temp": "temperature", "top_k": "top_k", "top_p": "top_p"}


def generation_config(file: GgufFile) -> dict[str, Any]:
  """generation_config.json: the special token ids, and the sampling defaults the file states
  (`general.sampling.*`); {} when it states neither."""
  fields = _token_ids(file)
  sampling = {hf: file.metadata[f"general.sampling.{key}"] for key, hf in _SAMPLING.items()
              if f"general.sampling.{key}" in file.metadata}
  if sampling:
    fields.update(do_sample=True, **sampling)
  return fields


__all__ = ["gguf_archs", "generation_config", "hf_config", "model_type_of_gguf"]
