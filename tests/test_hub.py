"""Hub ids (`org/name[@revision]`) read from a local Hugging Face cache that the test fills in
the layout `huggingface_hub` writes (refs/<branch> naming a snapshot directory); offline."""

import json
import re

import numpy as np
import pytest

huggingface_hub = pytest.importorskip("huggingface_hub")
pytest.importorskip("transformers")

import lmjax  # noqa: E402
from lmjax.cli import main  # noqa: E402
from lmjax.config import load_config  # noqa: E402
from lmjax.errors import UserError  # noqa: E402
from lmjax.hf.hub import resolve_hf_dir  # noqa: E402
from tests.hf_models import HF_CASES, randomise  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TAGGED = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
  """A cache holding org/tiny-llama at `main` and at tag v2 (another snapshot)."""
  import transformers

  from lmjax.data.sources.documents import builtin_corpus
  from lmjax.data.tokenize.tokenizer import Tokenizer
  tokenizer = Tokenizer.train_bpe(builtin_corpus()[:10], vocab_size=300)
  config = transformers.LlamaConfig(**{**HF_CASES["llama"][2], "vocab_size": 300})
  cache = tmp_path / "hub"
  repo = cache / "models--org--tiny-llama"
  for commit, seed, ref in ((COMMIT, 0, "main"), (TAGGED, 1, "v2")):
    snapshot = repo / "snapshots" / commit
    randomise(transformers.LlamaForCausalLM(config), seed).save_pretrained(snapshot)
    tokenizer.save(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  return repo


def test_a_hub_id_is_its_cached_snapshot_at_a_branch_tag_or_commit(hub_cache, tmp_path):
  snapshots = hub_cache / "snapshots"
  assert resolve_hf_dir("org/tiny-llama") == str(snapshots / COMMIT)
  assert resolve_hf_dir("org/tiny-llama@v2") == str(snapshots / TAGGED)
  assert resolve_hf_dir(f"org/tiny-llama@{TAGGED}") == str(snapshots / TAGGED)
  _, by_id = lmjax.from_hf("org/tiny-llama@v2")
  _, by_dir = lmjax.from_hf(snapshots / TAGGED)
  for a, b in zip(jax_leaves(by_id), jax_leaves(by_dir)):
    np.testing.assert_array_equal(a, b)
  (tmp_path / "org").mkdir()  # an existing path is a path, even when it looks like an id
  (tmp_path / "org" / "x").mkdir()
  assert resolve_hf_dir(str(tmp_path / "org" / "x")) == str(tmp_path / "org" / "x")


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_commands_and_init_from_take_hub_ids(hub_cache, tmp_path, capsys):
  config = load_config("tiny-llama", ["model.init_from=org/tiny-llama", "data.tokenizer=byte",
                                       "train.seq_len=32"])
  assert config.init_from == str(hub_cache / "snapshots" / COMMIT)
  assert config.model.embed_dim == 48  # the cached model's architecture
  assert main(["convert", "hf-to-lmjax", "org/tiny-llama", str(tmp_path / "run")]) == 0
  (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "hello there"}) + "\n")
  assert main(["score", str(tmp_path / "docs.jsonl"), "--hf", "org/tiny-llama"]) == 0
  by_id = json.loads(capsys.readouterr().out.splitlines()[-1])
  assert main(["score", str(tmp_path / "docs.jsonl"), "--run-dir", str(tmp_path / "run")]) == 0
  assert json.loads(capsys.readouterr().out.splitlines()[-1]) == pytest.approx(by_id)
  assert main(["convert", "verify", "org/tiny-llama", str(tmp_path / "run")]) == 0


def test_a_model_missing_from_the_cache_says_how_to_fetch_it(hub_cache, tmp_path, capsys):
  with pytest.raises(UserError, match="hf download org/other --revision v3"):
    resolve_hf_dir("org/other@v3")
  with pytest.raises(UserError, match="org/tiny-llama@v9"):
    resolve_hf_dir("org/tiny-llama@v9")
  (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
  assert main(["score", str(tmp_path / "docs.jsonl"), "--hf", "org/absent"]) == 2
  err = capsys.readouterr().err
  assert "neither a directory nor a model in the local Hugging Face cache" in err
  assert "hf download org/absent" in err and "Traceback" not in err
  assert main(["convert", "hf-to-lmjax", "org/absent", str(tmp_path / "run")]) == 2
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("revision", ["../../x", "main/../..", "a//b"])
def test_a_revision_that_would_leave_the_cache_is_refused(revision):
  with pytest.raises(UserError, match=f"revision '{re.escape(revision)}' is not a branch, tag or "
                                      f"commit name"):
    resolve_hf_dir(f"org/name@{revision}")


def test_a_revision_naming_a_folder_of_refs_is_explained_not_a_path_error(tmp_path, monkeypatch):
  """refs/pr/1 makes `@pr` a directory in the cache: it names no branch, tag or commit."""
  repo = tmp_path / "models--org--tiny"
  (repo / "refs" / "pr").mkdir(parents=True)
  (repo / "refs" / "pr" / "1").write_text(COMMIT)
  (repo / "snapshots" / COMMIT).mkdir(parents=True)
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  assert resolve_hf_dir("org/tiny@pr/1") == str(repo / "snapshots" / COMMIT)
  with pytest.raises(UserError, match=r"--hf 'org/tiny@pr': revision 'pr' is a group of refs in "
                                      r"the cache, not a branch, tag or commit: name one of them, "
                                      r"e.g. org/tiny@pr/1"):
    resolve_hf_dir("org/tiny@pr")
