"""Peak memory of `lmjax convert` on a synthetic Llama-style checkpoint (run by hand).

    .venv/bin/python benchmarks/convert_memory.py [--gib 2.5] [--workdir /tmp/convert-bench]

Writes a random Llama-style Hugging Face checkpoint of about `--gib` GiB (float32, sharded
safetensors with an index), then times `lmjax convert hf-to-lmjax` and `lmjax convert
lmjax-to-hf` in child processes and reports each one's peak resident memory (ru_maxrss) next
to the checkpoint's size and its largest shard.

Both directions hold one param at a time (a stacked param: all its layers) plus its compressed
copy, so their peak stays under the checkpoint's size. Measured on a 2-core CPU VM with
`--gib 2.5 --shard-gib 0.5`: hf-to-lmjax 1.30 GiB in 27 s, lmjax-to-hf 1.25 GiB in 28 s
(before streaming: 5.67 GiB and 4.29 GiB).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time

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


def peak_rss_of(command: list[str]) -> tuple[float, float]:
  """(seconds, peak RSS in bytes) of `command`."""
  start = time.perf_counter()
  result = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if result.returncode:
    sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
  return seconds, int(result.stdout.strip().splitlines()[-1]) * 1024


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gib", type=float, default=2.5)
  parser.add_argument("--shard-gib", type=float, default=0.5)
  parser.add_argument("--workdir", default="/tmp/lmjax-convert-bench")
  args = parser.parse_args()
  work = pathlib.Path(args.workdir)
  shutil.rmtree(work, ignore_errors=True)
  total, largest = write_checkpoint(work / "hf", gib=args.gib, shard_bytes=int(args.shard_gib * 2**30))
  lmjax = [sys.executable, "-m", "lmjax", "convert"]
  t_in, rss_in = peak_rss_of(lmjax + ["hf-to-lmjax", str(work / "hf"), str(work / "run")])
  t_out, rss_out = peak_rss_of(lmjax + ["lmjax-to-hf", str(work / "run"), str(work / "hf-out"),
                                        "--max-shard-size", str(int(args.shard_gib * 2**30))])
  gib = lambda b: f"{b / 2**30:.2f} GiB"
  print(f"checkpoint: {gib(total)} float32 in shards of at most {gib(largest)}")
  for name, seconds, rss in (("hf-to-lmjax", t_in, rss_in), ("lmjax-to-hf", t_out, rss_out)):
    print(f"{name}: {seconds:.1f} s, peak RSS {gib(rss)} ({rss / total:.2f}x the checkpoint; "
          f"bound: under {gib(total + largest)}, its size plus one shard)")


if __name__ == "__main__":
  main()
