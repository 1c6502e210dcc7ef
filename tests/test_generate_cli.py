"""`lmjax generate` as a user runs it: stop strings, JSON Lines in and out, several sequences,
generation_config.json defaults, streaming, bfloat16, and the messages for bad input."""

import contextlib
import io
import json
import re
import shutil

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lmjax.cli import main  # noqa: E402
from lmjax.infer.complete import GenerationSettings, complete, stable_prefix  # noqa: E402
from lmjax.data.sources.documents import builtin_corpus  # noqa: E402
from lmjax.data.tokenize.tokenizer import Tokenizer  # noqa: E402
from lmjax.infer import generate  # noqa: E402
from lmjax.run.loader import load  # noqa: E402
from tests.helpers import run_cli  # noqa: E402

PROMPT = "The object"
GREEDY = ["--temperature", 0, "--max-new-tokens", 24]


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
  """A tiny random GPT-2 with a real BPE tokenizer (64 positions), saved as HF saves it; its
  generation_config.json holds only the special ids."""
  directory = tmp_path_factory.mktemp("hf-gpt2")
  tokenizer = Tokenizer.train_bpe(builtin_corpus()[:20], vocab_size=320)
  tokenizer.save(directory)
  config = transformers.GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=48, n_layer=2, n_head=6,
                                   n_positions=64, initializer_range=0.3,
                                   eos_token_id=tokenizer.eos_id, bos_token_id=tokenizer.eos_id)
  torch.manual_seed(0)
  transformers.GPT2LMHeadModel(config).save_pretrained(directory)
  return directory


@pytest.fixture(scope="module")
def greedy_text(hf_gpt2):
  """The greedy continuation of PROMPT (what follows it in the printed text)."""
  with contextlib.redirect_stdout(io.StringIO()) as out:
    assert main([str(a) for a in ["generate", "--hf", hf_gpt2, "--prompt", PROMPT, *GREEDY,
                                  "--no-stream"]]) == 0
  printed = out.getvalue()
  assert printed.startswith(PROMPT) and printed.endswith("\n")
  return printed[len(PROMPT):-1]


def write_lines(path, lines):
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return path


# -- streaming ----------------------------------------------------------------------------------


def test_streamed_pieces_join_to_the_non_streamed_text(hf_gpt2, greedy_text, capsys):
  loaded = load(hf_gpt2, require_tokenizer=True)
  pieces = []
  settings = GenerationSettings(max_new_tokens=24, temperature=0,
                                eos_ids=(loaded.tokenizer.eos_id,))
  (result,) = complete(loaded, [PROMPT], settings, on_text=pieces.append)
  assert len(pieces) > 2  # the shown prompt, then a piece per chunk of 8 tokens
  assert "".join(pieces) == result.shown_prompt + result.completions[0] == PROMPT + greedy_text
  code, out, _ = run_cli(capsys, "generate", "--hf", hf_gpt2, "--prompt", PROMPT, *GREEDY)
  assert code == 0 and out == PROMPT + greedy_text + "\n"


def test_streaming_holds_back_a_possible_stop_string_start_and_cut_text_matches(hf_gpt2,
                                                                               greedy_text):
  loaded = load(hf_gpt2, require_tokenizer=True)
  # Stop strings starting at every character of the first chunks' text: some straddle the end
  # of a chunk, whose first part streaming must hold back until the next chunk decides.
  for start in range(1, 16):
    stop = greedy_text[start:start + 3]
    pieces = []
    settings = GenerationSettings(max_new_tokens=24, temperature=0, stop=(stop, "never there"),
                                  eos_ids=(loaded.tokenizer.eos_id,))
    (result,) = complete(loaded, [PROMPT], settings, on_text=pieces.append)
    assert result.completions == [greedy_text[:greedy_text.index(stop)]]
    assert "".join(pieces) == PROMPT + result.completions[0], stop


def test_stable_prefix_of_a_growing_decode_is_always_a_prefix_of_the_final_text(hf_gpt2):
  tokenizer = Tokenizer.from_file(hf_gpt2)
  text = "café – naïve 😀 done"
  ids = tokenizer.encode(text)
  assert tokenizer.decode(ids) == text and len(ids) > len(text)  # multi-byte chars span ids
  partial = [tokenizer.decode(ids[:n]) for n in range(1, len(ids) + 1)]
  assert any(p.endswith("\ufffd") for p in partial)  # a character cut between ids
  for p in partial:
    assert text.startswith(stable_prefix(p, []))
    shown = stable_prefix(p, ["naïve!"])  # a stop string the text never completes
    assert text.startswith(shown) and not shown.endswith(("n", "na", "naï", "naïv", "naïve"))
  assert stable_prefix("ab\ufffd\ufffd", []) == "ab" and stable_prefix("abX", ["XY", "Z"]) == "ab"


# -- stop strings -------------------------------------------------------------------------------


def test_stop_string_ends_the_text_before_it(hf_gpt2, greedy_text, capsys):
  assert len(greedy_text) > 12, greedy_text
  late, early = greedy_text[9:11], greedy_text[4:6]
  for stops, cut in [([late], greedy_text.index(late)),
                     ([late, early], min(greedy_text.index(late), greedy_text.index(early)))]:
    flags = [arg for stop in stops for arg in ("--stop", stop)]
    for stream in ([], ["--no-stream"]):
      code, out, _ = run_cli(capsys, "generate", "--hf", hf_gpt2, "--prompt", PROMPT, *GREEDY,
                             *flags, *stream)
      assert code == 0 and out == PROMPT + greedy_text[:cut] + "\n"


# -- JSON Lines and several sequences -----------------------------------------------------------


def test_input_file_is_batched_and_written_as_json_lines(hf_gpt2, greedy_text, tmp_path, capsys):
  prompts = [PROMPT, "In Python", "A", "def f"]
  source = write_lines(tmp_path / "in.jsonl", [json.dumps({"prompt": p, "id": i})
                                               for i, p in enumerate(prompts)] + [""])
  out_path = tmp_path / "out.jsonl"
  code, out, _ = run_cli(capsys, "generate", "--hf", hf_gpt2, "--input", source, "--output",
                         out_path, "--batch-size", 3, *GREEDY)
  assert code == 0 and "wrote 4" in out
  records = [json.loads(line) for line in out_path.read_text().splitlines()]
  assert [r["prompt"] for r in records] == prompts
  assert records[0]["completions"] == [greedy_text]  # batching changes no greedy token
  for record in records[1:]:
    code, out, _ = run_cli(capsys, "generate", "--hf", hf_gpt2, "--prompt", record["prompt"],
                           *GREEDY, "--no-stream")
    assert out == record["prompt"] + record["completions"][0] + "\n"
  # Without --output the same lines go to stdout.
  code, out, _ = run_cli(capsys, "generate", "--hf", hf_gpt2, "--input", source, *GREEDY)
  assert code == 0 and [json.loads(line) for line in out.splitlines()] == records


def test_num_return_sequences_gives_each_prompt_its_samples(hf_gpt2, tmp_path, capsys):
  source = write_lines(tmp_path / "in.jsonl", ['{"prompt": "The"}', '{"prompt": "In"}'])
  code, out, _ = run_cli(capsys, "generate", "--hf", hf_gpt2, "--input", source,
                         "--num-return-sequences", 3, "--max-new-tokens", 12, "--seed", 1)
  assert code == 0
  records = [json.loads(line) for line in out.splitlines()]
  assert [len(r["completions"]) for r in records] == [3, 3]
  assert len(set(records[0]["completions"])) == 3  # independent samples
  code, out, _ = run_cli(capsys, "generate", "--hf", hf_gpt2, "--prompt", "The",
                         "--num-return-sequences", 2, "--max-new-tokens", 12)
  assert code == 0
  headers = re.findall(r"^--- prompt 1/1, sequence (\d)/2 ---$", out, flags=re.MULTILINE)
  blocks = re.split(r"^--- prompt 1/1, sequence \d/2 ---\n", out, flags=re.MULTILINE)[1:]
  assert headers == ["1", "2"] and all(b.startswith("The") for b in blocks), out


# -- generation_config.json ---------------------------------------------------------------------


def test_generation_config_gives_the_defaults_and_flags_win(hf_gpt2, tmp_path, capsys):
  loaded = load(hf_gpt2, require_tokenizer=True)
  tokenizer = loaded.tokenizer
  ids = tokenizer.encode(PROMPT, add_special_tokens=True)

  def expected(eos, **kwargs):  # the printed text, from the token level
    (new,) = generate(loaded.model, loaded.params, [ids], eos_id=eos, **kwargs)
    return tokenizer.decode(ids + new) + "\n"

  (penalised,) = generate(loaded.model, loaded.params, [ids], max_new_tokens=6, temperature=0,
                          repetition_penalty=1.5)
  # A token greedy decoding reaches after 3 others is made an EOS id next to the tokenizer's own.
  extra_eos = next(t for i, t in enumerate(penalised) if i >= 3 and t not in penalised[:i])
  eos = [tokenizer.eos_id, extra_eos]
  configured = tmp_path / "configured"
  shutil.copytree(hf_gpt2, configured)
  (configured / "generation_config.json").write_text(json.dumps({
      "do_sample": False, "temperature": 0.7, "max_new_tokens": 6, "repetition_penalty": 1.5,
      "eos_token_id": eos}))

  code, out, err = run_cli(capsys, "generate", "--hf", configured, "--prompt", PROMPT)
  assert code == 0 and out == expected(eos, max_new_tokens=6, temperature=0,
                                       repetition_penalty=1.5)
  assert out != expected(tokenizer.eos_id, max_new_tokens=6, temperature=0)  # the file mattered
  assert "defaults from" in err and "max_new_tokens=6" in err and "do_sample=False" in err
  # Flags given explicitly win; the EOS ids still come from the file.
  code, out, err = run_cli(capsys, "generate", "--hf", configured, "--prompt", PROMPT,
                           "--temperature", 0, "--max-new-tokens", 3, "--repetition-penalty", 1)
  assert code == 0 and out == expected(eos, max_new_tokens=3, temperature=0)
  assert "max_new_tokens" not in err and "eos_token_id" in err
  code, _, err = run_cli(capsys, "generate", "--hf", configured, "--prompt", PROMPT,
                         "--temperature", 1.0, "--seed", 3)
  assert code == 0 and "do_sample" not in err  # sampling asked for: the file's greedy is unused


def test_a_bad_generation_config_value_is_named(hf_gpt2, tmp_path, capsys):
  configured = tmp_path / "configured"
  shutil.copytree(hf_gpt2, configured)
  (configured / "generation_config.json").write_text('{"top_k": "fifty"}')
  code, _, err = run_cli(capsys, "generate", "--hf", configured, "--prompt", PROMPT)
  assert code == 2 and "top_k is 'fifty', not an integer" in err and "Traceback" not in err


# -- context, dtype -----------------------------------------------------------------------------


def test_a_prompt_longer_than_the_context_keeps_its_newest_tokens(hf_gpt2, capsys):
  tokenizer = Tokenizer.from_file(hf_gpt2)
  long_prompt = " ".join(["object"] * 80)
  ids = tokenizer.encode(long_prompt, add_special_tokens=True)
  code, out, err = run_cli(capsys, "generate", "--hf", hf_gpt2, "--prompt", long_prompt,
                           "--max-new-tokens", 8, "--temperature", 0)
  assert code == 0 and len(ids) > 56  # 64 positions, 8 of them for the new tokens
  assert f"dropped its oldest {len(ids) - 56} tokens" in err
  kept = tokenizer.decode(ids[-56:])
  assert out.startswith(kept) and long_prompt.endswith(kept) and len(out) > len(kept) + 1


def test_bfloat16_generates(hf_gpt2, capsys):
  code, out, _ = run_cli(capsys, "generate", "--hf", hf_gpt2, "--prompt", PROMPT, *GREEDY,
                         "--dtype", "bfloat16")
  assert code == 0 and out.startswith(PROMPT) and len(out) > len(PROMPT) + 5


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lines, flags, message", [
    ([], [], "holds no prompts"),
    (["", "  "], [], "holds no prompts"),
    (['{"prompt": "a"}', '{"prompt": "b"'], [], "line 2 is not valid JSON"),
    (['{"prompt": "a"}', '{"text": "b"}'], [], "line 2 has no string field 'prompt'"),
    (['["a"]'], [], "line 1 has no string field 'prompt'"),
    (['{"prompt": "a"}'], ["--min-new-tokens", 9, "--max-new-tokens", 4],
     "min_new_tokens must be between 0 and max_new_tokens=4, got 9"),
    (['{"prompt": "a"}'], ["--stop", ""], "--stop '' is empty"),
    (['{"prompt": "a"}'], ["--num-return-sequences", 2, "--temperature", 0], "greedy decoding"),
    (['{"prompt": "a"}'], ["--repetition-penalty", 0], "repetition_penalty must be > 0"),
    (['{"prompt": "a"}'], ["--batch-size", 0], "--batch-size must be >= 1"),
    (['{"prompt": "a"}'], ["--max-new-tokens", 64], "leaves no room for a prompt"),
    (['{"prompt": ""}'], [], "has no tokens"),
])
def test_bad_input_exits_2_with_a_message_and_writes_nothing(hf_gpt2, tmp_path, capsys, lines,
                                                            flags, message):
  source = write_lines(tmp_path / "in.jsonl", lines)
  out_path = tmp_path / "out.jsonl"
  code, out, err = run_cli(capsys, "generate", "--hf", hf_gpt2, "--input", source, "--output",
                           out_path, "--max-new-tokens", 8, *flags)
  assert code == 2 and message in err and "Traceback" not in err
  assert not out_path.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_an_existing_output_is_never_overwritten(hf_gpt2, tmp_path, capsys):
  source = write_lines(tmp_path / "in.jsonl", ['{"prompt": "a"}'])
  existing = tmp_path / "out.jsonl"
  existing.write_text("keep me\n")
  code, _, err = run_cli(capsys, "generate", "--hf", hf_gpt2, "--input", source, "--output",
                         existing)
  assert code == 2 and "already exists" in err and existing.read_text() == "keep me\n"


def test_prompt_and_input_are_exclusive(hf_gpt2, tmp_path):
  with pytest.raises(SystemExit) as exit_info:
    main(["generate", "--hf", str(hf_gpt2), "--prompt", "a", "--input", str(tmp_path / "x")])
  assert exit_info.value.code == 2


def test_a_masked_lm_is_refused_before_anything_about_its_positions(tmp_path, capsys):
  from tests.hf_models import build_hf
  build_hf("bert_mlm").save_pretrained(tmp_path)
  Tokenizer.byte_level().save(tmp_path)
  code, _, err = run_cli(capsys, "generate", "--hf", tmp_path, "--prompt", "The")
  assert code == 2 and "needs a causal language model" in err and "masked_lm" in err


def test_a_stop_string_that_is_the_eos_token_is_called_redundant(hf_gpt2, greedy_text, capsys):
  eos = Tokenizer.from_file(hf_gpt2).id_to_token(Tokenizer.from_file(hf_gpt2).eos_id)
  code, out, err = run_cli(capsys, "generate", "--hf", hf_gpt2, "--prompt", PROMPT, *GREEDY,
                           "--no-stream", "--stop", eos)
  assert code == 0 and f"--stop {eos!r} is the end-of-sequence token" in err
  assert out == PROMPT + greedy_text + "\n"  # the same text as without it
