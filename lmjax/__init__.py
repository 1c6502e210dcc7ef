"""lmjax: train and convert transformer language models with JAX and Flax."""

# The families lmjax ships register themselves first: every model.family value comes from them.
import lmjax.hf.families  # noqa: F401  (isort: skip)  registers them
from lmjax.convert import from_hf, to_hf
from lmjax.infer import generate, stream_generate
from lmjax.run.loader import Loaded, load, load_run
from lmjax.version import __version__

__all__ = ["Loaded", "__version__", "from_hf", "generate", "load", "load_run", "stream_generate",
           "to_hf"]
