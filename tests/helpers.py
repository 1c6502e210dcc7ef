"""Small helpers shared by several test modules that need no model library."""

import hashlib
import json
import os

from lmjax.cli import main


def run_cli(capsys, *argv):
  """Runs `lmjax *argv` in this process: (exit code, stdout, stderr), each argument as str."""
  code = main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err


def tree_digest(path):
  """A digest of every file under `path` (names and bytes), to prove nothing changed."""
  digest = hashlib.sha256()
  for root, _, files in sorted(os.walk(path)):
    for name in sorted(files):
      full = os.path.join(root, name)
      digest.update(full.encode())
      digest.update(open(full, "rb").read())
  return digest.hexdigest()


def rows(run_dir):
  return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
