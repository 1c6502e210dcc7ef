"""The `lmjax` command as a user runs it: outputs, exit codes and the messages for mistakes."""

import json
import math
import os
import subprocess
import sys

import pytest

from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.run import RunDir
from tests.helpers import run_cli, tree_digest


@pytest.fixture(scope="module")
def trained_bert(tmp_path_factory):
  from lmjax.config import load_config
  from lmjax.train.loop import train
  from tests.conftest import TINY
  run_dir = tmp_path_factory.mktemp("bert")
  train(load_config("tiny-bert", TINY + ["train.steps=10"]), run_dir)
  return run_dir


def test_generate_prints_the_prompt_and_its_continuation(trained_gpt, capsys):
  code, out, _ = run_cli(capsys, "generate", "--run-dir", str(trained_gpt), "--prompt", "The",
                         "--max-new-tokens", "12", "--temperature", "0", "--no-stream")
  assert code == 0 and out.startswith("The") and len(out.rstrip("\n")) > len("The")
  assert "---" not in out  # one text: no header


def test_generate_heads_each_of_several_texts_with_its_prompt_and_sequence(trained_gpt, capsys):
  code, out, _ = run_cli(capsys, "generate", "--run-dir", str(trained_gpt), "--prompt", "The",
                         "--prompt", "In Python", "--max-new-tokens", "12",
                         "--num-return-sequences", "2")
  assert code == 0
  headers = [line for line in out.splitlines() if line.startswith("--- prompt")]
  assert headers == ["--- prompt 1/2, sequence 1/2 ---", "--- prompt 1/2, sequence 2/2 ---",
                     "--- prompt 2/2, sequence 1/2 ---", "--- prompt 2/2, sequence 2/2 ---"]
  texts = [block.split("\n", 1)[1] for block in out.split("--- prompt")[1:]]
  assert [t[:3] for t in texts] == ["The", "The", "In ", "In "]


def test_set_before_config_leaves_the_config_to_the_command(capsys):
  from lmjax.cli.parser import parse
  args = parse(["train", "--set", "train.steps=3", "model.num_layers=1", "tiny-gpt",
                "--compile-only"])
  assert args.config == "tiny-gpt" and args.overrides == ["train.steps=3", "model.num_layers=1"]
  args = parse(["eval", "--set", "train.steps=3", "tiny-gpt", "--run-dir", "r", "--set", "a=1"])
  assert args.config == "tiny-gpt" and args.overrides == ["train.steps=3", "a=1"]
  with pytest.raises(SystemExit) as exit_:
    parse(["train", "--set", "train.steps=3"])
  assert exit_.value.code == 2 and "required: CONFIG" in capsys.readouterr().err


def test_eval_prints_the_held_out_loss(trained_gpt, capsys, tiny):
  code, out, _ = run_cli(capsys, "eval", "tiny-gpt", "--run-dir", str(trained_gpt), "--set",
                         *tiny, "train.steps=10")
  assert code == 0
  result = json.loads(out)
  assert result["step"] == 10 and result["eval_loss"] > 0
  assert result["eval_perplexity"] == pytest.approx(math.exp(result["eval_loss"]))


def test_eval_data_scores_a_runs_perplexity_on_a_text_file(trained_gpt, capsys, tmp_path):
  text = "def f(x):\n    return x  # a comment, and naïve bytes: ✓\n" * 3
  (tmp_path / "code.txt").write_text(text)
  code, out, err = run_cli(capsys, "eval", "--run-dir", str(trained_gpt), "--data",
                           str(tmp_path / "code.txt"), "--stride", "16")
  assert code == 0, err
  report = json.loads(out)
  num_bytes = len(text.encode())
  # the byte tokenizer: one token per byte, each predicted once (after BOS) or all but the first
  tokenizer = Tokenizer.load(RunDir(trained_gpt).tokenizer_dir)
  assert report["tokens"] == num_bytes - (tokenizer.bos_id is None and tokenizer.eos_id is None)
  assert report["bytes"] == num_bytes and report["documents"] == 1 and report["stride"] == 16
  assert report["bits_per_byte"] == pytest.approx(
      report["loss"] * report["tokens"] / (math.log(2) * num_bytes))


def test_fill_mask_answers_with_a_trained_bert(trained_bert, capsys):
  code, out, _ = run_cli(capsys, "fill-mask", "--run-dir", str(trained_bert), "--text",
                         "The [MASK] statement", "--top-k", "3")
  assert code == 0
  assert out.startswith("mask 1:") and len(out.strip().splitlines()) == 4


def test_fill_mask_prints_one_block_per_text(trained_bert, capsys):
  code, out, _ = run_cli(capsys, "fill-mask", "--run-dir", str(trained_bert), "--text",
                         "The [MASK] statement", "--text", "An [MASK] is [MASK].", "--top-k", "2")
  assert code == 0
  first, second = out.split("\n\n")
  assert first.splitlines() == ["text 1: 'The [MASK] statement'", "mask 1:", *first.splitlines()[2:]]
  assert len(first.splitlines()) == 2 + 2
  assert second.splitlines()[0] == "text 2: 'An [MASK] is [MASK].'"
  assert [line for line in second.splitlines() if line.startswith("mask")] == ["mask 1:", "mask 2:"]


def test_generate_on_a_masked_lm_names_the_fill_mask_command(trained_bert, capsys):
  code, _, err = run_cli(capsys, "generate", "--run-dir", str(trained_bert), "--prompt", "The")
  assert code == 2 and "use `lmjax fill-mask`" in err and "fill_mask for" not in err


def test_importing_a_model_without_a_tokenizer_says_what_will_need_one(trained_gpt, tmp_path,
                                                                        capsys):
  hf_dir = tmp_path / "hf"
  assert run_cli(capsys, "convert", "lmjax-to-hf", trained_gpt, hf_dir)[0] == 0
  for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    (hf_dir / name).unlink(missing_ok=True)
  code, out, err = run_cli(capsys, "convert", "hf-to-lmjax", hf_dir, tmp_path / "run")
  assert code == 0 and out.startswith("imported")
  assert f"{hf_dir} has no tokenizer files" in err
  assert f"Copy the model's tokenizer files into {tmp_path / 'run'}/tokenizer/" in err
  code, _, err = run_cli(capsys, "generate", "--run-dir", tmp_path / "run", "--prompt", "The")
  assert code == 2 and "No tokenizer file" in err


def test_the_python_api_reaches_loading_completion_and_scoring(trained_gpt):
  import lmjax
  m = lmjax.load(trained_gpt)
  assert m.tokenizer is not None
  settings = lmjax.resolve_settings({"max_new_tokens": 6, "temperature": 0}, m)
  (result,) = lmjax.complete(m, ["The"], settings)
  assert result.prompt == "The" and len(result.completions) == 1
  (scored,) = lmjax.score_texts(m.model, m.params, m.tokenizer, ["The return statement."])
  assert scored.tokens > 0 and scored.log_likelihood < 0
  for name in lmjax.__all__:
    assert getattr(lmjax, name) is not None


def bad_file(tmp_path, name, content: bytes):
  path = tmp_path / name
  path.write_bytes(content)
  return str(path)


@pytest.mark.parametrize("make_overrides, expected", [
    (lambda d: ["data.source=text", f"data.paths=[{d}/missing.txt]"], "missing.txt"),
    (lambda d: ["data.source=text", f"data.paths=[{bad_file(d, 'empty.txt', b'')}]"], "empty.txt"),
    (lambda d: ["data.source=text", f"data.paths=[{bad_file(d, 'latin1.txt', b'caf' + bytes([0xE9]) * 50)}]"],
     "data.encoding_errors"),
    (lambda d: ["model.vocab_size=200"], "raise model.vocab_size to at least"),
    (lambda d: ["train.seq_len=100"], "train.seq_len=100 is longer than the model's positions"),
    (lambda d: ["model.num_heads=5"], "does not divide model.embed_dim=32"),
    (lambda d: ["train.stepz=5"], "did you mean train.steps?"),
    (lambda d: ["train.batch_size=many"], "train.batch_size must be an integer"),
])
def test_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path, capsys, tiny,
                                                             make_overrides, expected):
  run_dir = tmp_path / "run"
  code, out, err = run_cli(capsys, "train", "tiny-gpt", "--run-dir", str(run_dir), "--set",
                           *tiny, *make_overrides(tmp_path))
  assert code == 2
  assert expected in err and "Traceback" not in err
  assert not run_dir.exists()


def test_a_failed_restart_leaves_the_run_directory_untouched(trained_gpt, capsys, tiny):
  before = tree_digest(trained_gpt)
  for overrides in (["model.embed_dim=64"], ["data.source=jsonl", "data.paths=[nowhere.jsonl]"]):
    code, _, err = run_cli(capsys, "train", "tiny-gpt", "--run-dir", str(trained_gpt), "--set",
                           *tiny, *overrides)
    assert code == 2 and "error" in err
  assert tree_digest(trained_gpt) == before


def test_the_console_script_reports_mistakes_without_a_traceback(tmp_path):
  result = subprocess.run([sys.executable, "-m", "lmjax", "train", "tiny-gpt", "--run-dir",
                           str(tmp_path / "r"), "--set", "model.embed_dimm=3"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert "did you mean model.embed_dim?" in result.stderr and "Traceback" not in result.stderr


def test_tokenizer_train_writes_a_tokenizer_that_training_then_uses(tmp_path, capsys, tiny):
  out = tmp_path / "tok"
  code, text, _ = run_cli(capsys, "tokenizer", "train", "tiny-gpt", "--out", str(out),
                          "--vocab-size", "300")
  assert code == 0 and f"data.tokenizer={out}" in text
  from lmjax.data.tokenize.tokenizer import Tokenizer
  assert Tokenizer.load(out).vocab_size <= 300
  overrides = [o for o in tiny if not o.startswith("data.tokenizer")]
  code, _, err = run_cli(capsys, "train", "tiny-gpt", "--run-dir", str(tmp_path / "run"), "--set",
                         *overrides, f"data.tokenizer={out}", "model.vocab_size=300",
                         "train.steps=2")
  assert code == 0, err
  assert Tokenizer.load(tmp_path / "run" / "tokenizer").encode("def") == Tokenizer.load(out).encode("def")
  assert run_cli(capsys, "tokenizer", "train", "tiny-gpt", "--out", str(out))[0] == 2  # not empty
  # A run that fails (no text to learn from) leaves no directory, not even a half one.
  (tmp_path / "empty.txt").write_text("")
  code, _, err = run_cli(capsys, "tokenizer", "train", "tiny-gpt", "--out", str(tmp_path / "t2"),
                         "--set", "data.source=text", f"data.paths=[{tmp_path / 'empty.txt'}]")
  assert code == 2 and "is empty" in err, err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "run", "tok"]
  from lmjax.lock import DirectoryLock
  with DirectoryLock(tmp_path / "t3"):  # another writer's
    code, _, err = run_cli(capsys, "tokenizer", "train", "tiny-gpt", "--out", str(tmp_path / "t3"))
  assert code == 2 and "is in use by another lmjax process" in err, err


@pytest.mark.parametrize("argv, flag", [
    (["train", "tiny-gpt", "--set", "data.source=tfds", "data.paths=[mnist]",
      "data.data_dir=s3://bucket/tfds"], "data.data_dir s3://bucket/tfds"),
    (["eval-harness", "--run-dir", "run", "--tasks", "mine", "--include-path",
      "s3://bucket/tasks"], "--include-path s3://bucket/tasks"),
    (["data", "prepare", "tiny-gpt", "gs://bucket/prepared"], "OUT_DIR gs://bucket/prepared"),
])
def test_a_bucket_url_where_only_local_paths_are_read_is_refused_with_how_to_mount_it(
    tmp_path, capsys, monkeypatch, argv, flag):
  """Run directories, HF directories, data.paths, model.init_from, plot --out and the input and
  output files of generate, score, predict and eval-harness may be on a bucket
  (test_object_storage); these paths are local only, for now."""
  monkeypatch.chdir(tmp_path)
  code, _, err = run_cli(capsys, *argv)
  assert code == 2 and f"error: {flag}: " in err, err
  assert "mount the bucket" in err
  assert not any(tmp_path.iterdir())  # no folder named `gs:` or `s3:`, no run directory


def test_a_path_the_system_cannot_create_is_a_user_error_not_a_full_disk(capsys, tiny):
  """Exit 4 says the storage refused a write (full, read-only, forbidden); a path that cannot
  exist (here under /proc) is the user's to change: exit 2, with what the system said."""
  code, _, err = run_cli(capsys, "tokenizer", "train", "tiny-gpt", "--out",
                         "/proc/lmjax-tokenizer", "--set", *tiny)
  assert code == 2, err
  assert "No such file or directory" in err and "Free disk space" not in err


@pytest.mark.parametrize("argv, message", [
    (["generate", "--run-dir", "nowhere", "--input", "{special}"], "JSON object per line"),
    (["score", "{special}", "--run-dir", "nowhere"], ""),
    (["train", "{special}"], "not a YAML file"),
    (["train", "tiny-gpt", "--run-dir", "{tmp}/run", "--set", "data.source=text",
      "data.paths=[{special}]"], "`data.paths` names"),
])
@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_a_fifo_or_device_as_input_is_named_as_such_never_read(tmp_path, capsys, tiny, argv,
                                                                message, special):
  """A FIFO would block the read until someone writes, /dev/zero would fill the memory: both
  are refused by what they are (not "no such file"), with exit 2 and nothing written."""
  if special == "fifo":
    special = str(tmp_path / "fifo")
    os.mkfifo(special)
  argv = [a.format(special=special, tmp=tmp_path) for a in argv]
  if argv[0] == "train" and len(argv) > 2:
    argv[-2:-2] = tiny
  code, _, err = run_cli(capsys, *argv)
  kind = "a FIFO (named pipe)" if special.endswith("fifo") else "a character device"
  assert code == 2 and f"is {kind}, not a" in err and message in err, err
  assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_a_run_whose_params_cannot_fit_is_refused_before_its_checkpoint_is_read(
    trained_gpt, tmp_path, capsys):
  import shutil
  import yaml
  run = tmp_path / "run"
  shutil.copytree(trained_gpt, run)
  config = yaml.safe_load((run / "config.yaml").read_text())
  config["model"]["embed_dim"] = 10**8  # as if config.yaml said so
  (run / "config.yaml").write_text(yaml.safe_dump(config))
  code, _, err = run_cli(capsys, "generate", "--run-dir", run, "--prompt", "The")
  assert code == 2 and "Traceback" not in err, err
  assert f"loading the params of {run} needs at least" in err and "iB per device" in err
