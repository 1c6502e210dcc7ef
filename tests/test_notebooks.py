"""Every notebook in notebooks/ runs top to bottom without an error (the recipes' in
notebooks/recipes/ by `make recipe-notebooks`, not here), and the outputs stored in each read as
a tutorial's should: no path of the machine that ran it, no warning noise."""

import ast
import pathlib
import re

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
RECIPES = sorted((ROOT / "notebooks" / "recipes").glob("*.ipynb"))

# An absolute path: "/" after a space, a quote, a bracket or the line's start, then a name and
# another "/" (so "tok/s", "8/12" and "a / b" are not paths), or a Windows drive.
ABSOLUTE_PATH = re.compile(r"(?:^|[\s'\"(\[=])/[\w.-]+/|\b[A-Za-z]:\\\\?[\w.-]")
# A warning: Python's (`...Warning:`), a logger's (`WARNING`), or absl/XLA's C++ log lines
# (`W1203 16:47:53.126596 ...`, E for errors).
WARNING_LINE = re.compile(r"\w*Warning\b|\bWARNING\b|^[WE]\d{4} \d\d:\d\d:\d\d", re.MULTILINE)


def stored_text(notebook) -> list[tuple[int, str]]:
  """(cell number, text) of every stored output: streams, results, errors."""
  texts = []
  for n, cell in enumerate(notebook.cells):
    for output in cell.get("outputs", []):
      text = output.get("text") or output.get("data", {}).get("text/plain", "")
      if output.get("output_type") == "error":
        text = "\n".join(output.get("traceback", []))
      texts.append((n, "".join(text)))
  return texts


def test_there_are_notebooks():
  assert NOTEBOOKS


def assert_clean(notebook) -> None:
  texts = stored_text(notebook)
  assert texts, "the notebook is stored without its outputs: execute it and save it"
  for n, text in texts:
    assert not ABSOLUTE_PATH.search(text), f"cell {n} shows a path of the machine: {text[:500]}"
    assert not WARNING_LINE.search(text), f"cell {n} shows a warning: {text[:500]}"


@pytest.mark.parametrize("path", NOTEBOOKS + RECIPES, ids=lambda p: p.name)
def test_stored_outputs_hold_no_machine_path_and_no_warning(path):
  assert_clean(nbformat.read(path, as_version=4))


def test_the_checks_catch_what_they_look_for():
  assert ABSOLUTE_PATH.search("lmjax: initialised from /tmp/tmpzcsacchm/tiny-bert")
  assert ABSOLUTE_PATH.search("'/work/main/.venv/lib/python3.11/site-packages/tqdm/auto.py'")
  assert not ABSOLUTE_PATH.search("step 4/40  loss 6.941  tok/s 1.921e+04; runs/convert/tuned")
  assert WARNING_LINE.search("auto.py:21: TqdmWarning: IProgress not found.")
  assert WARNING_LINE.search("W1203 16:47:53.126596   11187 spmd_partitioner.cc:656] [SPMD]")
  assert not WARNING_LINE.search("step 10/60  loss 7.357  eval_loss 6.344  eta 19s")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
  notebook = nbformat.read(path, as_version=4)
  NotebookClient(notebook, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  assert_clean(notebook)  # clean by construction: a fresh run's outputs as well as the stored


# The recipes' notebooks (notebooks/recipes/) train real pretrained models for minutes: `make
# recipe-notebooks` runs them, not the suite. Here: what they name exists, so that a renamed
# config, make target or benchmark helper breaks this test rather than a reader's notebook.
def test_there_are_four_recipe_notebooks_and_make_runs_them():
  assert [p.stem for p in RECIPES] == ["book_smollm2", "dpo_smollm2", "sentiment_minilm",
                                       "sft_smollm2"]
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
