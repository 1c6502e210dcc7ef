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


def assert_resumed_as_uninterrupted(whole, killed, expected_rows, got_rows, steps, *,
                                    rtol=0.0, atol=0.0):
  """A run that was interrupted and resumed (`killed`, its metrics `got_rows`) logged each of
  `steps` steps once, with the losses of the uninterrupted run (`whole`, `expected_rows`),
  and ended with bit-equal params; or, with a tolerance (resumed on another mesh, whose sums
  run in another order), equal within it."""
  import functools
  import jax
  import numpy as np
  import lmjax
  assert [r["step"] for r in got_rows] == list(range(1, steps + 1))  # each step logged once
  got, expected = [r["loss"] for r in got_rows], [r["loss"] for r in expected_rows]
  _, params_whole = lmjax.load_run(whole)
  _, params_killed = lmjax.load_run(killed)
  if rtol == atol == 0.0:
    assert got == expected
    jax.tree.map(np.testing.assert_array_equal, params_whole, params_killed)
  else:
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=rtol, atol=atol),
                 params_killed, params_whole)

