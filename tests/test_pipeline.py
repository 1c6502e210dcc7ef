"""The Grain pipeline, prepared (pre-tokenized) datasets and the bad-record policy.

Prepared data is really written as array_record shards by `lmjax data prepare`, and the
two-process test joins real processes through `jax.distributed` on 127.0.0.1.
"""

import json
import pathlib

import numpy as np
import pytest

from lmjax.cli import main as cli_main
from lmjax.config import load_config
from lmjax.data.examples.packing import RowPacker, pack_documents
from lmjax.data.pipeline.grain_pipeline import BatchIterator
from lmjax.data.sources.documents import ReadStats, read_documents
from lmjax.errors import UserError
from lmjax.train.inputs import batch_sources, load_corpus, prepare_data
from lmjax.train.loop import train
from tests.conftest import TINY
from tests.processes import children, cpu_env, free_port

SEQ_LEN = 32


def docs(n: int, seed: int = 0) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [list(rng.integers(5, 250, size=rng.integers(0, 90))) for _ in range(n)]


def test_packing_in_chunks_equals_packing_everything_at_once():
  token_docs = docs(200)
  whole = pack_documents(token_docs, seq_len=SEQ_LEN, eos_id=1, bos_id=2)
  rng = np.random.default_rng(1)
  cuts = np.sort(rng.choice(np.arange(1, 200), size=17, replace=False))
  packer = RowPacker(seq_len=SEQ_LEN, eos_id=1, bos_id=2)
  parts = [packer.add(chunk) for chunk in np.split(np.array(token_docs, dtype=object), cuts)]
  parts.append(packer.finish())
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key], key)


@pytest.fixture(scope="module")
def corpus_config():
  return load_config("tiny-bert", TINY)


def collect(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.parametrize("workers", [0, 1])
def test_iterator_state_restores_exactly_the_following_batches(corpus_config, workers):
  source, _ = batch_sources(corpus_config, load_corpus(corpus_config))
  positions = np.arange(source.batch_size)
  # The iterator yields the source's batches, step by step, MLM masks included (same seed, same
  # batches), before and after a restore from its saved state.
  expected = [source.batch(k, positions=positions) for k in range(9)]
  first = BatchIterator(source, positions, num_steps=12, workers=workers)
  assert_same_batches(collect(first, 4), expected[:4])
  state = json.loads(json.dumps(first.state()))  # as a checkpoint stores it
  first.close()
  resumed = BatchIterator(source, positions, num_steps=12, workers=workers, state=state)
  assert_same_batches(collect(resumed, 5), expected[4:])
  resumed.close()
  assert not np.array_equal(expected[0]["input_ids"], expected[1]["input_ids"])


def write_jsonl(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def jsonl_corpus(tmp_path_factory):
  root, rng = tmp_path_factory.mktemp("jsonl"), np.random.default_rng(0)
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz     "))
  for part in range(3):  # random text: no two packed rows are alike
    write_jsonl(root / f"part{part}.jsonl", [
        json.dumps({"text": "".join(rng.choice(letters, size=rng.integers(5, 200)))})
        for _ in range(120)])
  return root


def prepared_overrides(directory) -> list[str]:
  return ["data.source=prepared", f"data.paths=[{directory}]"]


def jsonl_overrides(root) -> list[str]:
  return TINY + ["data.source=jsonl", f"data.paths=[{root}/*.jsonl]", "data.eval_fraction=0.1"]


def test_prepared_rows_are_the_rows_training_packs_on_the_fly(tmp_path, jsonl_corpus):
  config = load_config("tiny-gpt", jsonl_overrides(jsonl_corpus))
  meta = prepare_data(config, tmp_path / "prepared", rows_per_shard=50)
  assert len(meta["train_files"]) > 1  # several shards
  prepared = load_corpus(load_config("tiny-gpt", jsonl_overrides(jsonl_corpus) +
                                     prepared_overrides(tmp_path / "prepared")))
  on_the_fly = load_corpus(config)

  def all_rows(corpus):
    return {k: np.concatenate([corpus.train.take(np.arange(len(corpus.train)))[k],
                               corpus.held_out.take(np.arange(len(corpus.held_out)))[k]])
            for k in ("input_ids", "segment_ids", "positions")}

  ours, theirs = all_rows(prepared), all_rows(on_the_fly)
  order = lambda rows: np.lexsort(rows["input_ids"].T[::-1])
  for key in ours:
    np.testing.assert_array_equal(ours[key][order(ours)], theirs[key][order(theirs)], key)
  # Every 10th row is held out (data.eval_fraction=0.1).
  total = len(prepared.train) + len(prepared.held_out)
  assert len(prepared.held_out) == total // 10


def test_preparing_with_worker_processes_writes_the_same_shards(tmp_path, jsonl_corpus):
  config = load_config("tiny-gpt", jsonl_overrides(jsonl_corpus))
  prepare_data(config, tmp_path / "one")
  prepare_data(config, tmp_path / "two", workers=2)
  names = sorted(p.name for p in (tmp_path / "one").glob("*.array_record"))
  assert names == sorted(p.name for p in (tmp_path / "two").glob("*.array_record"))
  for name in names:
    assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_training_on_prepared_data_resumes_exactly(tmp_path, jsonl_corpus, capsys):
  overrides = jsonl_overrides(jsonl_corpus)
  assert cli_main(["data", "prepare", "tiny-gpt", str(tmp_path / "data"), "--set",
                   *overrides]) == 0
  assert "data.source=prepared" in capsys.readouterr().out
  config = load_config("tiny-gpt", overrides + prepared_overrides(tmp_path / "data") +
                       ["train.steps=8", "train.log_every=1", "train.checkpoint_every=4",
                        "train.eval_every=4"])
  train(config, tmp_path / "straight")
  train(config, tmp_path / "resumed", stop_after=4)
  train(config, tmp_path / "resumed")
  losses = lambda run: [(r["step"], r["loss"]) for r in map(json.loads, (
      tmp_path / run / "metrics.jsonl").read_text().splitlines())]
  assert losses("resumed") == losses("straight")
  assert len(losses("straight")) == 8


def test_prepared_data_mistakes_are_explained(tmp_path, jsonl_corpus, capsys):
  overrides = jsonl_overrides(jsonl_corpus)
  out = tmp_path / "data"
  assert cli_main(["data", "prepare", "tiny-gpt", str(out), "--set", *overrides]) == 0
  listing = sorted(p.name for p in out.iterdir())
  # A second prepare into the same directory is refused and leaves it as it was.
  assert cli_main(["data", "prepare", "tiny-gpt", str(out), "--set", *overrides]) == 2
  assert "already exists and is not empty" in capsys.readouterr().err
  assert sorted(p.name for p in out.iterdir()) == listing
  cases = [
      ("tiny-gpt", ["train.seq_len=16"], "holds rows of 32 tokens but train.seq_len is 16"),
      ("tiny-bert", [], "was packed for a causal_lm model"),
      ("tiny-gpt", [f"data.paths=[{tmp_path}]"], "is not a prepared dataset"),
  ]
  for name, extra, expected in cases:
    code = cli_main(["train", name, "--run-dir", str(tmp_path / "run"), "--set", *TINY,
                     *prepared_overrides(out), *extra])
    assert code == 2, expected
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


BAD_LINES = ['{"text": "a good line"}', "not json at all", '["a", "list"]', '{"body": "x"}',
             '{"text": 7}', '{"text": "another good line"}']


def test_bad_records_stop_by_default_and_are_skipped_and_counted_on_request(tmp_path):
  path = write_jsonl(tmp_path / "mixed.jsonl", BAD_LINES)
  with pytest.raises(UserError, match=r"mixed.jsonl:2 is not valid JSON.*data.bad_records: skip"):
    read_documents(source="jsonl", paths=[path])
  with open(path, "ab") as f:
    f.write(b'{"text": "caf\xe9 in latin-1"}\n{"text": "last"}\n')
  with pytest.raises(UserError, match=r"mixed.jsonl' is not valid UTF-8: byte 0xe9.*line 7"):
    read_documents(source="jsonl", paths=[path])
  stats = ReadStats()
  documents = read_documents(source="jsonl", paths=[path], bad_records="skip", stats=stats)
  assert documents == ["a good line", "another good line", "last"]
  assert stats.skipped == 5
  assert "mixed.jsonl:2" in stats.first_problem


def test_skipped_records_reach_the_metrics_and_the_prepared_metadata(tmp_path, jsonl_corpus):
  bad = write_jsonl(tmp_path / "bad.jsonl", BAD_LINES * 3)
  overrides = TINY + ["data.source=jsonl", f"data.paths=[{jsonl_corpus}/*.jsonl, {bad}]",
                      "train.steps=2", "train.log_every=1", "train.eval_every=0"]
  assert cli_main(["train", "tiny-gpt", "--run-dir", str(tmp_path / "refused"), "--set",
                   *overrides]) == 2
  assert not (tmp_path / "refused").exists()
  skip = overrides + ["data.bad_records=skip"]
  train(load_config("tiny-gpt", skip), tmp_path / "run")
  rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
  assert [r["skipped_records"] for r in rows] == [12, 12]
  meta = prepare_data(load_config("tiny-gpt", skip), tmp_path / "data")
  assert meta["sources"][0]["skipped_records"] == 12


def test_two_processes_read_disjoint_shares_whose_union_is_the_epoch(tmp_path, jsonl_corpus):
  config = load_config("tiny-gpt", jsonl_overrides(jsonl_corpus))
  prepare_data(config, tmp_path / "data")
  address = f"127.0.0.1:{free_port()}"
  with children(tmp_path) as group:
    for process_id in (0, 1):
      group.start(f"process{process_id}", [
          "tests/pipeline_worker.py", str(tmp_path / "data"), str(tmp_path / f"{process_id}.npy"),
          address, str(process_id), "2"], cpu_env(1, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo"))
    group.check(timeout=120)
  shares = [np.load(tmp_path / f"{i}.npy") for i in (0, 1)]
  # What one process reading whole batches gets for the same epoch.
  source, _ = batch_sources(load_config("tiny-gpt", jsonl_overrides(jsonl_corpus) +
                                        prepared_overrides(tmp_path / "data")),
                            load_corpus(load_config("tiny-gpt", jsonl_overrides(jsonl_corpus) +
                                                    prepared_overrides(tmp_path / "data"))))
  steps = source.num_rows // source.batch_size
  indices = np.concatenate([source.row_indices(k) for k in range(steps)])
  assert len(np.unique(indices)) == len(indices)  # an epoch names every row at most once
  assert source.num_rows - len(indices) < source.batch_size  # and all but a partial batch
  whole = source.rows.take(indices)["input_ids"]
  as_set = lambda rows: sorted(map(bytes, rows))
  assert len(shares[0]) == len(shares[1]) == len(whole) // 2
  assert as_set(np.concatenate(shares)) == as_set(whole)      # the union is the epoch
  assert not set(as_set(shares[0])) & set(as_set(shares[1]))  # and the shares are disjoint
