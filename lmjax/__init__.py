"""lmjax: train and convert transformer language models with JAX and Flax.

    m = lmjax.load("runs/demo")                  # or a Hugging Face directory, hub id, GGUF file
    settings = lmjax.resolve_settings({"max_new_tokens": 32, "temperature": 0}, m)  # as --flags
    results = lmjax.complete(m, ["Once upon"], settings)  # results[0].completions[0]: the text
    scores = lmjax.score_texts(m.model, m.params, m.tokenizer, ["Some text."])  # perplexity
    masks = lmjax.fill_mask(m.model, m.params, lmjax.cloze_ids(m.tokenizer, "A [MASK] b."),
                            mask_id=m.tokenizer.mask_id)

Token-level helpers (`generate`, `stream_generate`, `score`, `classify`, `fill_mask`) take ids;
`complete` and `score_texts` take text through the model's tokenizer.
"""

# The families lmjax ships register themselves first: every model.family value comes from them.
import lmjax.hf.families  # noqa: F401  (isort: skip)  registers them
from lmjax.convert import from_hf, to_hf
from lmjax.infer import (classify, cloze_ids, continuation_log_likelihoods, fill_mask, generate,
                         score, stream_generate)
from lmjax.infer.complete import Completion, GenerationSettings, complete, resolve_settings
from lmjax.infer.perplexity import DocumentScore, score_texts
from lmjax.run.loader import Loaded, load, load_run
from lmjax.version import __version__

__all__ = ["Completion", "DocumentScore", "GenerationSettings", "Loaded", "__version__",
           "classify", "cloze_ids", "complete", "continuation_log_likelihoods", "fill_mask",
           "from_hf", "generate", "load", "load_run", "resolve_settings", "score", "score_texts",
           "stream_generate", "to_hf"]
