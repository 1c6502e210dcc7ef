"""Greedy decoding against transformers' `generate`, token for token, for every causal family.

Each family is a tiny random HF model (tests/hf_models.py's `HF_CASES`, every weight
randomised), saved and converted with `from_hf`. Prompts of mixed lengths go in one batch: HF
pads them on the left with an attention mask, lmjax pads them its own way. Every prompt starts
with the pad id, so that HF, which counts its left padding as seen tokens for the repetition
penalty, and lmjax, which counts only real ones, penalise the same ids.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from lmjax.convert import from_hf  # noqa: E402
from lmjax.infer import generate  # noqa: E402
from tests.hf_models import NEW, PAD, build_hf, hf_greedy, with_unit_norm_gains  # noqa: E402

CAUSAL = ["gpt2_lm", "llama", "llama_tied", "mistral", "qwen2", "qwen3", "qwen3_tied",
          "mistral_window", "qwen2_window", "qwen3_window",  # windows shorter than the prompts
          "gemma2", "gemma2_untied", "mixtral", "qwen3_moe"]


@pytest.fixture(scope="module", params=CAUSAL)
def family(request, tmp_path_factory):
  """(name, HF model, lmjax model, params, prompts) of one family, built once per module."""
  hf_model = with_unit_norm_gains(build_hf(request.param))
  path = tmp_path_factory.mktemp(request.param)
  hf_model.save_pretrained(path)
  hf_model.generation_config.eos_token_id = None  # EOS ids come from each test, as in lmjax
  model, params = from_hf(path)
  rng = np.random.default_rng(1)
  vocab = model.config.vocab_size
  prompts = [[PAD] + rng.integers(4, vocab, length).tolist() for length in (6, 2, 10)]
  return request.param, hf_model, model, params, prompts


def test_greedy_batch_of_mixed_lengths_matches_transformers(family):
  name, hf_model, model, params, prompts = family
  expected = hf_greedy(hf_model, prompts)
  got = generate(model, params, prompts, max_new_tokens=NEW, temperature=0, pad_id=PAD)
  assert len({t for row in expected for t in row}) > 3, name  # a non-degenerate batch
  assert got == expected, name


def test_greedy_with_repetition_penalty_min_new_tokens_and_eos_matches_transformers(family):
  name, hf_model, model, params, prompts = family
  plain = hf_greedy(hf_model, prompts)
  # Two EOS ids the plain continuations reach early, so that min_new_tokens has work to do.
  eos = [plain[0][2], plain[1][1]]
  for kwargs in [dict(repetition_penalty=1.8), dict(min_new_tokens=5),
                 dict(repetition_penalty=0.7, min_new_tokens=3)]:
    expected = hf_greedy(hf_model, prompts, eos, **kwargs)
    got = generate(model, params, prompts, max_new_tokens=NEW, temperature=0, pad_id=PAD,
                   eos_id=eos, **kwargs)
    assert got == expected, (name, kwargs)
    assert all(len(row) >= kwargs.get("min_new_tokens", 0) for row in got)
    if "repetition_penalty" in kwargs:  # the penalty changes what greedy decoding picks
      assert [row[:3] for row in got] != [row[:3] for row in plain], (name, kwargs)
  ended = hf_greedy(hf_model, prompts, eos)
  assert len(ended[0]) <= 3 and len(ended[1]) <= 2  # the EOS ids do end rows
  assert ended == generate(model, params, prompts, max_new_tokens=NEW, temperature=0,
                           pad_id=PAD, eos_id=eos)
