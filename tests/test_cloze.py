"""A fill-mask prompt's token ids: the mask stands for a whole word, its leading space included,
as the model saw that word in training (lmjax.infer.cloze)."""

import json

import pytest
import tokenizers
import transformers
from tokenizers import processors

from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError
from lmjax.infer.cloze import cloze_ids

TEXTS = ["The return statement returns a value.", "An exception is raised if the key is absent.",
         "Return the length of the list, or raise an exception."] * 20


@pytest.fixture(scope="module")
def bpe():
  """A byte-level BPE trained by lmjax: its words carry their leading space (" return")."""
  return Tokenizer.train_bpe(TEXTS, vocab_size=400)


@pytest.mark.parametrize("text, word", [
    ("The [MASK] statement returns a value.", " return"),
    ("An [MASK] is raised if the key is absent.", " exception"),
    ("Return the length of the list, or raise an [MASK]", " exception"),
])
def test_the_mask_takes_the_place_of_the_word_and_its_leading_space(bpe, text, word):
  full = bpe.encode(text.replace("[MASK]", word.strip()))
  (word_id,) = bpe.encode(word)  # one token, its space included
  expected = [bpe.bos_id] + [bpe.mask_id if i == word_id else i for i in full] + [bpe.eos_id]
  assert cloze_ids(bpe, text) == expected
  assert bpe.token_to_id("\u0120") not in cloze_ids(bpe, text)  # no lone space token ("Ġ")


def test_a_roberta_style_tokenizer_reads_the_mask_as_transformers_does(bpe, tmp_path):
  """Hugging Face's own tokenizer, whose `<mask>` strips the space before it (RoBERTa's and
  ModernBERT's convention), and lmjax's prompt from the same directory agree id for id."""
  spec = json.loads(bpe.hf.to_str())
  for token in spec["added_tokens"]:
    token["lstrip"] = token["content"] == "<mask>"  # as roberta-base's tokenizer.json has it
  hf = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizers.Tokenizer.from_str(json.dumps(spec)), bos_token="<bos>", eos_token="<eos>", cls_token="<bos>",
      sep_token="<eos>", pad_token="<pad>", unk_token="<unk>",
      mask_token="<mask>")
  hf.backend_tokenizer.post_processor = processors.RobertaProcessing(
      ("<eos>", hf.convert_tokens_to_ids("<eos>")), ("<bos>", hf.convert_tokens_to_ids("<bos>")))
  hf.save_pretrained(tmp_path)
  ours = Tokenizer.load(tmp_path)
  for text in ["The <mask> statement returns a value.", "An <mask> is raised if the key is absent.",
               "<mask> the length, or raise an <mask>"]:
    assert cloze_ids(ours, text) == hf(text)["input_ids"], text
    assert cloze_ids(ours, text.replace("<mask>", "[MASK]")) == hf(text)["input_ids"]


def test_a_text_without_a_mask_or_a_tokenizer_without_one_is_refused(bpe):
  with pytest.raises(UserError, match=r"write \[MASK\]"):
    cloze_ids(bpe, "no mask here")
  with pytest.raises(UserError, match="no mask token"):
    cloze_ids(Tokenizer(bpe.hf, roles={"eos": "<eos>"}), "a [MASK] b")
