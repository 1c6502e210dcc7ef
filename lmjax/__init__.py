"""lmjax: train and convert transformer language models with JAX and Flax."""

__version__ = "0.1.0"

from lmjax.load import load_run  # noqa: E402

__all__ = ["__version__", "load_run"]
