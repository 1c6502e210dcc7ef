"""Peak memory of `lmjax convert` on a synthetic Llama-style checkpoint (run by hand).

    .venv/bin/python benchmarks/convert_memory.py [--gib 2.5] [--workdir /tmp/convert-bench]
                                                  [--remote]

Writes a random Llama-style Hugging Face checkpoint of about `--gib` GiB (float32, sharded
safetensors with an index), then times `lmjax convert hf-to-lmjax` and `lmjax convert
lmjax-to-hf` in child processes and reports each one's peak resident memory (ru_maxrss) next
to the checkpoint's size and its largest shard.

Both directions hold one param at a time (a stacked param: all its layers) plus its compressed
copy, so their peak stays under the checkpoint's size. Measured on a 2-core CPU VM with
`--gib 2.5 --shard-gib 0.5`: hf-to-lmjax 1.30 GiB in 27 s, lmjax-to-hf 1.25 GiB in 28 s
(before streaming: 5.67 GiB and 4.29 GiB).

With `--remote`, the export also goes to a bucket: a local GCS server (gcp-storage-emulator
through tests/gcs_emulator.py, files on disk under the workdir) on 127.0.0.1, and the export
is imported back from it (ranged reads); each is reported next to the local export's peak.
The server's own memory is not counted: it stands for GCS. Measured with `--gib 2 --remote`:
the export to gs:// peaks at 1.09 GiB against 1.01 GiB locally (1.08x), the import back at
1.07-1.11x its local peak (docs/performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
from safetensors.numpy import save_file


def llama_shapes(num_layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int,
                 vocab: int) -> dict[str, tuple[int, ...]]:
  head_dim = hidden // heads
  shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
            "lm_head.weight": (vocab, hidden)}
  for i in range(num_layers):
    p = f"model.layers.{i}."
    shapes.update({
        p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
        p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
        p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
        p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
        p + "mlp.gate_proj.weight": (intermediate, hidden),
        p + "mlp.up_proj.weight": (intermediate, hidden),
        p + "mlp.down_proj.weight": (hidden, intermediate),
        p + "input_layernorm.weight": (hidden,),
        p + "post_attention_layernorm.weight": (hidden,),
    })
  return shapes


def write_checkpoint(out: pathlib.Path, *, gib: float, shard_bytes: int) -> tuple[int, int]:
  """Writes config.json + sharded safetensors; returns (total bytes, largest shard bytes)."""
  hidden, intermediate, heads, kv_heads, vocab = 2048, 5632, 16, 4, 32000
  per_layer = 4 * (2 * hidden * hidden + 2 * hidden * hidden * kv_heads // heads + 3 * hidden * intermediate)
  num_layers = max(1, round((gib * 2**30 - 8 * vocab * hidden) / per_layer))
  shapes = llama_shapes(num_layers, hidden, intermediate, heads, kv_heads, vocab)
  out.mkdir(parents=True)
  (out / "config.json").write_text(json.dumps({
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
      "intermediate_size": intermediate, "num_attention_heads": heads,
      "num_key_value_heads": kv_heads, "num_hidden_layers": num_layers, "vocab_size": vocab,
      "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
      "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "float32"}))
  rng = np.random.default_rng(0)
  shards, current, size = [], {}, 0
  for name, shape in shapes.items():
    tensor = rng.standard_normal(shape, dtype=np.float32) * 0.02
    if current and size + tensor.nbytes > shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = tensor
    size += tensor.nbytes
  shards.append(current)
  weight_map, total, largest = {}, 0, 0
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, str(out / name), metadata={"format": "pt"})
    nbytes = sum(t.nbytes for t in shard.values())
    total, largest = total + nbytes, max(largest, nbytes)
    weight_map.update({k: name for k in shard})
    del shard
  (out / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {"total_size": total}, "weight_map": weight_map}))
  return total, largest


# Runs the command as the only child of a fresh interpreter, whose RUSAGE_CHILDREN is then the
# command's own peak (RUSAGE_CHILDREN here would be the largest of all children so far).
_MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def peak_rss_of(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
  """(seconds, peak RSS in bytes) of `command`."""
  start = time.perf_counter()
  result = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True,
                          text=True, env=env)
  seconds = time.perf_counter() - start
  if result.returncode:
    sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
  return seconds, int(result.stdout.strip().splitlines()[-1]) * 1024


@contextlib.contextmanager
def gcs_server(data_dir: pathlib.Path, bucket: str):
  """The environment of a client of a GCS emulator serving `bucket` from `data_dir`."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  emulator = pathlib.Path(__file__).resolve().parent.parent / "tests" / "gcs_emulator.py"
  server = subprocess.Popen([sys.executable, str(emulator), "-d", str(data_dir), "start",
                             "--port", str(port), "--default-bucket", bucket, "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 30
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}", timeout=1).read()
        break
      except OSError:
        if server.poll() is not None or time.monotonic() > deadline:
          sys.exit(f"the GCS emulator did not start ({' '.join(server.args)})")
        time.sleep(0.1)
    yield {**os.environ, "STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}
  finally:
    server.kill()
    server.wait()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gib", type=float, default=2.5)
  parser.add_argument("--shard-gib", type=float, default=0.5)
  parser.add_argument("--workdir", default="/tmp/lmjax-convert-bench")
  parser.add_argument("--remote", action="store_true",
                      help="also export to a GCS emulator and import back from it")
  parser.add_argument("--reuse", action="store_true",
                      help="keep the workdir's checkpoint and its import (hf/, run/) from a "
                           "previous run; measure the exports (and the remote import) again")
  args = parser.parse_args()
  work = pathlib.Path(args.workdir)
  lmjax = [sys.executable, "-m", "lmjax", "convert"]
  if args.reuse:
    for stale in ("hf-out", "gcs", "run-from-gcs"):
      shutil.rmtree(work / stale, ignore_errors=True)
    sizes = [p.stat().st_size for p in (work / "hf").glob("*.safetensors")]
    total, largest, t_in, rss_in = sum(sizes), max(sizes), float("nan"), float("nan")
  else:
    shutil.rmtree(work, ignore_errors=True)
    total, largest = write_checkpoint(work / "hf", gib=args.gib,
                                      shard_bytes=int(args.shard_gib * 2**30))
    t_in, rss_in = peak_rss_of(lmjax + ["hf-to-lmjax", str(work / "hf"), str(work / "run")])
  t_out, rss_out = peak_rss_of(lmjax + ["lmjax-to-hf", str(work / "run"), str(work / "hf-out"),
                                        "--max-shard-size", str(int(args.shard_gib * 2**30))])
  measured = [("hf-to-lmjax", t_in, rss_in)] if not args.reuse else []
  measured.append(("lmjax-to-hf", t_out, rss_out))
  if args.remote:
    (work / "gcs").mkdir()
    with gcs_server(work / "gcs", "bench") as env:
      t_up, rss_up = peak_rss_of(lmjax + ["lmjax-to-hf", str(work / "run"), "gs://bench/hf-out",
                                          "--max-shard-size", str(int(args.shard_gib * 2**30))],
                                 env)
      t_down, rss_down = peak_rss_of(lmjax + ["hf-to-lmjax", "gs://bench/hf-out",
                                              str(work / "run-from-gcs")], env)
    measured += [("lmjax-to-hf to gs://", t_up, rss_up), ("hf-to-lmjax from gs://", t_down,
                                                            rss_down)]
  gib = lambda b: f"{b / 2**30:.2f} GiB"
  print(f"checkpoint: {gib(total)} float32 in shards of at most {gib(largest)}")
  for name, seconds, rss in measured:
    print(f"{name}: {seconds:.1f} s, peak RSS {gib(rss)} ({rss / total:.2f}x the checkpoint; "
          f"bound: under {gib(total + largest)}, its size plus one shard)")
  if args.remote:
    print(f"remote / local peak: export {rss_up / rss_out:.2f}x"
          + (f", import {rss_down / rss_in:.2f}x" if not args.reuse else ""))


if __name__ == "__main__":
  main()
