"""Tiny GGUF files written as llama.cpp's convert_hf_to_gguf.py writes them, for the GGUF tests.

A random transformers model (tests/hf_models.randomise) is written with `gguf.GGUFWriter`:
tensors under llama.cpp's names (`gguf.get_tensor_name_map`), Llama's q/k rows permuted and
Gemma's norms stored as 1 + w as its converter does, 2-D weights in the chosen ggml type (1-D
ones float32, as llama.cpp keeps them), hyperparameters and a tokenizer in its metadata keys.
The K-quants (Q4_K, Q6_K, …) have no quantizer in the gguf library: their blocks are random
bytes with small scales, a valid tensor of that type, which then replaces the model's weight
(so the reference is transformers reading the same file, not the model written).
Nothing is downloaded.
"""

import pathlib

import numpy as np
import pytest
import sentencepiece
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from gguf import GGMLQuantizationType as Q  # noqa: E402

# English, accented Latin, CJK and emoji: what the rebuilt tokenizers are compared on.
SAMPLE = ["The quick brown fox jumps over the lazy dog.",
          "Élodie a mangé une crème brûlée à Besançon.", "Übermäßig größere Straße, ñandú.",
          "東京は日本の首都です。", "我爱自然语言处理", "Emoji: 🦊🚀 and 👩‍👩‍👧!",
          "  leading spaces\tand\nnewlines  "]
CORPUS = SAMPLE * 20 + ["the cat sat on the mat and the dog sat on the log"] * 50
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_level_vocab(vocab_size: int) -> dict:
  """A byte-level BPE (GPT-2 style) trained on CORPUS, as a GGUF `gpt2` tokenizer's fields."""
  hf = Tokenizer(models.BPE())
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = decoders.ByteLevel()
  hf.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  vocab = hf.get_vocab()
  tokens = sorted(vocab, key=vocab.get)
  merges = [" ".join(pair) for pair in __import__("json").loads(hf.to_str())["model"]["merges"]]
  types = [gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens]
  return dict(model="gpt2", tokens=tokens, merges=merges, types=types, scores=None,
              bos=tokens.index("<|endoftext|>"), eos=tokens.index("<|im_end|>"),
              pad=tokens.index("<|endoftext|>"), unk=None, add_bos=False)


def sentencepiece_vocab(directory: pathlib.Path, vocab_size: int) -> dict:
  """A sentencepiece BPE with byte fallback (Llama 2, Gemma) trained on CORPUS, as a GGUF
  `llama` tokenizer's fields, read the way llama.cpp reads a tokenizer.model."""
  directory.mkdir(parents=True, exist_ok=True)
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS), model_prefix=str(directory / "tokenizer"),
      vocab_size=vocab_size, model_type="bpe", byte_fallback=True, character_coverage=1.0,
      pad_id=0, eos_id=1, bos_id=2, unk_id=3, user_defined_symbols=["<start_of_turn>",
                                                                    "<end_of_turn>"],
      minloglevel=2)
  pieces = list(gguf.SentencePieceVocab(directory).sentencepiece_tokens())
  return dict(model="llama", tokens=[p[0].decode() for p in pieces], merges=None,
              types=[p[2] for p in pieces], scores=[p[1] for p in pieces], bos=2, eos=1, pad=0,
              unk=3, add_bos=True)


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's q/k row order for Llama (its `LlamaModel.permute`): each head's rotary halves
  interleaved."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def _random_blocks(rows: int, cols: int, qtype: Q, rng) -> np.ndarray:
  """Random bytes of a K-quant tensor [rows, cols] with its f16 scales set small and finite."""
  block, size = gguf.GGML_QUANT_SIZES[qtype]
  data = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
  scales = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q2_K: (size - 4, size - 2),
            Q.Q3_K: (size - 2,), Q.Q6_K: (size - 2,)}.get(qtype, ())
  for offset in scales:
    value = rng.uniform(1e-5, 2e-4, (rows, cols // block)).astype(np.float16)
    data[..., offset:offset + 2] = value[..., None].view(np.uint8).reshape(*value.shape, 2)
  return data.reshape(rows, -1)


def write_gguf(path: pathlib.Path, model, arch: str, qtype: Q, vocab: dict, *,
               name: str = "tiny", seed: int = 0, metadata=()) -> None:
  """Writes transformers `model` as a GGUF file of architecture `arch` with its 2-D weights in
  `qtype`, tokenizer `vocab` (byte_level_vocab / sentencepiece_vocab) and CHAT_TEMPLATE.
  `metadata`: (method of GGUFWriter, value) pairs added last."""
  c = model.config
  rng = np.random.default_rng(seed)
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_name(name)
  writer.add_context_length(c.max_position_embeddings)
  writer.add_embedding_length(c.hidden_size)
  writer.add_block_count(c.num_hidden_layers)
  writer.add_feed_forward_length(c.intermediate_size)
  writer.add_head_count(c.num_attention_heads)
  writer.add_head_count_kv(c.num_key_value_heads)
  writer.add_layer_norm_rms_eps(c.rms_norm_eps)
  rope = c.rope_parameters  # Gemma 3's by layer type: llama.cpp writes the global layers'
  writer.add_rope_freq_base(rope.get("full_attention", rope)["rope_theta"])
  head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
  writer.add_key_length(head_dim)
  writer.add_value_length(head_dim)
  if arch == "llama":
    writer.add_rope_dimension_count(head_dim)
  if arch.startswith("gemma"):
    writer.add_sliding_window(c.sliding_window)
  if arch == "gemma2":
    writer.add_attn_logit_softcapping(c.attn_logit_softcapping)
    writer.add_final_logit_softcapping(c.final_logit_softcapping)
  writer.add_file_type(int(qtype))
  writer.add_tokenizer_model(vocab["model"])
  writer.add_tokenizer_pre("llama-bpe" if vocab["model"] == "gpt2" else "default")
  writer.add_token_list(vocab["tokens"])
  writer.add_token_types(vocab["types"])
  if vocab["merges"]:
    writer.add_token_merges(vocab["merges"])
  if vocab["scores"]:
    writer.add_token_scores(vocab["scores"])
  writer.add_bos_token_id(vocab["bos"])
  writer.add_eos_token_id(vocab["eos"])
  writer.add_pad_token_id(vocab["pad"])
  if vocab["unk"] is not None:
    writer.add_unk_token_id(vocab["unk"])
  writer.add_add_bos_token(vocab["add_bos"])
  writer.add_chat_template(CHAT_TEMPLATE)
  for method, value in metadata:
    getattr(writer, method)(value)
  names = gguf.get_tensor_name_map(
      next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), c.num_hidden_layers)
  for hf_name, tensor in model.state_dict().items():
    if hf_name == "lm_head.weight" and c.tie_word_embeddings:
      continue
    stem, suffix = hf_name.rsplit(".", 1)
    gguf_name = f"{names.get_name(stem)}.{suffix}"
    w = tensor.float().numpy()
    if arch == "llama" and ".attn_q." in gguf_name:
      w = _permute(w, c.num_attention_heads)
    if arch == "llama" and ".attn_k." in gguf_name:
      w = _permute(w, c.num_key_value_heads)
    if arch.startswith("gemma") and gguf_name.endswith("norm.weight"):
      w = w + 1
    if w.ndim == 1 or w.shape[1] % gguf.GGML_QUANT_SIZES[qtype][0]:
      writer.add_tensor(gguf_name, w.astype(np.float32))
      continue
    try:
      data = gguf.quants.quantize(w, qtype)
    except NotImplementedError:  # the K-quants, and types lmjax refuses: random blocks
      data = _random_blocks(*w.shape, qtype, rng)
    writer.add_tensor(gguf_name, data, raw_dtype=qtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
