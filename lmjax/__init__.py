"""lmjax: train and convert transformer language models with JAX and Flax."""
__version__ = "0.1.0"
