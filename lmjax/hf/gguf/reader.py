"""One GGUF file, opened with the `gguf` library: its metadata, its tensor table, and each tensor
dequantized to float32 on request.

    with open_gguf("model.gguf") as f:
      f.arch, f.metadata["tokenizer.ggml.tokens"], f.arch_keys["block_count"]
      f.shape("blk.0.attn_q.weight")        # (out, in): the Hugging Face order
      values = f.read("blk.0.attn_q.weight") # float32 [out, in]

The file is memory-mapped: opening reads the header only, and `read` touches one tensor's
bytes. Whatever is wrong with the file (not GGUF, truncated, a tensor type the library cannot
dequantize) is a UserError naming the path, the value and the fix.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any

import numpy as np

from lmjax.errors import UserError
from lmjax.extras import install_hint, require

INSTALL = install_hint("gguf")
MAGIC = b"GGUF"


def gguf_library():
  """The `gguf` package (llama.cpp's gguf-py), or a UserError naming the extra to install."""
  return require("gguf", extra="gguf", needed_for="reading GGUF files")


@functools.cache
def _dequantizable(type_id: int) -> bool:
  """Whether the installed gguf library dequantizes ggml type `type_id` (tried on one block)."""
  gguf = gguf_library()
  qtype = gguf.GGMLQuantizationType(type_id)
  block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
  try:
    gguf.quants.dequantize(np.zeros((1, block_bytes), np.uint8), qtype)
  except NotImplementedError:
    return False
  return True


def _plain(value: Any) -> Any:
  """A metadata value, its float32 numbers (norm epsilons, RoPE bases) written as the shortest
  decimals that round to them (1e-06, not 9.999999974752427e-07), as config.json spells them."""
  if isinstance(value, float) and float(np.float32(value)) == value:
    return float(str(np.float32(value)))
  return value


class GgufFile:
  """A GGUF file's metadata and tensors (see the module docstring). Use `open_gguf`."""

  def __init__(self, path: pathlib.Path, reader: Any):
    self.path = path
    self._reader = reader
    self.metadata: dict[str, Any] = {
        key: _plain(field.contents()) for key, field in reader.fields.items()
        if not key.startswith("GGUF.")}
    self.tensors = {tensor.name: tensor for tensor in reader.tensors}
    arch = self.metadata.get("general.architecture")
    if not isinstance(arch, str):
      raise UserError(f"{path} has no general.architecture in its metadata, which every GGUF "
                      f"model file states: it is not a model llama.cpp wrote.")
    self.arch = arch
    # The architecture's hyperparameters, e.g. "block_count" for "<arch>.block_count".
    self.arch_keys = {key[len(arch) + 1:]: value for key, value in self.metadata.items()
                      if key.startswith(arch + ".")}

  @property
  def tensor_names(self) -> frozenset[str]:
    return frozenset(self.tensors)

  def shape(self, name: str) -> tuple[int, ...]:
    """Tensor `name`'s shape in the Hugging Face (row-major) order: ggml lists dims innermost
    first, so [in, out] there is (out, in) here."""
    return tuple(int(d) for d in reversed(self.tensors[name].shape.tolist()))

  def type_name(self, name: str) -> str:
    return self.tensors[name].tensor_type.name

  def check_types(self) -> None:
    """UserError for the first tensor whose type the gguf library cannot dequantize."""
    for name, tensor in self.tensors.items():
      if not _dequantizable(int(tensor.tensor_type)):
        raise UserError(
            f"{self.path}: tensor {name} is stored as {tensor.tensor_type.name}, which the "
            f"installed gguf library cannot dequantize, so lmjax cannot import it. Types that "
            f"import: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants Q2_K to Q6_K and "
            f"the IQ types; re-quantize the model to one of them (llama.cpp's quantize tool), "
            f"or upgrade gguf (pip install -U gguf).")

  def read(self, name: str) -> np.ndarray:
    """Tensor `name` dequantized to float32, in `shape(name)`."""
    tensor = self.tensors[name]
    values = gguf_library().quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(values, dtype=np.float32).reshape(self.shape(name))

  def close(self) -> None:
    self._reader = None
    self.tensors = {}

  def __enter__(self) -> GgufFile:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def open_gguf(path: str | os.PathLike) -> GgufFile:
  """The GGUF file at `path` (its header read, its tensors mapped, none read)."""
  path = pathlib.Path(path)
  try:
    with open(path, "rb") as f:
      head = f.read(4)
  except IsADirectoryError:
    raise UserError(f"{path} is a directory, not a GGUF file.") from None
  except FileNotFoundError:
    raise UserError(f"{path} does not exist: give the path of a .gguf file.") from None
  if head != MAGIC:
    raise UserError(f"{path} is not a GGUF file: it starts with {head!r}, not the GGUF magic "
                    f"{MAGIC!r}. Give a .gguf file as llama.cpp writes them, or a Hugging Face "
                    f"model directory.")
  gguf = gguf_library()
  try:
    reader = gguf.GGUFReader(path)
  except (ValueError, KeyError, IndexError, TypeError, OverflowError) as e:
    raise UserError(f"{path} is a damaged or truncated GGUF file ({type(e).__name__}: {e}); "
                    f"download or convert it again (or, for a file newer than the installed gguf "
                    f"library reads, pip install -U gguf).") from None
  size = path.stat().st_size
  short = [t.name for t in reader.tensors if t.data_offset + t.n_bytes > size]
  if short:
    raise UserError(f"{path} is truncated: tensor {short[0]} ends past the end of the file "
                    f"({size} bytes); download or convert it again.")
  return GgufFile(path, reader)


__all__ = ["GgufFile", "INSTALL", "gguf_library", "open_gguf"]
