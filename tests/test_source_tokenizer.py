"""A pretrained source brings its own tokenizer: a run fine-tuned from an HF directory, a run
directory or a hub id saves and uses the source's tokenizer (special tokens, chat template) and
positions; another tokenizer is refused unless data.replace_tokenizer says it is meant (and then
it must have as many tokens); and the fine-tune's first loss is the pretrained model's loss on
the same batch, far below chance: the ids mean what they meant to the weights."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

import lmjax  # noqa: E402
from lmjax.cli import main  # noqa: E402
from lmjax.config import load_config  # noqa: E402
from lmjax.data.spec import Objective  # noqa: E402
from lmjax.data.tokenize.chat import load_template  # noqa: E402
from lmjax.data.tokenize.tokenizer import Tokenizer  # noqa: E402
from lmjax.train.inputs import batch_sources, load_corpus  # noqa: E402
from lmjax.train.step import eval_step  # noqa: E402
from tests.conftest import TINY  # noqa: E402
from tests.helpers import rows  # noqa: E402

SETTINGS = [s for s in TINY if not s.startswith("data.tokenizer=")]  # the config names none
FINE = [s for s in SETTINGS if not s.startswith("model.")]  # the model is the source's
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """(run directory of a tiny Llama trained on the built-in corpus with its own BPE, its
  Hugging Face export with a chat template)."""
  root = tmp_path_factory.mktemp("pretrained")
  assert main(["train", "tiny-llama", "--run-dir", str(root / "run"), "--set", *SETTINGS,
               "train.steps=60", "train.learning_rate=3e-3", "train.eval_every=0",
               "model.max_seq_len=48"]) == 0
  assert main(["convert", "lmjax-to-hf", str(root / "run"), str(root / "hf")]) == 0
  settings = root / "hf" / "tokenizer_config.json"
  settings.write_text(json.dumps({**json.loads(settings.read_text()), "chat_template": TEMPLATE}))
  return root / "run", root / "hf"


def fine_tune(run_dir, source, *extra):
  return main(["train", "tiny-llama", "--run-dir", str(run_dir), "--set", *FINE,
               f"model.init_from={source}", "train.steps=1", "train.log_every=1",
               "train.eval_every=0", "model.dropout_rate=0.0", *extra])


def hub_id(hf_dir, root, monkeypatch):
  """`org/pretrained`: `hf_dir` as a snapshot of a local Hugging Face cache."""
  repo = root / "hub" / "models--org--pretrained"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text(COMMIT)
  (repo / "snapshots").mkdir()
  (repo / "snapshots" / COMMIT).symlink_to(hf_dir, target_is_directory=True)
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root / "hub"))
  return "org/pretrained"


@pytest.mark.parametrize("kind", ["hf", "run", "hub"])
def test_every_pretrained_source_brings_its_tokenizer(pretrained, tmp_path, monkeypatch, kind):
  run, hf = pretrained
  source = {"hf": hf, "run": run, "hub": lambda: hub_id(hf, tmp_path, monkeypatch)}[kind]
  source = source() if callable(source) else source
  assert fine_tune(tmp_path / "tuned", source) == 0
  theirs = Tokenizer.from_file(run / "tokenizer")
  saved = Tokenizer.load(tmp_path / "tuned" / "tokenizer")
  assert saved.to_dict() == theirs.to_dict()
  assert (saved.bos_id, saved.eos_id, saved.pad_id) == (theirs.bos_id, theirs.eos_id,
                                                         theirs.pad_id)
  config = lmjax.load(tmp_path / "tuned").config
  assert (config.max_seq_len, config.vocab_size) == (48, lmjax.load(run).config.vocab_size)
  if kind != "run":  # the HF directory's chat template travels with its tokenizer
    assert load_template(str(tmp_path / "tuned" / "tokenizer")) == TEMPLATE


def test_the_first_loss_is_the_pretrained_models_on_the_same_batch(pretrained, tmp_path):
  run, hf = pretrained
  assert fine_tune(tmp_path / "tuned", hf) == 0
  first = rows(tmp_path / "tuned")[0]
  assert first["step"] == 1
  config = load_config("tiny-llama", [*FINE, f"model.init_from={hf}", "model.dropout_rate=0.0"])
  corpus = load_corpus(config, Tokenizer.load(tmp_path / "tuned" / "tokenizer"))
  batch = batch_sources(config, corpus)[0].batch(0)
  source = lmjax.load(hf)
  sums = eval_step(source.params, batch, model=source.model, objective=Objective.CAUSAL_LM)
  np.testing.assert_allclose(first["loss"], float(sums["loss"]) / float(sums["weight"]),
                             rtol=1e-5)
  trained = [r["loss"] for r in rows(run)]
  chance = math.log(source.config.vocab_size)
  assert first["loss"] < chance - 1.5 and first["loss"] < trained[0] - 1.5  # the ids are right


def test_another_tokenizer_is_refused_unless_replaced_on_purpose(pretrained, tmp_path, capsys):
  run, hf = pretrained
  other = tmp_path / "other"
  Tokenizer.byte_level().save(other)
  capsys.readouterr()
  for choice, what in (("bpe", "would make a new one"), (str(other), "is another one")):
    assert fine_tune(tmp_path / "refused", hf, f"data.tokenizer={choice}") == 2
    err = capsys.readouterr().err
    assert f"data.tokenizer={choice!r} {what}" in err
    assert "data.tokenizer=null" in err and "data.replace_tokenizer=true" in err
    assert "Traceback" not in err and not (tmp_path / "refused").exists()
  size = Tokenizer.from_file(hf).vocab_size
  assert fine_tune(tmp_path / "refused", hf, f"data.tokenizer={other}",
                   "data.replace_tokenizer=true") == 2
  err = capsys.readouterr().err
  assert f"the new tokenizer has {Tokenizer.byte_level().vocab_size} tokens" in err
  assert f"has {size}" in err and not (tmp_path / "refused").exists()
  # Its own tokenizer named by path is no conflict; a same-size replacement is accepted.
  assert fine_tune(tmp_path / "named", hf, f"data.tokenizer={hf}") == 0
  swapped = json.loads((hf / "tokenizer.json").read_text())  # two tokens' ids exchanged
  vocab = swapped["model"]["vocab"]
  a, b = sorted(vocab, key=vocab.get)[-2:]
  vocab[a], vocab[b] = vocab[b], vocab[a]
  (tmp_path / "swapped.json").write_text(json.dumps(swapped))
  assert fine_tune(tmp_path / "refused", hf, f"data.tokenizer={tmp_path / 'swapped.json'}") == 2
  assert fine_tune(tmp_path / "replaced", hf, f"data.tokenizer={tmp_path / 'swapped.json'}",
                   "data.replace_tokenizer=true") == 0


def test_unset_and_bpe_are_the_same_tokenizer_to_a_resume():
  """The shipped tiny configs once said data.tokenizer: bpe; a run started then resumes with
  today's (unset) without counting a tokenizer change; a source's unset one is not bpe."""
  from lmjax.run.resume_policy import config_changes
  said = load_config("tiny-gpt", ["data.tokenizer=bpe"])
  assert config_changes(said, load_config("tiny-gpt")) == []
  assert [c.key for c in config_changes(said, load_config("tiny-gpt", ["data.tokenizer=byte"]))
          ] == ["data.tokenizer"]


def test_a_directorys_chat_template_jinja_is_its_template(tmp_path):
  """transformers v5 saves the template as chat_template.jinja beside tokenizer_config.json."""
  Tokenizer.byte_level().save(tmp_path)
  assert load_template(str(tmp_path)) != TEMPLATE  # none yet: lmjax's default
  (tmp_path / "chat_template.jinja").write_text(TEMPLATE)
  assert load_template(str(tmp_path)) == TEMPLATE
