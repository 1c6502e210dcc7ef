"""Run directories written by earlier lmjax versions keep working: they load, resume and export.

tests/data/runs_before_restructure.tar.gz holds two tiny runs (2 steps) written by lmjax before the
package was restructured (before the model config became graph-only: `model.hf_model_type`
and `model.init_from` were ModelConfig fields then, and Mistral was a llama with
`hf_model_type: mistral`). They were made with
`lmjax train tiny-gpt|tiny-llama --set model.num_layers=1 model.embed_dim=16 ... train.steps=2`.
"""

import dataclasses
import json
import pathlib
import tarfile

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lmjax  # noqa: E402
from lmjax.convert.runs import run_to_hf  # noqa: E402
from lmjax.run import RunDir  # noqa: E402
from lmjax.train.loop import train  # noqa: E402
from tests.hf_models import TOL  # noqa: E402

ARCHIVE = pathlib.Path(__file__).parent / "data" / "runs_before_restructure.tar.gz"


@pytest.mark.parametrize("name, family, model_type", [("gpt", "gpt2", "gpt2"),
                                                      ("mistral", "mistral", "mistral")])
def test_an_old_run_directory_loads_resumes_and_exports(tmp_path, name, family, model_type):
  with tarfile.open(ARCHIVE) as archive:
    archive.extractall(tmp_path, filter="data")
  run = tmp_path / "runs_before_restructure" / name
  model, params = lmjax.load_run(run)
  assert model.config.family == family

  saved = RunDir(run).require_config()
  longer = dataclasses.replace(saved, train=dataclasses.replace(saved.train, steps=3))
  result = train(longer, run)
  assert (result.start_step, result.final_step) == (2, 3)
  rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3]

  run_to_hf(run, tmp_path / "hf")
  assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == model_type
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
  model, params = lmjax.load_run(run)
  ids = np.arange(3, 19).reshape(2, 8)
  with torch.no_grad():
    expected = hf_model(input_ids=torch.tensor(ids)).logits.numpy()
  got = np.asarray(model.apply({"params": params}, jnp.asarray(ids, jnp.int32)))
  np.testing.assert_allclose(got, expected, **TOL)
