"""Hugging Face weight files, read and written one tensor at a time.

Reading: `model.safetensors`, or the shards listed by `model.safetensors.index.json`, through
`safetensors.safe_open` (headers first, tensor data only on request; bfloat16 arrives as
ml_dtypes.bfloat16). Pickled `pytorch_model.bin` files run code when loaded, so they are refused
unless the caller allows them; then `torch.load(weights_only=True)` reads them.

Writing: shards of at most `max_shard_size` bytes (one tensor may exceed it alone), each built
only when it is written; one `model.safetensors`, or `model-0000k-of-0000n.safetensors` plus
`model.safetensors.index.json` (into the staged directory the caller made, lmjax.files).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable, Sequence

import ml_dtypes
import numpy as np
import safetensors

from lmjax.errors import UserError
from lmjax.extras import require
from lmjax.storage import is_remote

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"


def _read_index(path: pathlib.Path) -> dict[str, str]:
  """weight_map of a sharded checkpoint's index file: tensor name -> shard file name."""
  try:
    weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"{path} is not a valid checkpoint index (a JSON object with a "
                    f"\"weight_map\"): {e}") from None
  return dict(weight_map)


class CheckpointReader:
  """Tensor names, shapes and data of the weights in a Hugging Face model directory.

  Use as a context manager; `shapes` comes from file headers, `read(name)` loads one tensor as
  a numpy array in its stored dtype. At most one file is open at a time, and a safetensors file
  only while a tensor is read, so that the mapped pages of one tensor (of one pickled file) at
  most count as this process's memory.
  """

  def __init__(self, hf_dir: pathlib.Path, *, allow_pickle: bool = False):
    self.dir = hf_dir
    self._pickled = False
    self._open_file: tuple[str, Any] | None = None  # (name, safe_open handle or state dict)
    self._file_of: dict[str, str] = {}
    self.shapes: dict[str, tuple[int, ...]] = {}
    if (hf_dir / SAFETENSORS_INDEX).is_file():
      files = self._shard_files(SAFETENSORS_INDEX)
    elif (hf_dir / SAFETENSORS).is_file():
      files = [SAFETENSORS]
    elif (hf_dir / PICKLE_INDEX).is_file() or (hf_dir / PICKLE).is_file():
      if not allow_pickle:
        raise UserError(
            f"{hf_dir} holds only pickled PyTorch weights ({PICKLE}), which can run arbitrary "
            f"code when loaded, so they are not read by default. If you trust the source, "
            f"convert them once with `lmjax convert hf-to-lmjax {hf_dir} OUT --allow-pickle` "
            f"(allow_pickle=True in Python) and use OUT; or save the model as safetensors.")
      self._pickled = True
      files = self._shard_files(PICKLE_INDEX) if (hf_dir / PICKLE_INDEX).is_file() else [PICKLE]
    else:
      raise UserError(f"{hf_dir} has no weights: expected {SAFETENSORS} or {SAFETENSORS_INDEX} "
                      f"(or {PICKLE}, read only when allowed: see lmjax convert hf-to-lmjax "
                      f"--allow-pickle).")
    for file in files:  # headers only
      for name, shape in self._tensor_shapes(file):
        if self._file_of.setdefault(name, file) == file:
          self.shapes[name] = shape
    self.close()

  def _shard_files(self, index_name: str) -> list[str]:
    files = sorted(set(_read_index(self.dir / index_name).values()))
    for name in files:
      if not (self.dir / name).is_file():
        raise UserError(f"{self.dir / index_name} lists shard {name}, which is missing.")
    return files

  def _tensor_shapes(self, file: str) -> list[tuple[str, tuple[int, ...]]]:
    handle = self._open(file)
    if self._pickled:
      return [(name, tuple(tensor.shape)) for name, tensor in handle.items()]
    return [(name, tuple(handle.get_slice(name).get_shape())) for name in handle.keys()]

  def _open(self, file: str):
    if self._open_file is not None and self._open_file[0] == file:
      return self._open_file[1]
    self.close()
    path = self.dir / file
    if self._pickled:
      torch = require("torch", extra="hf", needed_for="reading pytorch_model.bin (--allow-pickle)")

      try:  # mmap keeps memory bounded: tensors are paged in when read
        handle = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
      except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise UserError(f"{path} could not be loaded as a PyTorch state dict: {e}") from None
    else:
      try:
        handle = (_RangeReader(path) if is_remote(path)
                  else safetensors.safe_open(path, framework="numpy"))
      except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors file (corrupt or truncated?): "
                        f"{e}") from None
    self._open_file = (file, handle)
    return handle

  def file_of(self, name: str) -> str:
    return self._file_of[name]

  def read(self, name: str) -> np.ndarray:
    """Tensor `name` as a numpy array in its stored dtype (bfloat16 as ml_dtypes.bfloat16)."""
    file = self._file_of[name]
    handle = self._open(file)
    if self._pickled:
      return check_weight(_torch_to_numpy(handle[name]), name, self.dir / file)
    try:
      return check_weight(handle.get_tensor(name), name, self.dir / file)
    except (safetensors.SafetensorError, OSError) as e:
      raise UserError(f"{self.dir / file}: tensor {name} could not be read (corrupt or "
                      f"truncated?): {e}") from None
    finally:
      # The tensor is a copy: unmapping the file now keeps its pages from counting as ours
      # beside the copies (a whole file's worth by the last tensor); reopening reads a header.
      self.close()

  def close(self) -> None:
    """Closes the open file (its mapped pages stop counting as ours); reads reopen it."""
    if self._open_file is not None and isinstance(self._open_file[1], _RangeReader):
      self._open_file[1].close()
    self._open_file = None

  def __enter__(self) -> CheckpointReader:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


_NUMPY_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                 "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
                 "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class _RangeReader:
  """A safetensors file on a bucket, read as `safe_open` reads a local one (`keys`,
  `get_slice(name).get_shape()`, `get_tensor`): the header first, then each tensor by a ranged
  read of its bytes, so memory holds one tensor and nothing is copied to local disk."""

  def __init__(self, path):
    self._file = path.open("rb")
    (length,) = np.frombuffer(self._file.read(8), "<u8")
    if length > 100 * 2**20:
      raise ValueError(f"a header of {length} bytes is not a safetensors header")
    header = json.loads(self._file.read(int(length)))
    header.pop("__metadata__", None)
    self._start, self._header = 8 + int(length), header

  def keys(self) -> list[str]:
    return list(self._header)

  def get_slice(self, name: str):
    shape = tuple(self._header[name]["shape"])
    return type("Slice", (), {"get_shape": lambda _: shape})()

  def get_tensor(self, name: str) -> np.ndarray:
    entry = self._header[name]
    begin, end = entry["data_offsets"]
    self._file.seek(self._start + begin)
    data = self._file.read(end - begin)
    if len(data) != end - begin:
      raise ValueError(f"tensor {name} is truncated ({len(data)} of {end - begin} bytes)")
    return np.frombuffer(data, _NUMPY_DTYPES[entry["dtype"]]).reshape(entry["shape"]).copy()

  def close(self) -> None:
    self._file.close()


_CHUNK = 1 << 24  # elements checked at a time: the mask never costs more than 16 MB


def check_weight(array: np.ndarray, name: str, where: Any) -> np.ndarray:
  """`array`, tensor `name` of file `where`, if it holds finite floating-point numbers; else
  UserError naming the tensor (integers are a quantized checkpoint's packed values, which read
  as numbers would make a model that computes garbage)."""
  if array.dtype.kind != "f" and array.dtype != ml_dtypes.bfloat16:
    raise UserError(f"tensor {name} in {where} is {array.dtype}, not floating point: is the "
                    f"checkpoint quantized? lmjax imports float32, bfloat16 or float16 weights; "
                    f"use the unquantized model.")
  flat = array.reshape(-1)
  for start in range(0, flat.size, _CHUNK):
    finite = np.isfinite(flat[start:start + _CHUNK])
    if not finite.all():
      at = np.unravel_index(start + int(np.argmin(finite)), array.shape)
      raise UserError(f"tensor {name} in {where} holds {flat[start + np.argmin(finite)]} at "
                      f"{list(map(int, at))}: weights must be finite numbers. The file is "
                      f"damaged or was saved from a diverged run: download or export it again.")
  return array


def _torch_to_numpy(tensor) -> np.ndarray:
  import torch  # deferred: PyTorch is an extra; only pickled weights need it

  tensor = tensor.detach().cpu()
  if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


# -- writing --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorEntry:
  name: str
  shape: tuple[int, ...]
  dtype: np.dtype
  make: Callable[[], np.ndarray]  # builds the tensor when its shard is written

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


def plan_shards(entries: Sequence[TensorEntry], max_shard_size: int) -> list[list[TensorEntry]]:
  """Consecutive groups of at most `max_shard_size` bytes (a bigger tensor goes alone)."""
  shards: list[list[TensorEntry]] = [[]]
  size = 0
  for entry in entries:
    if shards[-1] and size + entry.nbytes > max_shard_size:
      shards.append([])
      size = 0
    shards[-1].append(entry)
    size += entry.nbytes
  return shards


def write_safetensors(directory: pathlib.Path, entries: Sequence[TensorEntry], *,
                      max_shard_size: int) -> list[str]:
  """Writes `entries` as one file or as shards plus an index; returns the file names."""
  if max_shard_size <= 0:
    raise UserError(f"max_shard_size must be a positive number of bytes, got {max_shard_size}.")
  shards = plan_shards(entries, max_shard_size)
  if len(shards) == 1:
    names = [SAFETENSORS]
  else:
    names = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
  weight_map = {}
  for name, shard in zip(names, shards):
    _write_shard(directory / name, shard)
    weight_map.update({entry.name: name for entry in shard})
  if len(shards) > 1:
    index = {"metadata": {"total_size": sum(e.nbytes for e in entries)},
             "weight_map": dict(sorted(weight_map.items()))}
    (directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    names.append(SAFETENSORS_INDEX)
  return names


_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64",
                       "int64": "I64", "int32": "I32", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def write_safetensors_file(path: pathlib.Path, entries: Sequence[TensorEntry]) -> None:
  """All of `entries` in one safetensors file at `path` (e.g. a PEFT adapter_model.safetensors)."""
  _write_shard(path, entries)


# A bucket's file object (gcsfs, s3fs) copies what one write gives it into its buffer before
# uploading: a whole stacked tensor would be held twice, so tensors are written in pieces
# (benchmarks/convert_memory.py --remote, 2 GiB: 1.54x the local export's peak before, 1.08x
# with these pieces, 1.11x with 16 MiB ones).
_WRITE_PIECE = 4 * 2**20


def _write_shard(path: pathlib.Path, entries: Sequence[TensorEntry]) -> None:
  """One safetensors file, written tensor by tensor: memory holds one tensor at a time.

  The format is an 8-byte little-endian header length, a JSON header (names, dtypes, shapes,
  byte offsets, padded with spaces to a multiple of 8), then the tensors' bytes back to back.
  """
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for entry in entries:
    header[entry.name] = {"dtype": _SAFETENSORS_DTYPES[np.dtype(entry.dtype).name],
                          "shape": list(entry.shape), "data_offsets": [offset, offset + entry.nbytes]}
    offset += entry.nbytes
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)
  with path.open("wb") as f:  # on a bucket, an upload in parts (memory: one part and a tensor)
    f.write(len(encoded).to_bytes(8, "little"))
    f.write(encoded)
    for entry in entries:
      tensor = np.ascontiguousarray(entry.make(), dtype=entry.dtype)
      if tensor.shape != tuple(entry.shape):
        raise ValueError(f"{entry.name}: made shape {tensor.shape}, planned {entry.shape}")
      data = tensor.reshape(-1).view(np.uint8).data  # bytes as they are (bf16 too)
      for start in range(0, len(data), _WRITE_PIECE):
        f.write(data[start:start + _WRITE_PIECE])
      del data, tensor


__all__ = ["CheckpointReader", "TensorEntry", "plan_shards", "write_safetensors",
           "write_safetensors_file"]
