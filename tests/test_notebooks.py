"""Every notebook in notebooks/ runs top to bottom without an error."""

import ast
import pathlib
import re

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
  assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
  notebook = nbformat.read(path, as_version=4)
  NotebookClient(notebook, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()


# The recipes' notebooks (notebooks/recipes/) train real pretrained models for minutes: `make
# recipe-notebooks` runs them, not the suite. Here: what they name exists, so that a renamed
# config, make target or benchmark helper breaks this test rather than a reader's notebook.
ROOT = pathlib.Path(__file__).parent.parent
RECIPES = sorted((ROOT / "notebooks" / "recipes").glob("*.ipynb"))


def test_there_are_three_recipe_notebooks_and_make_runs_them():
  assert [p.stem for p in RECIPES] == ["book_smollm2", "sentiment_minilm", "sft_smollm2"]
  assert "notebooks/recipes/*.ipynb" in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_a_recipe_notebook_names_configs_and_helpers_that_exist(path):
  cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
  source = "\n".join(c.source for c in cells)
  tree = ast.parse(source)  # every cell is plain Python
  trained = re.findall(r'lmjax\("train", "([\w-]+)"', source)
  assert trained, "a recipe trains"
  for name in trained:
    assert (ROOT / "configs" / f"{name}.yaml").is_file(), name
    assert re.search(rf"^{name}:", (ROOT / "Makefile").read_text(), re.M), f"make {name}"
  for node in ast.walk(tree):
    helper = ROOT / "benchmarks" / f"{node.module}.py" if isinstance(node, ast.ImportFrom) else None
    if helper and helper.is_file():
      assert {a.name for a in node.names} <= top_level_names(helper), node.module


def top_level_names(module: pathlib.Path) -> set[str]:
  """The functions, classes and assigned names a Python file defines at its top level."""
  names = set()
  for node in ast.parse(module.read_text()).body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, ast.Assign):
      names.update(t.id for t in node.targets if isinstance(t, ast.Name))
  return names
