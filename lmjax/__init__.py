"""lmjax: train and convert transformer language models with JAX and Flax."""

# The families lmjax ships register themselves first: every model.family value comes from them.
import lmjax.hf.families  # noqa: F401  (isort: skip)  registers them
from lmjax.convert import Loaded, from_hf, load, to_hf
from lmjax.convert.base_model import load_run
from lmjax.infer import generate, stream_generate
from lmjax.version import __version__

__all__ = ["Loaded", "__version__", "from_hf", "generate", "load", "load_run", "stream_generate",
           "to_hf"]
