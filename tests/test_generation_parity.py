"""Greedy decoding against transformers' `generate`, token for token, for every causal family.

Each family is a tiny random HF model (tests/test_convert.py's `HF_CASES`, every weight
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
from lmjax.generate import generate  # noqa: E402
from tests.test_convert import build_hf  # noqa: E402

CAUSAL = ["gpt2_lm", "llama", "llama_tied", "mistral", "qwen2", "qwen3", "qwen3_tied",
          "mistral_window", "qwen2_window", "qwen3_window",  # windows shorter than the prompts
          "gemma2", "gemma2_untied", "mixtral", "qwen3_moe"]
NEW = 12
PAD = 3


def with_unit_norm_gains(hf_model, seed: int = 0):
  """`hf_model` with its norms' gains drawn from [0.8, 1.2] instead of randomise's [-0.5, 0.5]:
  gains near zero squash the final hidden state, and greedy decoding then repeats one or two
  tokens (GPT-2's batch holds 3 distinct ids), which would make the comparisons below weak."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for module in hf_model.modules():
      if isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
        module.weight.uniform_(0.8, 1.2)
  return hf_model


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


def hf_greedy(hf_model, prompts, eos=(), **kwargs) -> list[list[int]]:
  """transformers' greedy continuations of `prompts`, left-padded in one batch, each cut after
  its first id of `eos` (HF pads the rows that ended)."""
  length = max(map(len, prompts))
  ids = torch.tensor([[PAD] * (length - len(p)) + p for p in prompts])
  mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])
  with torch.no_grad():
    out = hf_model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                            pad_token_id=PAD, eos_token_id=list(eos) or None, **kwargs)
  rows = []
  for row in out[:, length:].tolist():
    ends = [i for i, t in enumerate(row) if t in eos]
    rows.append(row[:ends[0] + 1] if ends else row)
  return rows


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
