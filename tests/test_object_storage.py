"""Run directories, data and exports on object storage, against real servers (GCS and S3).

The server is `gcp-storage-emulator` (through tests/gcs_emulator.py, which adds the generation
headers real GCS sends), started on a free port for this module and stopped after it; gcsfs
finds it through STORAGE_EMULATOR_HOST, tensorstore (Orbax's array writes) through
TENSORSTORE_GCS_HTTP_URL. The dress rehearsal trains a run whose data
and run directory are on the bucket, kills it (-9) in a child process after a checkpoint,
resumes it here, and compares it with an uninterrupted run; the export goes to the bucket and
comes back, and a LoRA fine-tune starts from it there (model.init_from) and sends its PEFT
adapter there and back; plot, generate and score write their files there, a tokenizer trains
into it, and a TFDS array_record dataset is read from it. On S3 (moto's server; tensorstore
writes the checkpoints, through lmjax.run.orbax_buckets), a run that resumes past a torn step,
its export and import back, and the lock's conditional create. The rest is what a wrong remote
path says.
"""

import json
import sys
import time

import jax
import numpy as np
import pytest

import lmjax
from lmjax import storage  # before gcsfs: it sets what gcsfs reads on import
from lmjax.cli import main
from lmjax.errors import UserError
from lmjax.data.examples.labelled import Fields, read_examples
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.infer.predict import write_predictions
from lmjax.lock import LOCK_FILE, DirectoryLock, DirectoryLocked
from lmjax.run import orbax_buckets
from lmjax.run.checkpointer import Checkpointer
from tests.conftest import TINY
from tests.gcs_emulator import BUCKET, client_env, emulator, serving
from tests.helpers import assert_resumed_as_uninterrupted, rows, run_cli
from tests.processes import ROOT, children, cpu_env, free_port

gcsfs = pytest.importorskip("gcsfs")  # the test extra brings these
pytest.importorskip("gcp_storage_emulator")

RUN = TINY + ["train.log_every=1", "train.checkpoint_every=6", "train.eval_every=0",
              "train.steps=12", "data.source=text"]
DATA = ("README.md", "lmjax/storage.py")  # the data: some of this repository's text


def data_paths(where: str) -> str:
  return f"data.paths=[{where}/*.md]"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The emulator's URL, with the environment pointing every client at it; stopped after."""
  with emulator(tmp_path_factory.mktemp("gcs")) as url:
    yield url


def gs(path: str) -> str:
  return f"gs://{BUCKET}/{path}"


def remote_rows(run_dir: str) -> list[dict]:
  return [json.loads(line) for line in
          storage.as_path(run_dir + "/metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def rehearsal(gcs, tmp_path_factory):
  """(a run on the bucket, its data on the bucket too, killed with -9 in a child process after
  its first checkpoint and resumed here; the same run trained locally without interruption)."""
  local = tmp_path_factory.mktemp("rehearsal")
  for i, name in enumerate(DATA):
    content = (ROOT / name).read_bytes()
    (local / f"{i}.md").write_bytes(content)
    storage.as_path(gs(f"data/{i}.md")).write_bytes(content)
  killed = gs("killed")
  run = ["tiny-gpt", "--run-dir", killed, "--set", *RUN, data_paths(gs("data"))]
  with children(local) as group:
    env = cpu_env(1, **client_env(gcs))
    group.start("killed", ["-m", "lmjax", "train", *run], env)
    checkpoint = storage.as_path(killed + "/checkpoints/6/commit_success.txt")
    deadline = time.monotonic() + 120
    while not checkpoint.exists():  # a committed step, then a kill on the way to the next
      assert group.procs["killed"].poll() is None, group.log("killed")
      assert time.monotonic() < deadline, group.log("killed")
      time.sleep(0.1)
    group.procs["killed"].kill()
    group.procs.pop("killed").wait(timeout=30)
  assert storage.as_path(f"{killed}/{LOCK_FILE}").exists()  # -9: nothing removed it
  assert main(["train", *run]) == 0
  whole = local / "whole"
  assert main(["train", "tiny-gpt", "--run-dir", str(whole), "--set", *RUN,
               data_paths(local)]) == 0
  return killed, whole


def test_resume_after_kill_9_on_gcs_matches_an_uninterrupted_run(rehearsal):
  killed, whole = rehearsal
  assert not storage.as_path(f"{killed}/{LOCK_FILE}").exists()
  assert_resumed_as_uninterrupted(whole, killed, rows(whole), remote_rows(killed), 12)
  for name in ("config.yaml", "tokenizer/tokenizer.json", "checkpoint_sizes.json"):
    assert storage.as_path(f"{killed}/{name}").is_file(), name
  assert storage.as_path(f"{killed}/tensorboard").is_dir()


@pytest.fixture(scope="module")
def hf_on_gcs(rehearsal):
  """The rehearsal's run exported to an HF directory on the bucket."""
  assert main(["convert", "lmjax-to-hf", rehearsal[0], gs("hf")]) == 0
  return gs("hf")


def logits_of(source) -> np.ndarray:
  m = lmjax.load(source)
  ids = np.arange(1, 17, dtype=np.int32)[None]  # [batch 1, seq 16]
  return np.asarray(m.model.apply({"params": m.params}, ids))


def test_export_to_gcs_and_import_back_keeps_the_logits(rehearsal, hf_on_gcs, capsys):
  killed, whole = rehearsal
  assert storage.as_path(gs("hf/model.safetensors")).is_file()
  assert run_cli(capsys, "convert", "hf-to-lmjax", gs("hf"), gs("back"))[0] == 0
  code, out, err = run_cli(capsys, "generate", "--run-dir", gs("back"), "--prompt", "The",
                           "--max-new-tokens", "4", "--temperature", "0")
  assert code == 0 and "Traceback" not in err, err
  code, listing, _ = run_cli(capsys, "checkpoints", killed)
  assert code == 0 and "complete" in listing, listing
  np.testing.assert_allclose(logits_of(gs("back")), logits_of(whole), atol=1e-5, rtol=1e-5)
  code, out, err = run_cli(capsys, "convert", "verify", hf_on_gcs, killed)
  assert code == 0 and "top-1 agree:  100.00%" in out, err


def test_a_lora_fine_tune_from_an_hf_dir_on_gcs_exports_its_adapter_there_and_back(
    rehearsal, hf_on_gcs, capsys):
  """model.init_from on the bucket (the base named and hashed there), a PEFT adapter written to
  it and read back from it: the imported model has the fine-tuned logits."""
  lora = gs("lora")
  code, _, err = run_cli(capsys, "train", "tiny-gpt", "--run-dir", lora, "--set", *RUN,
                         data_paths(gs("data")), "train.steps=2", "train.warmup_steps=0",
                         "train.learning_rate=0.05", f"model.init_from={hf_on_gcs}",
                         "model.lora.rank=4")
  assert code == 0 and f"the base is {hf_on_gcs} (sha256" in err, err
  assert run_cli(capsys, "convert", "lmjax-to-peft", lora, gs("peft"))[0] == 0
  assert storage.as_path(gs("peft/adapter_model.safetensors")).is_file()
  code, _, err = run_cli(capsys, "convert", "hf-to-lmjax", hf_on_gcs, gs("with-peft"),
                         "--adapter", gs("peft"))
  assert code == 0, err
  tuned = logits_of(lora)
  assert np.abs(tuned - logits_of(hf_on_gcs)).max() > 1e-3  # the adapters moved
  np.testing.assert_allclose(logits_of(gs("with-peft")), tuned, atol=1e-5, rtol=1e-5)


def test_init_from_a_run_directory_on_gcs_reads_its_weights(rehearsal):
  """What `model.init_from=gs://…/run` reads: the config's model from the run's config.yaml,
  the weights from its newest checkpoint, through the bucket."""
  from lmjax.config import load_config
  from lmjax.run.loader import load_source
  killed, _ = rehearsal
  config = load_config("tiny-gpt", [*TINY, f"model.init_from={killed}"])
  params, step = load_source(config.init_from, config.model)
  assert config.init_from == killed and step == 12
  _, expected = lmjax.load_run(killed)
  jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(expected))


def test_eval_and_plot_read_a_run_and_documents_on_gcs(rehearsal, capsys, tmp_path):
  killed, _ = rehearsal
  code, out, err = run_cli(capsys, "eval", "--run-dir", killed, "--data", gs("data/1.md"),
                           "--stride", "32")
  assert code == 0, err
  assert json.loads(out)["bytes"] == len((ROOT / DATA[1]).read_bytes())
  pytest.importorskip("matplotlib")
  code, _, err = run_cli(capsys, "plot", killed, "--out", tmp_path / "curves.png")
  assert code == 0 and (tmp_path / "curves.png").stat().st_size > 0, err
  curves = gs("plots/curves.png")  # the figure to the bucket: one upload of the same PNG
  code, out, err = run_cli(capsys, "plot", killed, "--out", curves)
  assert code == 0 and out.strip() == f"wrote {curves}", err
  assert storage.read_bytes(curves) == (tmp_path / "curves.png").read_bytes()
  code, _, err = run_cli(capsys, "plot", killed, "--out", curves)
  assert code == 2 and f"--out {curves} exists" in err, err


def test_generate_and_score_read_and_write_their_files_on_buckets(rehearsal, s3, capsys,
                                                                  tmp_path):
  """Prompts read from gs://, completions written to s3:// (once, at the end) as they are
  written locally; an output that exists is refused there too; score's records and predict's
  predictions likewise."""
  killed, _ = rehearsal
  prompts = gs("prompts.jsonl")
  storage.as_path(prompts).write_text('{"prompt": "The"}\n{"prompt": "A cat"}\n')
  generate = ["generate", "--run-dir", killed, "--input", prompts, "--max-new-tokens", "3",
              "--temperature", "0", "--output"]
  completions = f"{s3}/completions.jsonl"
  code, out, err = run_cli(capsys, *generate, completions)
  assert code == 0 and f"wrote 2 prompts' completions to {completions}" in out, err
  assert run_cli(capsys, *generate, tmp_path / "completions.jsonl")[0] == 0
  written = storage.as_path(completions).read_text()
  assert written == (tmp_path / "completions.jsonl").read_text()
  assert [json.loads(line)["prompt"] for line in written.splitlines()] == ["The", "A cat"]
  code, _, err = run_cli(capsys, *generate, completions)
  assert code == 2 and f"--output {completions} already exists" in err, err
  scores = gs("scores.jsonl")
  code, _, err = run_cli(capsys, "score", prompts, "--run-dir", killed, "--field", "prompt",
                         "--output", scores)
  assert code == 0 and "2 documents" in err, err
  records = [json.loads(line) for line in storage.as_path(scores).read_text().splitlines()]
  assert [r["prompt"] for r in records] == ["The", "A cat"] and "loss" in records[1], records
  inputs = read_examples("jsonl", [prompts], fields=Fields(text="prompt", labels_required=False))
  assert inputs.texts == ["The", "A cat"]  # what `predict --input` reads, through the same reader
  # What `predict --output` writes (and eval-harness's --output, through the same two helpers).
  predictions = f"{s3}/predictions.jsonl"
  labelled = [{"text": "The", "label": "pos", "expected": "pos"}, {"text": "A cat", "label": "neg"}]
  assert write_predictions(iter(labelled), predictions) == {"records": 2, "labelled": 1,
                                                        "accuracy": 1.0}
  assert [json.loads(line) for line in storage.as_path(predictions).read_text().splitlines()] \
      == labelled
  with pytest.raises(UserError, match=f"--output {predictions} already exists"):
    write_predictions(iter(labelled), predictions)


def test_a_tokenizer_trained_on_gcs_data_is_written_to_the_bucket(rehearsal, capsys):
  out = gs("tokenizer")
  code, _, err = run_cli(capsys, "tokenizer", "train", "tiny-gpt", "--out", out,
                         "--vocab-size", "300", "--set", "data.source=text",
                         data_paths(gs("data")))
  assert code == 0, err
  assert sorted(p.name for p in storage.as_path(out).iterdir()) == [
      "tokenizer.json", "tokenizer_config.json"]  # and no lock left
  assert Tokenizer.load(out).vocab_size == 300


def test_a_tfds_dataset_prepared_locally_reads_the_same_from_gcs_without_tensorflow(
    gcs, tmp_path, monkeypatch):
  """array_record's own GCS client reads the shards; lmjax points it at the emulator gcsfs
  uses (without that, it retried the GCE metadata server for minutes)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from lmjax.data.config import DataConfig
  from lmjax.data.sources.documents import iter_sources
  from tests.tfds_tiny import TRAIN_TEXTS, LmjaxTinyText
  local = tmp_path / "tfds"
  LmjaxTinyText(data_dir=str(local), file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=2))
  storage.filesystem(gs("")).put(f"{local}/", f"{BUCKET}/tfds/", recursive=True)
  monkeypatch.setenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", "")  # lmjax sets it: removed after
  monkeypatch.delenv("CLOUD_STORAGE_EMULATOR_ENDPOINT")
  read = lambda data_dir: list(iter_sources(DataConfig(  # the config checks data_dir too
      source="tfds", paths=("lmjax_tiny_text:1.0.0",), split="train", data_dir=data_dir)))
  documents = read(gs("tfds"))
  assert documents == read(str(local)) and sorted(documents) == sorted(TRAIN_TEXTS)


def test_a_tfds_data_dir_on_gcs_without_credentials_is_one_message_not_a_hang(
    tmp_path, monkeypatch):
  from lmjax.data.sources import tfds as tfds_source
  for name in ("CLOUD_STORAGE_EMULATOR_ENDPOINT", "STORAGE_EMULATOR_HOST",
               "GOOGLE_APPLICATION_CREDENTIALS"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud credentials file
  monkeypatch.setenv("NO_GCE_CHECK", "true")  # not on GCE: no metadata server
  with pytest.raises(UserError,
                     match="finds no credentials here .* `gcloud auth application-default login`"):
    tfds_source._gcs_reader_ready("some_dataset", "gs://bucket/tfds")


def test_a_step_without_its_commit_marker_is_never_resumed_from(rehearsal, capsys):
  """On gs:// Orbax writes a step in place and commits it with commit_success.txt: a step a
  kill tore (here: one written without the marker) is listed as unfinished and skipped."""
  killed, _ = rehearsal
  torn = storage.as_path(f"{killed}/checkpoints/99")
  (torn / "state" / "_METADATA").write_text("{}")
  try:
    checkpointer = Checkpointer(f"{killed}/checkpoints", keep=3)
    assert [p.name for p in checkpointer.unfinished_writes()] == ["99"]
    assert checkpointer.latest_step() == 12
    checkpointer.close()
    code, listing, err = run_cli(capsys, "checkpoints", killed)
    assert code == 1 and "not committed" in listing and "99" in err, (listing, err)
  finally:
    torn.rmtree()


def test_a_run_directory_on_gcs_is_locked_against_a_second_writer(gcs):
  with DirectoryLock(gs("locked"), what="run"):
    with pytest.raises(DirectoryLocked, match="in use by another lmjax process"):
      DirectoryLock(gs("locked")).acquire()
  assert not storage.as_path(gs("locked/" + LOCK_FILE)).exists()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
  """A bucket on moto's S3 server (started here, stopped after), the AWS clients pointed at it."""
  s3fs = pytest.importorskip("s3fs")
  pytest.importorskip("moto")
  port = free_port()
  url = f"http://127.0.0.1:{port}"
  with serving(["-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], f"{url}/moto-api/",
               tmp_path_factory.mktemp("s3") / "moto.log"), pytest.MonkeyPatch.context() as env:
    env.setenv("AWS_ENDPOINT_URL", url)
    env.setenv("AWS_ACCESS_KEY_ID", "test")
    env.setenv("AWS_SECRET_ACCESS_KEY", "test")
    env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    env.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
      storage.filesystem(f"s3://{BUCKET}").mkdir(BUCKET)
      yield f"s3://{BUCKET}"
    finally:
      s3fs.S3FileSystem.clear_instance_cache()
      storage._probed.clear()


def test_a_run_on_s3_resumes_past_a_torn_step_as_if_uninterrupted(rehearsal, s3, capsys):
  """A run whose directory is on S3 (its data on the GCS bucket) trains to the end; its last
  step then loses its commit marker, as a kill between the step's files and the marker leaves
  it, and the same command resumes from the step before, rewrites the torn one and ends as the
  uninterrupted run did. Its export to S3 imports back, into a run directory there, with the
  same logits."""
  _, whole = rehearsal
  run = f"{s3}/run"
  argv = ["train", "tiny-gpt", "--run-dir", run, "--set", *RUN, data_paths(gs("data"))]
  assert main(argv) == 0
  storage.as_path(f"{run}/checkpoints/12/commit_success.txt").unlink()
  code, _, err = run_cli(capsys, *argv)
  assert code == 0 and "ignoring 12" in err and "from step 6" in err, err
  assert_resumed_as_uninterrupted(whole, run, rows(whole), remote_rows(run), 12)
  code, listing, _ = run_cli(capsys, "checkpoints", run)
  assert code == 0 and "complete" in listing, listing
  assert run_cli(capsys, "convert", "lmjax-to-hf", run, f"{s3}/hf")[0] == 0
  assert run_cli(capsys, "convert", "hf-to-lmjax", f"{s3}/hf", f"{s3}/back")[0] == 0
  np.testing.assert_allclose(logits_of(f"{s3}/back"), logits_of(whole), atol=1e-5, rtol=1e-5)


def test_an_orbax_the_s3_route_was_not_written_for_is_one_message(s3, capsys, monkeypatch):
  """lmjax.run.orbax_buckets replaces private Orbax functions: another Orbax series is refused
  before anything is written, not patched blindly."""
  monkeypatch.setattr(orbax_buckets, "ORBAX_SERIES", "0.99.")
  monkeypatch.setattr(orbax_buckets, "_installed", False)
  code, _, err = run_cli(capsys, "train", "tiny-gpt", "--run-dir", f"{s3}/refused")
  assert code == 2 and "need orbax-checkpoint 0.99.x" in err and "Traceback" not in err, err
  assert len(err.strip().splitlines()) == 1, err
  assert not storage.as_path(f"{s3}/refused").exists()


def test_the_lock_on_s3_is_a_conditional_create_the_server_enforces(s3):
  lock = storage.as_path(f"{s3}/locked/{LOCK_FILE}")
  assert storage.create_exclusive(lock, "first")
  assert not storage.create_exclusive(lock, "second")
  with pytest.raises(FileExistsError):  # without lmjax's look first: the server refuses
    storage.filesystem(lock).pipe_file(str(lock), b"third", mode="create")
  assert lock.read_text() == "first"


@pytest.fixture
def unreachable(gcs, monkeypatch):
  """A storage server that is down: nothing listens at STORAGE_EMULATOR_HOST."""
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
  monkeypatch.setattr(storage, "PROBE_SECONDS", 1.0)
  monkeypatch.setattr(storage, "_probed", set())
  gcsfs.GCSFileSystem.clear_instance_cache()
  yield
  gcsfs.GCSFileSystem.clear_instance_cache()


@pytest.mark.parametrize("argv, message", [
    (["generate", "--run-dir", "ftp://host/run", "--prompt", "a"], "unknown scheme ftp://"),
    (["generate", "--run-dir", "gs:///run", "--prompt", "a"], "names no bucket"),
    (["generate", "--run-dir", "gs://no-such-bucket/run", "--prompt", "a"],
     "bucket gs://no-such-bucket does not exist"),
    (["train", "tiny-gpt", "--run-dir", "gs://no-such-bucket/run"],
     "bucket gs://no-such-bucket does not exist"),
    (["convert", "lmjax-to-hf", gs("nothing-here"), "gs://no-such-bucket/out"],
     "bucket gs://no-such-bucket does not exist"),
    (["train", "tiny-gpt", "--run-dir", gs("never"), "--set",
      "model.init_from=gs://no-such-bucket/base"],
     "model.init_from gs://no-such-bucket/base: bucket gs://no-such-bucket does not exist"),
    (["convert", "lmjax-to-peft", gs("nothing-here"), "gs://no-such-bucket/adapter"],
     "bucket gs://no-such-bucket does not exist"),
    (["convert", "hf-to-lmjax", gs("nothing-here"), gs("new"), "--adapter", "gs:///adapter"],
     "names no bucket"),
    (["convert", "verify", "gs://no-such-bucket/hf", gs("nothing-here")],
     "bucket gs://no-such-bucket does not exist"),
])
def test_a_bad_remote_path_is_one_message(gcs, capsys, argv, message):
  code, _, err = run_cli(capsys, *argv)
  assert code == 2 and message in err and "Traceback" not in err, err
  assert len(err.strip().splitlines()) == 1, err


def test_an_unreachable_server_is_one_message_in_bounded_time(unreachable, capsys):
  started = time.monotonic()
  code, _, err = run_cli(capsys, "generate", "--run-dir", gs("whole"), "--prompt", "a")
  assert time.monotonic() - started < 8
  assert code == 2 and "no answer from the storage server" in err, err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_bucket_without_its_client_library_names_the_extra(capsys, monkeypatch):
  monkeypatch.setattr(storage, "_probed", set())
  monkeypatch.setitem(sys.modules, "gcsfs", None)
  code, _, err = run_cli(capsys, "generate", "--run-dir", "gs://bucket/run", "--prompt", "a")
  assert code == 2 and "needs gcsfs" in err and "pip install 'lmjax[gcs]'" in err, err


def test_missing_credentials_are_named_not_printed(gcs, capsys, monkeypatch, tmp_path):
  monkeypatch.setattr(storage, "_probed", set())
  monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "key.json"))
  code, _, err = run_cli(capsys, "generate", "--run-dir", gs("whole"), "--prompt", "a")
  assert code == 2 and "GOOGLE_APPLICATION_CREDENTIALS" in err and "does not exist" in err, err
  assert "Traceback" not in err
