"""Reading back what Weights & Biases wrote offline: a run file's records (LevelDB-style log
records of wandb's protobuf `Record`s) and the history they hold. Shared by the test modules that
check what a run logs to W&B."""

import json
import pathlib
import struct

from wandb.proto import wandb_internal_pb2

_BLOCK = 32768  # wandb's run files use LevelDB's log format: 32 KiB blocks of framed chunks


def wandb_records(path: pathlib.Path):
  """The protobuf records of a `run-<id>.wandb` file, in order."""
  data = path.read_bytes()
  assert data[:4] == b":W&B"
  pos, pending = 7, b""  # a 7-byte file header: magic and version
  while pos + 7 <= len(data):
    left = _BLOCK - pos % _BLOCK
    if left < 7:  # a block's tail too short for a chunk header is padding
      pos += left
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
    if kind == 0:  # zero padding up to the block's end
      pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
      continue
    pending = chunk if kind in (1, 2) else pending + chunk  # full/first, middle/last
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      yield record


def logged(run_dir: pathlib.Path):
  """(run records, {step: {key: value}}) over every offline W&B run file of a run directory."""
  runs, history = [], {}
  for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
    for record in wandb_records(path):
      kind = record.WhichOneof("record_type")
      if kind == "run":
        runs.append(record.run)
      elif kind == "history":
        items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                 for i in record.history.item}
        step = items.pop("_step")
        history.setdefault(step, {}).update(
            {k: v for k, v in items.items() if not k.startswith("_")})
  return runs, history
