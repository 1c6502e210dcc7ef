"""An optional dependency that is not installed is one message naming the extra that brings it.

The packages are made missing the way Python sees a missing package: `sys.modules[name] = None`
makes `import name` raise ModuleNotFoundError, whether or not it was imported before.
"""

import json
import pathlib
import sys
import tomllib

import pytest

import lmjax.infer
from lmjax.errors import UserError
from lmjax.extras import EXTRAS, require
from tests.helpers import run_cli

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_extra_named_is_one_pyproject_declares():
  declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
      "optional-dependencies"]
  assert set(EXTRAS) <= set(declared)


@pytest.mark.parametrize("extra, module", [(e, m) for e, ms in EXTRAS.items() for m in ms])
def test_a_missing_package_names_its_extra(monkeypatch, extra, module):
  monkeypatch.setitem(sys.modules, module, None)
  with pytest.raises(UserError, match=rf"needs {module}, which is not installed: install it "
                                      rf"with pip install 'lmjax\[{extra}\]'"):
    require(module, extra=extra, needed_for="this")


def test_plot_without_matplotlib_says_which_extra_to_install(monkeypatch, tmp_path, capsys):
  run = tmp_path / "run"
  run.mkdir()
  (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 5.0 / s}) + "\n"
                                             for s in (1, 2, 3)))
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  code, _, err = run_cli(capsys, "plot", run, "--out", tmp_path / "curves.png")
  assert code == 2 and "Traceback" not in err
  assert "`lmjax plot` needs matplotlib, which is not installed" in err
  assert "pip install 'lmjax[plot]'" in err
  assert not (tmp_path / "curves.png").exists()


def test_eval_harness_without_lm_eval_says_which_extra_to_install(monkeypatch, tmp_path, capsys):
  for name in ["lm_eval", *(m for m in sys.modules if m.startswith("lm_eval."))]:
    monkeypatch.setitem(sys.modules, name, None)  # lm_eval.api.model too, if imported before
  # lmjax.infer.harness imports lm-eval as it is imported: import it afresh here, and put back
  # what was there after (absent, or the module built with lm-eval), or a later test in this
  # process would get the module built without it
  monkeypatch.setitem(sys.modules, "lmjax.infer.harness", None)
  monkeypatch.delitem(sys.modules, "lmjax.infer.harness")
  monkeypatch.setattr(lmjax.infer, "harness", None, raising=False)  # and the package's name
  monkeypatch.delattr(lmjax.infer, "harness")
  code, _, err = run_cli(capsys, "eval-harness", "--hf", tmp_path, "--tasks", "hellaswag")
  assert code == 2 and "Traceback" not in err
  assert "needs lm-eval (lm-evaluation-harness)" in err and "pip install 'lmjax[eval]'" in err
