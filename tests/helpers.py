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


def assert_refused(result, expected):
  """A command recorded as {"code", "stderr", "wrote"} exited 2 with every text of `expected`
  in its message, no traceback, and wrote nothing."""
  assert result["code"] == 2, result
  for text in expected:
    assert text in result["stderr"], (text, result["stderr"])
  assert "Traceback" not in result["stderr"] and not result["wrote"]


def assert_resumed_as_uninterrupted(whole, killed, expected_rows, got_rows, steps, *, rtol=0.0):
  """A run that was interrupted and resumed (`killed`, its metrics `got_rows`) logged each of
  `steps` steps once, with the losses of the uninterrupted run (`whole`, `expected_rows`),
  and ended with bit-equal params; within `rtol` (relative) where it resumed on another mesh,
  whose collectives add in another order."""
  import jax
  import numpy as np
  import lmjax
  assert [r["step"] for r in got_rows] == list(range(1, steps + 1))  # each step logged once
  same = (np.testing.assert_array_equal if not rtol else
          lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol / 10))
  same([r["loss"] for r in got_rows], [r["loss"] for r in expected_rows])
  _, params_whole = lmjax.load_run(whole)
  _, params_killed = lmjax.load_run(killed)
  jax.tree.map(same, params_whole, params_killed)



def random_params(model, seq_len: int = 8, seed: int = 0):
  """Random params of `model.init`'s shapes, drawn with numpy from the abstract init (compiling
  `model.init`, a random draw per param, takes a second or more per config): kernels and
  embeddings ~ N(0, the config's initializer_range), as init draws them, norm scales 1, biases 0."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                   jnp.zeros((1, seq_len), jnp.int32))["params"])
  rng, std = np.random.default_rng(seed), model.config.initializer_range
  value = lambda name, s: (np.ones(s.shape) if name == "scale" else np.zeros(s.shape)
                           if name == "bias" else rng.normal(0, std, s.shape))
  return jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray(value(path[-1].key, s), np.float32), shapes)
