"""Optional dependencies: each comes with an extra of the lmjax package (pyproject.toml's
`[project.optional-dependencies]`), and a missing one is one message naming that extra.

    pyplot = require("matplotlib.pyplot", extra="plot", needed_for="`lmjax plot`")
    # without matplotlib: UserError("`lmjax plot` needs matplotlib, which is not installed:
    #                                install it with pip install 'lmjax[plot]'.")

Only code that uses an optional package imports it, inside the function that needs it (DESIGN.md:
an import inside a function only defers an optional heavy dependency), through `require`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from lmjax.errors import UserError

# The extras and the packages each brings that lmjax imports (a module's top-level name).
EXTRAS = {
    "hf": ("transformers", "torch"),
    "peft": ("peft",),
    "data": ("pyarrow",),
    "eval": ("lm_eval",),
    "plot": ("matplotlib",),
    "datasets": ("datasets",),
    "wandb": ("wandb",),
    "tfds": ("tensorflow_datasets",),
    "tfrecord": ("tensorflow",),
    "gguf": ("gguf",),
    "quant": ("qwix",),
    "gcs": ("gcsfs",),
    "s3": ("s3fs",),
}


def install_hint(extra: str) -> str:
  """How to install an extra: "pip install 'lmjax[plot]'"."""
  if extra not in EXTRAS:
    raise ValueError(f"no extra {extra!r}; the extras are {', '.join(EXTRAS)}")
  return f"pip install 'lmjax[{extra}]'"


def missing_message(package: str, *, extra: str, needed_for: str) -> str:
  """The one message for an optional package that is not installed."""
  return (f"{needed_for} needs {package}, which is not installed: install it with "
          f"{install_hint(extra)}.")


def require(module: str, *, extra: str, needed_for: str, package: str | None = None
            ) -> ModuleType:
  """Imports `module` (dotted), or raises a UserError naming `extra` (`missing_message`).

  `package` names what to install where it differs from the module's top-level name
  (`lm-eval` for lm_eval); `needed_for` says what the user asked for (a command, a config key).
  """
  try:
    return importlib.import_module(module)
  except ImportError:
    raise UserError(missing_message(package or module.split(".")[0], extra=extra,
                                    needed_for=needed_for)) from None
