"""lmjax: train and convert transformer language models with JAX and Flax."""

__version__ = "0.1.0"

from lmjax.convert import from_hf, to_hf  # noqa: E402
from lmjax.load import load_run  # noqa: E402

__all__ = ["__version__", "from_hf", "load_run", "to_hf"]
