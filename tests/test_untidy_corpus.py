"""Real, untidy trees as corpora: symbolic-link loops, files reached twice, empty and
undecodable files among good ones, and what a run says before its first step."""

import logging
import os
import threading

import pytest

from lmjax.cli import main
from lmjax.config import load_config
from lmjax.data.sources.globs import glob_files
from lmjax.data.sources.documents import ReadStats, keep_tokenized, read_documents
from lmjax.errors import UserError
from lmjax.train.inputs import load_corpus
from tests.conftest import TINY

GOOD = "def answer():\n  return 42  # a file long enough to fill a few rows of tokens\n" * 3


@pytest.fixture
def lmjax_log(caplog):
  """caplog for the `lmjax` loggers, which stop propagating once the CLI has configured them."""
  logger = logging.getLogger("lmjax")
  propagate = logger.propagate
  logger.propagate = False  # else, before the CLI has run, caplog's root handler sees each twice
  logger.addHandler(caplog.handler)
  caplog.set_level(logging.INFO, logger="lmjax")
  yield caplog
  logger.removeHandler(caplog.handler)
  logger.propagate = propagate


def write(path, content):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
  return path


def untidy_tree(root):
  """A package tree as real ones are: good modules, an empty __init__.py, a whitespace-only
  file and one in latin-1."""
  write(root / "pkg" / "__init__.py", "")
  write(root / "pkg" / "blank.py", "  \n\t\n")
  write(root / "pkg" / "legacy.py", "# caf\u00e9\n".encode("latin-1"))
  write(root / "pkg" / "core.py", "CORE = 1\n" + GOOD)
  write(root / "tool.py", "TOOL = 2\n" + GOOD)
  return root


def read_bounded(timeout=60, **kwargs):
  """read_documents in a thread: a walk that never ends fails the test instead of hanging it."""
  result = {}
  worker = threading.Thread(target=lambda: result.update(docs=read_documents(**kwargs)),
                            daemon=True)
  worker.start()
  worker.join(timeout)
  assert not worker.is_alive(), f"reading {kwargs['paths']} did not finish in {timeout}s"
  return result["docs"]


def test_symlink_loops_under_a_recursive_glob_end_and_read_each_file_once(tmp_path):
  write(tmp_path / "a.txt", "top")
  write(tmp_path / "sub" / "b.txt", "nested")
  os.symlink(tmp_path, tmp_path / "sub" / "up")        # back to the root
  os.symlink(tmp_path / "sub", tmp_path / "sub" / "here")  # to itself: with `up`, 2^40 paths
  docs = read_bounded(source="text", paths=[str(tmp_path / "**" / "*.txt")])
  assert sorted(docs) == ["nested", "top"]
  assert read_bounded(source="text", paths=[str(tmp_path / "**")]) == docs


def test_a_file_reached_through_two_links_or_two_patterns_is_read_once(tmp_path):
  write(tmp_path / "real" / "x.txt", "only once")
  os.symlink(tmp_path / "real", tmp_path / "one")
  os.symlink(tmp_path / "real", tmp_path / "two")
  os.symlink(tmp_path / "real" / "x.txt", tmp_path / "alias.txt")
  patterns = [str(tmp_path / "**" / "*.txt"), str(tmp_path / "two" / "x.txt")]
  assert read_documents(source="text", paths=patterns) == ["only once"]


def test_recursive_globs_match_what_glob_matches_in_an_ordinary_tree(tmp_path, monkeypatch):
  import glob
  for name in ("a.txt", "b.py", ".hidden.txt", "d/c.txt", "d/e/f.txt", "d/.g/h.txt", "d/[x].txt"):
    write(tmp_path / name, "text")
  monkeypatch.chdir(tmp_path)
  for pattern in ("*.txt", "**/*.txt", "**", "d/**", "d/**/*.txt", "**/.g/*.txt", "*/**/*.txt",
                  str(tmp_path / "**" / "*.py"), "d/[[]x].txt", "a.txt"):
    expected = sorted(m for m in glob.glob(pattern, recursive=True) if os.path.isfile(m))
    assert glob_files(pattern) == expected, pattern


def test_empty_and_undecodable_files_in_a_glob_are_skipped_and_reported_once(tmp_path,
                                                                             lmjax_log):
  root = untidy_tree(tmp_path / "tree")
  config = load_config("tiny-gpt", TINY + ["data.source=text", f"data.paths=[{root}/**/*.py]",
                                           "data.bad_records=skip"])
  corpus = load_corpus(config)
  assert corpus.skipped_records == 3
  warnings = [r.getMessage() for r in lmjax_log.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  assert warnings[0].startswith("skipped 3 empty or unusable file(s): ")
  for name in ("__init__.py (empty)", "blank.py (empty)", "legacy.py (not UTF-8"):
    assert name in warnings[0]
  text = corpus.tokenizer.decode(corpus.train.take(range(len(corpus.train)))["input_ids"]
                                 .reshape(-1).tolist())
  assert "CORE = 1" in text


def test_empty_files_in_a_glob_are_skipped_but_bad_bytes_still_stop_by_default(tmp_path):
  root = untidy_tree(tmp_path / "tree")
  stats = ReadStats()
  docs = read_documents(source="text", paths=[str(root / "**" / "core.py"),
                                               str(root / "pkg" / "_*.py")], stats=stats)
  assert docs == ["CORE = 1\n" + GOOD]
  assert stats.skipped_files == [f"{root}/pkg/__init__.py (empty)"]
  with pytest.raises(UserError, match=r"legacy.py' is not valid UTF-8.*data.bad_records: skip"):
    read_documents(source="text", paths=[str(root / "**" / "*.py")])
  with pytest.raises(UserError, match=r"__init__.py' is empty"):  # named, not globbed
    read_documents(source="text", paths=[str(root / "pkg" / "__init__.py")])


def test_a_tree_of_only_empty_files_is_an_error_naming_the_fix(tmp_path):
  write(tmp_path / "a" / "__init__.py", "")
  write(tmp_path / "b" / "__init__.py", "\n\n")
  with pytest.raises(UserError) as info:
    read_documents(source="text", paths=[str(tmp_path / "**" / "*.py")], bad_records="skip")
  message = str(info.value)
  assert "no usable text" in message and "a/__init__.py (empty)" in message
  assert "Point `data.paths` at files that hold text" in message


def test_documents_of_no_tokens_are_left_out_and_counted():
  stats = ReadStats()
  assert keep_tokenized("f.py", [[], [5]], source="text", stats=stats) == [[5]]
  assert keep_tokenized("g.jsonl", [[], [7], []], source="jsonl", stats=stats) == [[7]]
  assert stats.skipped_files == ["f.py (no tokens)"] and stats.skipped == 2
  assert stats.total == 3


def test_a_run_says_what_it_reads_trains_and_packs_before_its_first_step(tmp_path, lmjax_log):
  root = untidy_tree(tmp_path / "tree")
  overrides = [o for o in TINY if not o.startswith("data.tokenizer")]
  load_corpus(load_config("tiny-gpt", overrides + [
      "data.source=text", f"data.paths=[{root}/**/*.py]", "data.bad_records=skip",
      "data.tokenizer=bpe"]))
  infos = [r.getMessage() for r in lmjax_log.records if r.levelno == logging.INFO]
  assert any(m.startswith("reading 5 file(s), 0.0 MB from data.paths") for m in infos), infos
  assert any(m.startswith("training a BPE tokenizer of up to 288 tokens on 2 documents")
             for m in infos), infos
  assert any(m.startswith("kept 2 documents (") and "to train on" in m for m in infos), infos
  assert len(infos) <= 4


def test_training_on_an_untidy_tree_through_the_cli(tmp_path, capsys):
  root = untidy_tree(tmp_path / "tree")
  (root / "pkg" / "legacy.py").unlink()  # under the default data.bad_records: error
  code = main(["train", "tiny-gpt", "--run-dir", str(tmp_path / "run"), "--set", *TINY,
               "data.source=text", f"data.paths=[{root}/**/*.py]", "train.steps=2",
               "train.log_every=1", "train.eval_every=0"])
  err = capsys.readouterr().err
  assert code == 0, err
  assert "lmjax: reading 4 file(s)" in err
  assert "lmjax: skipped 2 empty or unusable file(s)" in err


def test_a_labelled_glob_leaves_out_empty_files(tmp_path):
  from lmjax.data.examples.labelled import Fields, read_examples
  (tmp_path / "a.jsonl").write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n')
  (tmp_path / "b.jsonl").write_text("")
  stats = ReadStats()
  examples = read_examples("jsonl", [str(tmp_path / "*.jsonl")], fields=Fields(), stats=stats)
  assert examples.texts == ["good", "bad"]
  assert stats.skipped_files == [f"{tmp_path / 'b.jsonl'} (empty)"]
  with pytest.raises(UserError, match="empty"):  # named explicitly, it is still a mistake
    read_examples("jsonl", [str(tmp_path / "b.jsonl")], fields=Fields())
