"""Inference: what a trained model is used for.

At the token-id level (no tokenizer, no file I/O): decode (KV-cache sampling in streamed
chunks), sampling (logit processors), scoring (fill-mask, log-likelihoods, classification),
checks. Over text: cloze (a fill-mask prompt's ids), complete (prompts to text, stop strings,
generation_config.json), perplexity (documents in sliding windows: `eval --data`, `score`),
predict (a classifier's labels) and harness (lm-evaluation-harness's `lmjax` model; importing
it registers the model).

    continuations = generate(model, params, [[5, 17, 3], [8]], max_new_tokens=32, temperature=0)
    for new_ids in stream_generate(model, params, prompts, max_new_tokens=256, chunk=8): ...
    candidates = fill_mask(model, params, [101, 7, 103, 9, 102], mask_id=103, top_k=5)
    candidates = fill_mask(model, params, cloze_ids(tokenizer, "An [MASK] is raised."),
                           mask_id=tokenizer.mask_id)
    log_likelihoods = score(model, params, input_ids, attention_mask)
    probabilities = classify(model, params, input_ids, attention_mask, token_type_ids)
"""

from lmjax.infer.cloze import cloze_ids
from lmjax.infer.decode import generate, stream_generate
from lmjax.infer.sampling import filter_logits
from lmjax.infer.scoring import classify, continuation_log_likelihoods, fill_mask, score

__all__ = ["classify", "cloze_ids", "continuation_log_likelihoods", "fill_mask", "filter_logits", "generate",
           "score", "stream_generate"]
