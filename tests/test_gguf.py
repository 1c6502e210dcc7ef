"""GGUF files import as the Hugging Face models they hold: weights equal to transformers'
dequantized ones, logits within 1e-4 of transformers reading the same file, the same token ids
and chat template, through `lmjax.load`, the CLI and `model.init_from`; damaged and unsupported
files refused with exit 2.

Each file is a tiny random transformers model written as llama.cpp writes it (tests/gguf_files.py)
in one of nine ggml types (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K; three
architectures in four each); the reference is `transformers` loading the same file
(`from_pretrained(dir, gguf_file=...)`), never lmjax itself.
"""

import json
import logging
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lmjax  # noqa: E402
from lmjax.config import from_dict  # noqa: E402
from lmjax.data.tokenize.chat import ChatTemplate, load_template  # noqa: E402
from lmjax.errors import UserError  # noqa: E402
from lmjax.hf.bindings import flatten  # noqa: E402
from lmjax.hf.families import gemma2, gemma3  # noqa: E402
from lmjax.hf.gguf.materialise import cache_key, cache_root  # noqa: E402
from lmjax.model import quantize  # noqa: E402
from lmjax.run.loader import load_source, quantized  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from tests.gguf_files import CHAT_TEMPLATE, SAMPLE, Q, byte_level_vocab  # noqa: E402
from tests.gguf_files import sentencepiece_vocab, write_gguf  # noqa: E402
from tests.helpers import run_cli  # noqa: E402
from tests.hf_models import assert_same_outputs, randomise  # noqa: E402

# Widths of 256 (and multiples): the K-quants pack rows in blocks of 256 values.
_SIZES = dict(hidden_size=256, num_hidden_layers=2, intermediate_size=512,
              max_position_embeddings=64)
_GEMMA = dict(_SIZES, num_attention_heads=2, num_key_value_heads=1, head_dim=256,
              sliding_window=4)
# name -> (transformers config and model class, their kwargs, GGUF architecture, ggml type,
#          tokenizer, general.name). Query scales, head sizes and soft-caps are the values
# transformers assumes for a GGUF of each architecture (it reads no key for them).
CASES = {
    # q/k rows permuted; grouped heads
    "llama_q8_0": ("Llama", dict(_SIZES, num_attention_heads=4, num_key_value_heads=2),
                   "llama", Q.Q8_0, "bpe", "tiny"),
    # Mistral, which llama.cpp writes as llama. (transformers 5.24 fails to read a file whose
    # general.name is exactly "mistral": it looks for a gguf architecture of that name.)
    "mistral_q4_k": ("Mistral", dict(_SIZES, num_attention_heads=4, num_key_value_heads=1,
                                     sliding_window=None), "llama", Q.Q4_K, "spm",
                     "Mistral 7B Instruct"),
    "qwen2_f16": ("Qwen2", dict(_SIZES, num_attention_heads=4, num_key_value_heads=2,
                                tie_word_embeddings=True), "qwen2", Q.F16, "bpe", "tiny"),
    "qwen3_q6_k": ("Qwen3", dict(_SIZES, num_attention_heads=4, num_key_value_heads=2,
                                 head_dim=128), "qwen3", Q.Q6_K, "bpe", "tiny"),
    "gemma2_q4_0": ("Gemma2", _GEMMA, "gemma2", Q.Q4_0, "spm", "tiny"),
    # six layers: five sliding, then a global one
    "gemma3_bf16": ("Gemma3", dict(_GEMMA, num_hidden_layers=6), "gemma3", Q.BF16, "spm",
                    "tiny"),
}

# Each of three architectures also in three more types (with CASES, at least four each): the
# dequantized weights and logits, as above. name -> (CASES entry it varies, ggml type).
GRID = {f"{base.rsplit('_', 1)[0].rsplit('_', 1)[0]}_{qtype.name.lower()}": (base, qtype)
        for base in ("llama_q8_0", "qwen3_q6_k", "gemma2_q4_0")
        for qtype in (Q.F32, Q.Q4_1, Q.Q5_K)}


@pytest.fixture(scope="module", autouse=True)
def lmjax_cache(tmp_path_factory):
  """lmjax's cache (where GGUF files are imported) in the test's temporary directory."""
  previous = os.environ.get("LMJAX_CACHE")
  os.environ["LMJAX_CACHE"] = str(tmp_path_factory.mktemp("lmjax-cache"))
  yield
  if previous is None:
    del os.environ["LMJAX_CACHE"]
  else:
    os.environ["LMJAX_CACHE"] = previous


@pytest.fixture(scope="module")
def vocabs(tmp_path_factory):
  return {"bpe": byte_level_vocab(400),
          "spm": sentencepiece_vocab(tmp_path_factory.mktemp("spm"), 400)}


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory, vocabs):
  """name -> (the GGUF file of CASES[name], transformers' model read from it), built once."""
  built = {}

  def get(name):
    if name not in built:
      base, qtype = GRID.get(name, (name, None))
      prefix, kwargs, arch, case_type, vocab, model_name = CASES[base]
      qtype = qtype or case_type
      config_class = "Gemma3TextConfig" if prefix == "Gemma3" else f"{prefix}Config"
      config = getattr(transformers, config_class)(vocab_size=len(vocabs[vocab]["tokens"]),
                                                   **kwargs)
      model = randomise(getattr(transformers, f"{prefix}ForCausalLM")(config))
      path = tmp_path_factory.mktemp(name) / f"{name}.gguf"
      write_gguf(path, model, arch, qtype, vocabs[vocab], name=model_name)
      reference = transformers.AutoModelForCausalLM.from_pretrained(
          path.parent, gguf_file=path.name, dtype=torch.float32).eval()
      built[name] = path, reference
    return built[name]
  return get


@pytest.mark.parametrize("name", [*CASES, *GRID])
def test_weights_and_logits_equal_transformers_reading_the_same_file(gguf_file, name):
  path, reference = gguf_file(name)
  loaded = lmjax.load(path)
  assert loaded.origin == str(path) and loaded.directory.parent == cache_root()
  # The dequantized tensors lmjax imported are transformers' own, bit for bit.
  expected = {k: v.numpy() for k, v in reference.state_dict().items()}
  if reference.config.tie_word_embeddings:
    del expected["lm_head.weight"]
  imported = load_file(loaded.directory / "model.safetensors")
  assert sorted(imported) == sorted(expected)
  for key, values in imported.items():
    np.testing.assert_array_equal(values, expected[key], err_msg=key)
  assert_same_outputs(reference, loaded.model, loaded.params)
  # It is a Hugging Face directory: transformers reads it as the same model.
  again = transformers.AutoModelForCausalLM.from_pretrained(loaded.directory)
  assert type(again) is type(reference)
  assert_same_outputs(again.eval(), loaded.model, loaded.params)


@pytest.mark.parametrize("name", ["llama_q8_0", "gemma2_q4_0"])
def test_token_ids_and_chat_template_equal_transformers(gguf_file, name):
  path, _ = gguf_file(name)
  loaded = lmjax.load(path, require_tokenizer=True)
  expected = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  for text in SAMPLE:
    assert loaded.tokenizer.encode(text) == expected.encode(text, add_special_tokens=False)
    assert loaded.tokenizer.encode(text, add_special_tokens=True) == expected(text).input_ids
    assert loaded.tokenizer.decode(loaded.tokenizer.encode(text)) == expected.decode(
        expected.encode(text, add_special_tokens=False), skip_special_tokens=True)
  assert (loaded.tokenizer.bos_id, loaded.tokenizer.eos_id) == (expected.bos_token_id,
                                                                  expected.eos_token_id)
  template = load_template(loaded.chat_template)
  assert template == CHAT_TEMPLATE == expected.chat_template
  messages = [{"role": "user", "content": "Bonjour, 東京 🦊"}]
  rendered = ChatTemplate(template).render(messages, add_generation_prompt=True)
  assert rendered == expected.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)


def test_convert_hf_to_lmjax_imports_a_gguf_file_as_a_run(gguf_file, tmp_path, capsys):
  path, reference = gguf_file("llama_q8_0")
  run_dir = tmp_path / "run"
  code, out, _ = run_cli(capsys, "convert", "hf-to-lmjax", path, run_dir)
  assert code == 0 and "llama" in out
  model, params = lmjax.load_run(run_dir)
  assert_same_outputs(reference, model, params)
  assert (run_dir / "tokenizer" / "tokenizer.json").is_file()
  config = json.loads((run_dir / "tokenizer" / "tokenizer_config.json").read_text())
  assert config["chat_template"] == CHAT_TEMPLATE
  prompt = ["--prompt", "The quick", "--max-new-tokens", 4, "--temperature", 0]
  from_run = run_cli(capsys, "generate", "--run-dir", run_dir, *prompt)
  from_file = run_cli(capsys, "generate", "--hf", path, *prompt)
  assert from_run[0] == from_file[0] == 0 and from_run[1] == from_file[1]


def test_model_init_from_a_gguf_file(gguf_file):
  path, _ = gguf_file("qwen2_f16")
  config = from_dict({"model": {"init_from": str(path)}, "train": {"seq_len": 16}})
  directory = lmjax.load(path).directory
  assert config.init_from == str(directory) and config.tokenizer_choice == str(directory)
  assert (config.model.family, config.model.qkv_bias, config.model.tie_embeddings) == (
      "llama", True, True)
  params, step = load_source(str(path), config.model)
  assert step is None and params["layers"]["attention"]["query"]["bias"].shape[0] == 2


def test_an_unchanged_file_is_imported_once(gguf_file):
  path, _ = gguf_file("qwen2_f16")
  first = lmjax.load(path).directory
  stamp = (first / "model.safetensors").stat().st_mtime_ns
  assert lmjax.load(path).directory == first
  assert (first / "model.safetensors").stat().st_mtime_ns == stamp
  os.utime(path, ns=(stamp, stamp + 10**9))  # touched: imported again, beside the first
  assert lmjax.load(path).directory != first
  assert not [p for p in cache_root().iterdir() if ".partial-" in p.name]


def _refused(capsys, tmp_path, path):
  """Runs `convert hf-to-lmjax path RUN`: (stderr) after checking exit 2, no traceback, no
  run directory and no partial import left."""
  run_dir = tmp_path / "run"
  code, _, err = run_cli(capsys, "convert", "hf-to-lmjax", path, run_dir)
  assert code == 2 and "Traceback" not in err and not run_dir.exists()
  assert not [p for p in cache_root().iterdir() if ".partial-" in p.name]
  return err


def test_a_file_that_is_not_gguf_is_refused(tmp_path, capsys):
  path = tmp_path / "model.gguf"
  path.write_bytes(b"PK\x03\x04 a zip, not a model")
  err = _refused(capsys, tmp_path, path)
  assert f"{path} is not a GGUF file: it starts with b'PK\\x03\\x04'" in err
  err = _refused(capsys, tmp_path, tmp_path / "missing.gguf")
  assert "missing.gguf: no such GGUF file" in err


def test_a_truncated_file_is_refused(gguf_file, tmp_path, capsys):
  path, _ = gguf_file("qwen2_f16")
  for cut in (2000, path.stat().st_size - 1000):  # in the metadata, in the tensor data
    short = tmp_path / f"short-{cut}.gguf"
    short.write_bytes(path.read_bytes()[:cut])
    err = _refused(capsys, tmp_path, short)
    assert f"{short} is" in err and ("truncated" in err or "damaged" in err)


def test_an_unsupported_architecture_is_refused(tmp_path, capsys):
  path = tmp_path / "falcon.gguf"
  writer = gguf.GGUFWriter(str(path), "falcon")
  writer.add_block_count(1)
  writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  err = _refused(capsys, tmp_path, path)
  assert ("holds a 'falcon' model (general.architecture); lmjax imports GGUF files of "
          "architecture gemma2, gemma3, llama, qwen2, qwen3") in err


def test_an_unsupported_tensor_type_is_refused(tmp_path, capsys):
  config = transformers.LlamaConfig(**_SIZES, num_attention_heads=2, vocab_size=256)
  path = tmp_path / "q1.gguf"
  write_gguf(path, randomise(transformers.LlamaForCausalLM(config)), "llama", Q.Q1_0,
             byte_level_vocab(300))
  err = _refused(capsys, tmp_path, path)
  assert "is stored as Q1_0, which the installed gguf library cannot dequantize" in err
  with pytest.raises(UserError, match="Q1_0"):
    lmjax.load(path)


@pytest.mark.parametrize("module", ["gguf", "transformers.integrations.gguf"])
def test_a_missing_extra_is_named(gguf_file, tmp_path, monkeypatch, module):
  path, _ = gguf_file("qwen2_f16")
  copy = tmp_path / "copy.gguf"  # not imported yet
  copy.write_bytes(path.read_bytes())
  monkeypatch.setitem(sys.modules, module, None)  # `import` of it raises ImportError
  with pytest.raises(UserError, match=r"pip install 'lmjax\[gguf\]'"):
    lmjax.load(copy)
  assert not [p for p in cache_root().iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("family, layers, scale", [
    (gemma2, 42, 256), (gemma2, 46, 144), (gemma3, 48, 256), (gemma3, 62, 144)])
def test_gemma_query_scale_is_llama_cpps(family, layers, scale):
  """llama.cpp scales Gemma's queries by 1/sqrt(head_dim), but 1/sqrt(hidden / heads) in the
  27B size, which it tells by the layer count (46 for Gemma 2, 62 for Gemma 3)."""
  keys = {"embedding_length": 4608, "attention.head_count": 32, "attention.key_length": 256,
          "block_count": layers}
  assert family.read_gguf(keys, frozenset())["query_pre_attn_scalar"] == scale


def test_a_killed_import_leaves_nothing_the_next_one_uses(gguf_file, tmp_path):
  path, _ = gguf_file("qwen2_f16")
  copy = tmp_path / "copy.gguf"
  copy.write_bytes(path.read_bytes())
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()  # its id names no live process now
  partial = cache_root() / f".{cache_key(copy)}.partial-{socket.gethostname()}-{dead.pid}"
  partial.mkdir(parents=True)
  (partial / "model.safetensors").write_bytes(b"half a tensor")
  directory = lmjax.load(copy).directory
  assert not partial.exists() and directory.name == cache_key(copy)


def _q8_0_blocks(path, name):
  """The file's own int8 values [out, in] and float16 scales [out, in / 32] of Q8_0 tensor
  `name`, read from its bytes here (2 bytes of scale, then 32 int8 values, a block)."""
  tensor = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
  assert tensor.tensor_type == Q.Q8_0
  out, inputs = reversed(tensor.shape.tolist())
  raw = np.asarray(tensor.data).reshape(-1, 34)
  return (raw[:, 2:].copy().view(np.int8).reshape(out, inputs),
          raw[:, :2].copy().view(np.float16).reshape(out, inputs // 32))


def test_q8_0_projections_stay_the_files_int8_blocks(gguf_file):
  path, _ = gguf_file("llama_q8_0")
  floats = lmjax.load(path)
  held = lmjax.load(path, quantization={"scheme": "int8", "group_size": 32})
  layers = held.params["layers"]
  heads, kv_heads, head_dim, embed = 4, 2, 64, 256
  # lmjax layout of each HF [out, in] array (values, or scales with in / 32): kernels [*in, *out]
  as_kernel = {
      ("attention", "value"): lambda w: w.T.reshape(w.shape[1], kv_heads, head_dim),
      ("attention", "out"): lambda w: w.T.reshape(heads, -1, embed),  # groups inside a head
      ("mlp", "wi_gate"): lambda w: w.T, ("mlp", "wi_up"): lambda w: w.T,
      ("mlp", "wo"): lambda w: w.T}
  files = {("attention", "value"): "attn_v", ("attention", "out"): "attn_output",
           ("mlp", "wi_gate"): "ffn_gate", ("mlp", "wi_up"): "ffn_up", ("mlp", "wo"): "ffn_down"}
  for (block, module), name in files.items():
    kernel = layers[block][module]["kernel"]
    assert kernel.qvalue.dtype == np.int8 and kernel.scale.dtype == np.float32
    for layer in range(2):
      values, scales = _q8_0_blocks(path, f"blk.{layer}.{name}.weight")
      to_kernel = as_kernel[block, module]
      np.testing.assert_array_equal(kernel.qvalue[layer], to_kernel(values), err_msg=name)
      np.testing.assert_array_equal(kernel.scale[layer], to_kernel(scales.astype(np.float32)),
                                    err_msg=name)
  # q and k too (their rows reordered as the float import reorders them): every kernel gives
  # back the imported float weights bit for bit, which quantizing them again does not.
  kernels = {k: v for k, v in flatten(held.params).items() if quantize.is_quantized(v)}
  assert len(kernels) == 7  # q, k, v, out, gate, up, down
  for key, kernel in kernels.items():
    np.testing.assert_array_equal(quantize.dequantize(kernel), flatten(floats.params)[key],
                                  err_msg=key)
  ids = np.arange(1, 17)[None]
  np.testing.assert_allclose(held.model.apply({"params": held.params}, ids),
                             floats.model.apply({"params": floats.params}, ids), atol=1e-5,
                             rtol=0)
  # `--quantize int8` (no group size) of a Q8_0 file takes the file's groups of 32.
  plain = lmjax.load(path, quantization={"scheme": "int8"})
  assert plain.model.config.quantization.group_size == 32
  jax.tree.map(np.testing.assert_array_equal, plain.params, held.params)


def test_other_types_as_int8_are_dequantized_then_quantized(gguf_file, capsys, caplog):
  path, _ = gguf_file("mistral_q4_k")
  spec = {"scheme": "int8", "group_size": 32}
  with caplog.at_level(logging.INFO):
    held = lmjax.load(path, quantization=spec)
  assert not [r for r in caplog.records if "Q8_0" in r.getMessage() or r.levelno >= logging.WARN]
  floats = lmjax.load(path)
  _, expected = quantized(floats.model, floats.params, spec)  # float weights, quantized
  kernels = {k: v for k, v in flatten(held.params).items() if quantize.is_quantized(v)}
  assert len(kernels) == 7
  for key, want in flatten(expected).items():
    if quantize.is_quantized(want):
      np.testing.assert_array_equal(kernels[key].qvalue, want.qvalue, err_msg=key)
      np.testing.assert_array_equal(kernels[key].scale, want.scale, err_msg=key)
  capsys.readouterr()
  code, out, err = run_cli(capsys, "generate", "--hf", path, "--quantize", "int8", "--prompt",
                           "The quick", "--max-new-tokens", 2, "--temperature", 0)
  assert code == 0 and out.startswith("The quick")
  assert not [word for word in ("Traceback", "warn", "error", "Q8_0") if word in err], err
