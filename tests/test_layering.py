"""The layering contracts in pyproject.toml would catch a forbidden import.

`lint-imports` (import-linter) reads the contracts from pyproject.toml and builds the import
graph statically (imports inside functions included). `make test` runs it on the package first;
here it runs on a copy of the package with one import that the contracts forbid, so a contract
that checks nothing fails.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LINT_IMPORTS = pathlib.Path(sys.executable).with_name("lint-imports")


def lint_imports(root: pathlib.Path) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(root)}  # the tree at `root`, not the installed one
  return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"),
                         "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                        timeout=120)


def copy_of_the_package(tmp_path: pathlib.Path) -> pathlib.Path:
  shutil.copytree(ROOT / "lmjax", tmp_path / "lmjax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
  return tmp_path


@pytest.mark.parametrize("module, added, broken", [
    ("data/examples/packing.py", "from lmjax.model import Transformer",
     "The data layer knows no model"),
    ("convert/runs.py", "import lmjax.train.loop", "Conversion never imports the trainer"),
    ("hf/engine.py", "import lmjax.run.run_dir", "The Hugging Face format knows no runs"),
    ("model/layers.py", "from lmjax.sharding import MeshRules", "The model and the sharding"),
    ("hf/engine.py", "from lmjax.hf.families import gpt2", "names no family"),
    ("hf/families/qwen3.py", "from lmjax.hf.families.llama import LLAMA",
     "Each family file stands alone"),
    # An import inside a function is an import all the same.
    ("data/tokenize/tokenizer.py",
     "def _late():\n  from lmjax.data.tokenize import sentencepiece_model",
     "No import cycles"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, added, broken):
  root = copy_of_the_package(tmp_path)
  with open(root / "lmjax" / module, "a", encoding="utf-8") as f:
    f.write(f"\n{added}\n")
  result = lint_imports(root)
  assert result.returncode != 0, result.stdout
  assert f"{broken}" in result.stdout and "BROKEN" in result.stdout, result.stdout


def test_every_module_is_under_400_lines():
  long = {str(path.relative_to(ROOT)): n for path in (ROOT / "lmjax").rglob("*.py")
          if (n := len(path.read_text(encoding="utf-8").splitlines())) >= 400}
  assert not long, f"split these modules (one concept each, under 400 lines): {long}"
