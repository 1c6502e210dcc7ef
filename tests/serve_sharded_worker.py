"""Runs in a subprocess with 8 fake CPU devices (tests/test_serve_sharded.py starts it): serves
the tiny model of MODEL_DIR on each mesh of MESHES (the engine `lmjax serve` runs, fed the
requests of REQUESTS at once: more than the slots, so some wait and join as others leave), and
runs `lmjax serve` with meshes it must refuse.

Usage: python -m tests.serve_sharded_worker MODEL_DIR OUT.json
Writes {"answers": {mesh: [text, ...]}, "compiled": {mesh: stats}, "shardings": {mesh: {...}},
"refused": {case: {"code", "stderr"}}}.
"""

import contextlib
import io
import json
import os
import pathlib
import sys
import threading

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

from lmjax.cli import main as cli_main  # noqa: E402
from lmjax.infer.engine import Request  # noqa: E402
from lmjax.infer.slot_mesh import serving_placement  # noqa: E402
from lmjax.run.loader import load  # noqa: E402
from lmjax.serve.server import served_model  # noqa: E402

MAX_BATCH, MAX_SEQ_LEN = 4, 48
# (prompt words, max_tokens): prompts of 1 to 13 tokens (one prefill bucket), answers of 2 to 20.
REQUESTS = [(["t1"], 20), (["t5", "t9", "t2"], 7), (["t3"] * 13, 12), (["t7", "t7"], 2),
            (["t11", "t4", "t8", "t6", "t1"], 16), (["t2", "t0"], 9)]
MESHES = {"tensor2_data4": ["mesh.tensor=2", "mesh.data=4"],
          "fsdp2_tensor2_data2": ["mesh.fsdp=2", "mesh.tensor=2", "mesh.data=2"]}
REFUSED = {"kv_heads": ["--set", "mesh.tensor=4", "mesh.data=2"],   # 2 key/value heads
           "slots": ["--set", "mesh.data=8", "--max-batch", "4"],
           "devices": ["--set", "mesh.data=3"],
           "stages": ["--set", "mesh.stage=2", "mesh.data=4"]}


def answers(engine, tokenizer) -> list[str]:
  """What the engine answers REQUESTS, greedy, all submitted at once from separate callers."""
  texts, done = [""] * len(REQUESTS), threading.Semaphore(0)

  def collect(index, event):
    texts[index] += event.text
    if event.finish_reason is not None:
      done.release()

  for index, (words, max_tokens) in enumerate(REQUESTS):
    request = Request(prompt=tokenizer.encode(" ".join(words)), max_tokens=max_tokens,
                      temperature=0)
    engine.submit([request], lambda _, event, index=index: collect(index, event))
  for _ in REQUESTS:
    assert done.acquire(timeout=120)
  return texts


def main(model_dir: str, out: pathlib.Path) -> None:
  assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
  results = {"answers": {}, "compiled": {}, "shardings": {}, "refused": {}}
  loaded = load(model_dir, kind="hf", require_tokenizer=True)
  for name, overrides in MESHES.items():
    served = served_model(loaded, max_batch=MAX_BATCH, max_seq_len=MAX_SEQ_LEN, max_queue=8,
                          placement=serving_placement(overrides))
    engine = served.engine
    engine.start()
    started = engine.stats()
    try:
      results["answers"][name] = answers(engine, loaded.tokenizer)
    finally:
      engine.stop()
    kernel = engine.params["layers"]["attention"]["query"]["kernel"]
    results["compiled"][name] = {"started": started, "finished": engine.stats()}
    spec = lambda array: [list(a) if isinstance(a, tuple) else a for a in array.sharding.spec]
    results["shardings"][name] = {
        "cache": spec(engine._state.cache["layers"][0]["key"]), "query": spec(kernel),
        "query_devices": len({s.device for s in kernel.addressable_shards
                              if s.data.size < kernel.size})}
  for case, flags in REFUSED.items():
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
      code = cli_main(["serve", "--hf", model_dir, "--port", "0", *flags])
    results["refused"][case] = {"code": code, "stderr": err.getvalue()}
  out.write_text(json.dumps(results))


if __name__ == "__main__":
  main(sys.argv[1], pathlib.Path(sys.argv[2]))
