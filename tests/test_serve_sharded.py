"""`lmjax serve` sharded over a mesh of 8 fake CPU devices, as training shards (one child
process, tests/serve_sharded_worker.py): on tensor x data and on fsdp x tensor x data, requests
of different lengths, more than the slots, decode greedily what the one-device `lmjax.generate`
decodes, token for token, with nothing compiled as they come and go; a mesh the model or the
slots do not divide exits 2 naming what to change.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from lmjax.data.tokenize.tokenizer import Tokenizer  # noqa: E402
from lmjax.hf.engine import write_hf  # noqa: E402
from lmjax.infer import generate  # noqa: E402
from lmjax.model import Transformer
from lmjax.model.presets import preset  # noqa: E402
from lmjax.run.loader import load  # noqa: E402
from tests.processes import children, cpu_env  # noqa: E402
from tests.serve_sharded_worker import MESHES, REQUESTS  # noqa: E402

# One word a token, so that equal texts are equal tokens.
WORDS = ["<unk>", "<eos>"] + [f"t{i}" for i in range(30)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """A random one-layer Llama (4 query heads, 2 key/value heads) with a word-level tokenizer,
  written as a Hugging Face directory."""
  root = tmp_path_factory.mktemp("sharded-serve")
  hf = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
  hf.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  Tokenizer(hf, roles={"eos": "<eos>", "unk": "<unk>", "pad": "<eos>"}).save(root / "tokenizer")
  config = preset("tiny-llama", vocab_size=len(WORDS), num_layers=1, embed_dim=32, num_heads=4,
                  num_kv_heads=2, mlp_dim=64, max_seq_len=64)
  model = Transformer(config)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
  # Weights larger than init's give logits far apart: no near-tie for rounding to flip.
  params = jax.tree.map(lambda x: 4 * x, params)
  write_hf(model, params, root / "model", tokenizer_dir=root / "tokenizer",
           config_overrides={"eos_token_id": 1})
  return root / "model"


def test_a_sharded_server_answers_as_one_device_generates(model_dir, tmp_path):
  out = tmp_path / "results.json"
  with children(tmp_path) as group:
    group.start("worker", ["-m", "tests.serve_sharded_worker", str(model_dir), str(out)],
                cpu_env(8, TF_CPP_MIN_LOG_LEVEL="1"))  # XLA's warnings in the log
    # The reference, here on one device, while the child serves.
    loaded = load(str(model_dir), kind="hf", require_tokenizer=True)
    tokenizer, eos = loaded.tokenizer, loaded.tokenizer.eos_id
    prompts = [tokenizer.encode(" ".join(words)) for words, _ in REQUESTS]
    ids = generate(loaded.model, loaded.params, prompts, temperature=0, eos_id=eos,
                   max_new_tokens=max(n for _, n in REQUESTS))
    expected = []
    for prompt, row, (_, max_tokens) in zip(prompts, ids, REQUESTS):
      row = [i for i in row[:max_tokens] if i != eos]
      expected.append(tokenizer.decode(prompt + row)[len(tokenizer.decode(prompt)):])
    group.check(timeout=240)
    log = group.log("worker", tail=10**6)
  results = json.loads(out.read_text())
  # The layouts meet without XLA replicating a whole array to reshard it.
  assert "Involuntary full rematerialization" not in log, log[-3000:]

  assert len({len(e.split()) for e in expected}) > 3  # answers of different lengths
  for mesh in MESHES:
    assert results["answers"][mesh] == expected, mesh
    # Every program was compiled at start: one decode (the slots are split: no smaller group)
    # and the one prefill bucket these prompts use.
    compiled = results["compiled"][mesh]
    assert compiled["finished"]["compiled_decodes"] == compiled["started"]["compiled_decodes"] == 1
    assert compiled["finished"]["compiled_prefills"] == compiled["started"]["compiled_prefills"]
  # Slots over the batch axes and key/value heads over tensor; params as training places them.
  shardings = results["shardings"]
  assert shardings["tensor2_data4"]["cache"] == [["data", "fsdp", "expert"], "tensor", None, None]
  assert shardings["tensor2_data4"]["query"] == ["stage", "fsdp", "tensor", None]
  assert shardings["tensor2_data4"]["query_devices"] == 8
  assert shardings["fsdp2_tensor2_data2"]["query_devices"] == 8

  refused = results["refused"]
  for case, message in [("kv_heads", "model.num_kv_heads"), ("slots", "give a multiple of 8"),
                        ("devices", "mesh data=3 needs 3 devices but 8 are available"),
                        ("stages", "mesh.stage=2: lmjax serve decodes without pipeline stages")]:
    assert refused[case]["code"] == 2, (case, refused[case])
    assert message in refused[case]["stderr"], (case, refused[case])
    assert "Traceback" not in refused[case]["stderr"]
