"""The lmjax version, in a module of its own so that any layer can record it without importing
the package's public API (which pulls in conversion and loading)."""

__version__ = "0.1.0"
