"""Inference at the token-id level: sampling from causal models, filling masks, scoring,
classifying. No tokenizer and no file I/O here: the CLI does those.

    continuations = generate(model, params, [[5, 17, 3], [8]], max_new_tokens=32, temperature=0)
    for new_ids in stream_generate(model, params, prompts, max_new_tokens=256, chunk=8): ...
    candidates = fill_mask(model, params, [101, 7, 103, 9, 102], mask_id=103, top_k=5)
    log_likelihoods = score(model, params, input_ids, attention_mask)
    probabilities = classify(model, params, input_ids, attention_mask, token_type_ids)
"""

from lmjax.generate.decode import generate, stream_generate
from lmjax.generate.sampling import filter_logits
from lmjax.generate.scoring import classify, continuation_log_likelihoods, fill_mask, score

__all__ = ["classify", "continuation_log_likelihoods", "fill_mask", "filter_logits", "generate",
           "score", "stream_generate"]
