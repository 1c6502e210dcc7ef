"""Hugging Face models by hub id, from the local cache: `org/name[@revision]` -> a directory.

Wherever lmjax takes a Hugging Face model directory (`--hf`, `model.init_from`, `convert
hf-to-lmjax`, `convert verify`) it also takes a hub id, looked up in the local Hugging Face cache
(`HF_HUB_CACHE`, default ~/.cache/huggingface/hub) without touching the network: lmjax runs on
machines that cannot reach the Hub. A model not in the cache is an error saying how to fetch it
on a connected machine. It also takes a GGUF file, read as the Hugging Face directory it
describes (lmjax.hf.gguf.materialise, which writes that directory once into lmjax's cache).
"""

from __future__ import annotations

import os
import pathlib
import re

from lmjax.errors import UserError
from lmjax.hf.gguf.materialise import is_gguf_source, materialise

# org/name, optionally @revision (a branch, tag or commit); what is not a hub id is left as is
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w.\-/]+)?$")


def is_hub_id(value: str) -> bool:
  return bool(_HUB_ID.match(value)) and not os.path.exists(value)


def resolve_hf_dir(value: str | os.PathLike, *, what: str = "--hf") -> str:
  """`value` itself when it exists or is no hub id; else the cached snapshot of hub id `value`
  (a UserError naming the cache and the fix when it is not cached); for a GGUF file, the
  Hugging Face directory it was imported into."""
  value = os.fspath(value)
  if is_gguf_source(value):
    return str(materialise(value, what=what))
  if not is_hub_id(value):
    return value
  try:
    import huggingface_hub  # noqa: PLC0415 -- only for hub ids
    from huggingface_hub.errors import LocalEntryNotFoundError  # noqa: PLC0415
  except ImportError:
    raise UserError(f"{what} {value!r} is not a directory, and reading hub ids from the local "
                    f"cache needs huggingface_hub (pip install huggingface_hub).") from None
  repo_id, _, revision = value.partition("@")
  if revision and any(part in ("", ".", "..") for part in revision.split("/")):
    # A revision names a branch, tag or commit; `..` would reach outside the cache.
    raise UserError(f"{what} {value!r}: revision {revision!r} is not a branch, tag or commit "
                    f"name (no empty, '.' or '..' parts); give e.g. {repo_id}@main.")
  try:
    return huggingface_hub.snapshot_download(repo_id, revision=revision or None,
                                             local_files_only=True)
  except IsADirectoryError as e:  # refs/<revision> is a folder of refs (refs/pr/1, …)
    inside = sorted(p.relative_to(e.filename).as_posix()
                    for p in pathlib.Path(e.filename).rglob("*") if p.is_file())
    raise UserError(f"{what} {value!r}: revision {revision!r} is a group of refs in the cache, "
                    f"not a branch, tag or commit: name one of them, e.g. "
                    f"{repo_id}@{revision}/{inside[0] if inside else '<name>'}.") from None
  except (LocalEntryNotFoundError, FileNotFoundError, ValueError) as e:
    cache = huggingface_hub.constants.HF_HUB_CACHE
    fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    raise UserError(
        f"{what} {value!r} is neither a directory nor a model in the local Hugging Face cache "
        f"({cache}; {type(e).__name__}). On a machine with internet run `{fetch}` and copy its "
        f"cache here (or set HF_HUB_CACHE to it), or give the model's directory.") from None
