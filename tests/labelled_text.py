"""A small labelled set of real text for classifier tests: which of two real corpora a
paragraph comes from (the `labelled` fixture in conftest.py writes it as JSON Lines)."""

import importlib
import inspect

_MODULES = ["argparse", "collections", "difflib", "textwrap", "pathlib", "json", "inspect",
            "string", "re", "os", "shutil", "functools", "itertools", "datetime", "decimal",
            "statistics", "random", "typing", "enum", "dataclasses", "csv", "logging",
            "unittest", "threading", "subprocess", "socket", "tarfile", "zipfile", "calendar",
            "contextlib"]


def paragraphs(text: str) -> list[str]:
  return [p for p in (" ".join(p.split()) for p in text.split("\n\n")) if len(p) > 60]


def two_corpora() -> list[tuple[str, str]]:
  """(paragraph, "reference" | "docstring"): the language reference's topics (pydoc) against
  the standard library's docstrings. Real text, real provenance labels."""
  from pydoc_data.topics import topics
  reference = sorted({p for name in topics for p in paragraphs(topics[name])})
  docstrings = set()
  for name in _MODULES:
    module = importlib.import_module(name)
    for obj in [module, *(getattr(module, n) for n in dir(module) if not n.startswith("_"))]:
      if inspect.ismodule(obj) or callable(obj):
        docstrings.update(paragraphs(inspect.getdoc(obj) or ""))
  return [(p, "reference") for p in reference] + [(p, "docstring") for p in sorted(docstrings)]
