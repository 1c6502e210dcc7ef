"""The family registry: each family has one home, and a family defined outside lmjax (here
Phi-3, which lmjax does not ship) registers from this file alone and converts both ways, its
logits equal to transformers' own Phi3ForCausalLM."""

import io
import os
import pathlib
import re
import tokenize

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from lmjax.config import model_config_from_dict  # noqa: E402
from lmjax.convert import from_hf, model_config_to_hf_config  # noqa: E402
from lmjax.errors import UserError  # noqa: E402
from lmjax.hf.families import decoder  # noqa: E402
from lmjax.hf.families.graphs import DECODER  # noqa: E402
from lmjax.hf.family import HfFamily, ModelType, model_types, register  # noqa: E402
from lmjax.hf.key_maps import SCORE, KeyMap, dense, norm, rule  # noqa: E402
from lmjax.hf.transforms import (LINEAR_FROM_HEADS, LINEAR_FUSED_GATE_UP_KERNEL,  # noqa: E402
                                 TRANSPOSE, Transform)
from lmjax.model import Family, Head, ModelConfig, family_names  # noqa: E402
from lmjax.model.families import register_family  # noqa: E402
from tests.hf_models import (assert_round_trips_bit_for_bit, assert_same_outputs,  # noqa: E402
                             randomise)

LMJAX = pathlib.Path(__file__).resolve().parent.parent / "lmjax"

# How a family name is spelled in code: in identifiers, strings and HF class names, any case
# ("Qwen3MoeForCausalLM" is qwen3_moe; "llama3" and "Llama 3.1", a RoPE type, are not the llama
# family, nor is "llama.cpp", the program whose GGUF files lmjax reads).
_SPELLINGS = {"qwen3_moe": r"qwen3_?moe", "modernbert": "modernbert", "distilbert": "distilbert",
              "roberta": "roberta", "gemma2": "gemma2", "gemma3": "gemma3", "mistral": "mistral",
              "mixtral": "mixtral", "qwen2": "qwen2", "qwen3": "qwen3",
              "llama": r"llama(?! ?3)(?!\.cpp)", "gpt2": "gpt2", "bert": "bert"}
_SPELLING = re.compile(r"(?<![a-z0-9])(" + "|".join(
    sorted(_SPELLINGS.values(), key=len, reverse=True)) + ")")


def _code_tokens(path: pathlib.Path):
  """The identifiers and string literals of a module, without comments and docstrings."""
  tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
  layout = (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT)
  # Python 3.12 splits f-strings into parts; 3.11 has them as one STRING.
  texts = (tokenize.NAME, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING))
  for i, token in enumerate(tokens):
    if token.type == tokenize.STRING and (i == 0 or tokens[i - 1].type in layout) and \
        tokens[i + 1].type in (tokenize.NEWLINE, tokenize.ENDMARKER):
      continue  # a string alone as a statement: a docstring
    if token.type in texts:
      yield token.string


def test_each_family_is_named_in_at_most_three_files():
  """Its family file, its preset and its registry line (lmjax/hf/families/__init__.py). The
  data layer is left out: it knows no model (an import contract), and the tokenizer classes it
  names (`LlamaTokenizer`) are tokenizers, not families."""
  files: dict[str, set[str]] = {name: set() for name in _SPELLINGS}
  for path in LMJAX.rglob("*.py"):
    if "data" in path.relative_to(LMJAX).parts:
      continue
    for token in _code_tokens(path):
      for match in _SPELLING.finditer(token.lower()):
        name = next(n for n, p in _SPELLINGS.items() if re.fullmatch(p, match.group(1)))
        files[name].add(str(path.relative_to(LMJAX)))
  assert set(family_names()) <= set(_SPELLINGS)  # a new family: add its spelling above
  assert all(files[name] for name in family_names())  # the scan finds each family's file
  crowded = {name: sorted(paths) for name, paths in files.items() if len(paths) > 3}
  assert not crowded, f"families named in more than 3 files: {crowded}"


def test_the_model_layer_names_no_family():
  for path in (LMJAX / "model").glob("*.py"):
    if path.name == "presets.py":
      continue
    named = {m.group(1) for t in _code_tokens(path) for m in _SPELLING.finditer(t.lower())}
    assert not named, f"{path.name} names {named}"


# -- Phi-3, registered from here -------------------------------------------------------------


def _split_qkv(t, c: ModelConfig):
  """Phi-3's fused nn.Linear `qkv_proj` [(heads + 2 * kv_heads) * head_dim, embed] (rows q | k
  | v) -> query, key, value kernels; grouped heads make the parts unequal."""
  q, k = c.num_heads * c.dim_per_head, c.kv_heads * c.dim_per_head
  parts = np.split(t.T, [q, q + k], axis=1)
  return tuple(p.reshape(t.shape[1], -1, c.dim_per_head) for p in parts)


_QKV = Transform("phi3_qkv", _split_qkv,
                 lambda arrays, c: np.concatenate([a.reshape(a.shape[0], -1) for a in arrays],
                                                  axis=1).T)

_KEY_MAP = KeyMap(
    base_prefix="model",
    body=(
        rule("token_embedding", "embed_tokens.weight"),
        *norm("layers.{i}.attention_norm", "layers.{i}.input_layernorm"),
        rule(tuple(f"layers.{{i}}.attention.{p}.kernel" for p in ("query", "key", "value")),
             "layers.{i}.self_attn.qkv_proj.weight", _QKV),
        *dense("layers.{i}.attention.out", "layers.{i}.self_attn.o_proj", LINEAR_FROM_HEADS),
        *norm("layers.{i}.mlp_norm", "layers.{i}.post_attention_layernorm"),
        rule(("layers.{i}.mlp.wi_gate.kernel", "layers.{i}.mlp.wi_up.kernel"),
             "layers.{i}.mlp.gate_up_proj.weight", LINEAR_FUSED_GATE_UP_KERNEL),
        *dense("layers.{i}.mlp.wo", "layers.{i}.mlp.down_proj"),
        *norm("final_norm", "norm"),
    ),
    head=(rule("lm_head.kernel", "lm_head.weight", TRANSPOSE), *SCORE),
    tied_aliases=("lm_head.weight",),
)


def _read(d, head):
  return dict(decoder.read({**d, "head_dim": None}, qkv_bias=False, use_bias=False),
              sliding_window=d["sliding_window"], dropout_rate=float(d["resid_pdrop"]))


def _write(config, act):
  return dict(decoder.write(config, "phi3", act), resid_pdrop=config.dropout_rate,
              embd_pdrop=config.dropout_rate, original_max_position_embeddings=config.max_seq_len,
              sliding_window=config.sliding_window, pad_token_id=0)


PHI3 = HfFamily(Family("phi3", DECODER), (ModelType(
    "phi3", "phi3", decoder.architectures("Phi3"),
    {**decoder.CLASS_DEFAULTS, "vocab_size": 32064, "resid_pdrop": 0.0, "sliding_window": None},
    _KEY_MAP, _read, _write, keys=frozenset({"sliding_window"})),))


@pytest.fixture(scope="module")
def phi3(tmp_path_factory):
  register(PHI3)
  register(PHI3)  # the same family again: a no-op
  config = transformers.Phi3Config(
      hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
      intermediate_size=80, vocab_size=113, max_position_embeddings=64, pad_token_id=0,
      bos_token_id=1, eos_token_id=2)
  torch.manual_seed(0)
  model = randomise(transformers.Phi3ForCausalLM(config))
  path = tmp_path_factory.mktemp("phi3")
  model.save_pretrained(path)
  return path, model


def test_a_family_registered_outside_lmjax_converts_both_ways(phi3, tmp_path):
  path, hf_model = phi3
  model, params = from_hf(path)
  assert (model.config.family, model.config.kv_heads) == ("phi3", 2)
  assert_same_outputs(hf_model, model, params)
  exported = assert_round_trips_bit_for_bit(path, tmp_path / "out")
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
  assert_same_outputs(back, model, params)
  assert exported["architectures"] == ["Phi3ForCausalLM"]
  # It is a model.family value too, and a config names it like a shipped one.
  built = model_config_from_dict({"family": "phi3", "vocab_size": 64, "num_layers": 1,
                                  "embed_dim": 16, "num_heads": 2, "mlp_dim": 32,
                                  "max_seq_len": 16})
  assert built.family == "phi3" and model_config_to_hf_config(built)["model_type"] == "phi3"
  assert "phi3" in model_types()


def test_a_taken_name_is_refused(phi3):
  with pytest.raises(ValueError, match="'phi3' is already registered"):
    register_family(Family("phi3", {**DECODER, "qk_norm": True}))
  other = ModelType("phi3", "llama", {}, {}, _KEY_MAP, _read, _write)
  with pytest.raises(ValueError, match="model_type 'phi3' is already registered"):
    register(HfFamily(Family("phi3_twin", DECODER), (other,)))
  assert "phi3_twin" not in family_names()


def test_an_unknown_family_names_the_registered_ones():
  with pytest.raises(UserError, match=r"model.family='gpt3' is not a model family; lmjax builds "
                                      r"bert, distilbert, .*gpt2, llama"):
    ModelConfig.for_family("gpt3", vocab_size=8, num_layers=1, embed_dim=8, num_heads=2,
                           mlp_dim=8, max_seq_len=8)


@pytest.mark.parametrize("alias, family, model_type, fields", [
    ("roberta", "bert", "roberta", dict(position_offset=2, type_vocab_size=1)),
    ("qwen2", "llama", "qwen2", dict(qkv_bias=True, use_bias=False)),
])
def test_an_alias_builds_its_family_and_exports_as_its_model_type(alias, family, model_type,
                                                                  fields):
  config = model_config_from_dict({"family": alias, "vocab_size": 64, "num_layers": 1,
                                   "embed_dim": 16, "num_heads": 2, "mlp_dim": 32,
                                   "max_seq_len": 16})
  assert config.family == family
  assert {k: getattr(config, k) for k in fields} == fields
  assert model_config_to_hf_config(config)["model_type"] == model_type
  assert config.head in (Head.MASKED_LM, Head.CAUSAL_LM)
  with pytest.raises(UserError, match=f"model.family='{alias}' is another name for '{family}'"):
    ModelConfig(family=alias, vocab_size=64, num_layers=1, embed_dim=16, num_heads=2,
                mlp_dim=32, max_seq_len=16)
