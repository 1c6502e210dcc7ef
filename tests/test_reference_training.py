"""Training dynamics against PyTorch: the same initial weights, batches and optimizer settings
give `transformers`' BertForMaskedLM and GPT2LMHeadModel the same loss curve as lmjax.

lmjax initialises the model; `lmjax.to_hf` hands the same weights to PyTorch. Both sides train on
identical batches (contiguous windows of the built-in corpus, one document per row, MLM masks
drawn once by lmjax's own masking) with AdamW, linear warmup and cosine decay, global-norm
clipping and no weight decay on biases and norm scales, in float32 with dropout off. The
per-step losses must agree to 1e-3 relative over 60 steps (DESIGN.md's policy).
"""

import math

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lmjax  # noqa: E402
from lmjax.config import load_config  # noqa: E402
from lmjax.data.examples.masking import mask_tokens_for_mlm  # noqa: E402
from lmjax.data.sources.documents import builtin_corpus  # noqa: E402
from lmjax.data.tokenize.tokenizer import Tokenizer  # noqa: E402
from lmjax.sharding import mesh_rules  # noqa: E402
from lmjax.train.setup import setup_step  # noqa: E402
from lmjax.train.state import create_train_state  # noqa: E402

STEPS, BATCH, SEQ = 60, 8, 32
SETTINGS = ["model.num_layers=2", "model.embed_dim=64", "model.num_heads=4", "model.mlp_dim=128",
            "model.vocab_size=288", "model.max_seq_len=64", "model.dropout_rate=0.0",
            f"train.seq_len={SEQ}", f"train.batch_size={BATCH}", f"train.steps={STEPS}",
            "train.learning_rate=2e-3", "train.warmup_steps=10", "train.weight_decay=0.1",
            "train.grad_clip=1.0", "data.tokenizer=byte"]


def reference_batches(masked: bool):
  """STEPS batches of BATCH windows of SEQ byte tokens (one document per row), MLM-masked."""
  tokenizer = Tokenizer.byte_level()
  stream = np.concatenate(tokenizer.encode_batch(builtin_corpus())[:40])
  rng = np.random.default_rng(0)
  batches = []
  for step in range(STEPS):
    starts = rng.integers(0, len(stream) - SEQ, BATCH)
    ids = np.stack([stream[s:s + SEQ] for s in starts]).astype(np.int32)  # [batch, seq]
    batch = {"input_ids": ids, "segment_ids": np.ones_like(ids),
             "positions": np.broadcast_to(np.arange(SEQ, dtype=np.int32), ids.shape).copy()}
    if masked:
      batch.update(mask_tokens_for_mlm(np.random.default_rng([1, step]), ids,
                                       maskable=np.ones_like(ids, bool), mask_id=tokenizer.mask_id,
                                       vocab_size=288))
    batches.append(batch)
  return batches


def lmjax_curve(config, batches):
  """Losses of lmjax's own jitted train step, and the initial params."""
  placement = mesh_rules(config.mesh)
  setup = setup_step(config, placement)
  state = create_train_state(setup.model, setup.tx, placement, seed=0, seq_len=SEQ)
  initial = jax.device_get(state.params)
  losses = []
  for batch in batches:
    state, metrics = setup.step(state, placement.shard_batch(batch, BATCH))
    losses.append(float(metrics["loss"]))
  return losses, setup.model, initial


def torch_curve(model, config, batches, *, masked: bool):
  """The same training in PyTorch: AdamW with lmjax's schedule, clipping and decay mask."""
  train = config.train
  decay, no_decay, seen = [], [], set()
  for module in model.modules():
    for name, param in module.named_parameters(recurse=False):
      if id(param) in seen:  # tied weights: the embedding and the decoder, their biases
        continue
      seen.add(id(param))
      is_norm = isinstance(module, torch.nn.LayerNorm)
      (no_decay if name == "bias" or is_norm else decay).append(param)
  optimizer = torch.optim.AdamW(
      [{"params": decay, "weight_decay": train.weight_decay},
       {"params": no_decay, "weight_decay": 0.0}],
      lr=train.learning_rate, betas=(train.adam_b1, train.adam_b2), eps=train.adam_eps)
  end = train.min_learning_rate_ratio

  def factor(step):  # optax.warmup_cosine_decay_schedule over train.steps, as a fraction of peak
    if step < train.warmup_steps:
      return step / train.warmup_steps
    progress = (step - train.warmup_steps) / (train.steps - train.warmup_steps)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))

  schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
  losses = []
  model.train()
  for batch in batches:
    ids = torch.tensor(batch["input_ids"], dtype=torch.long)
    if masked:
      labels = torch.where(torch.tensor(batch["target_weights"]) > 0,
                           torch.tensor(batch["targets"], dtype=torch.long), -100)
      loss = model(input_ids=ids, labels=labels).loss  # ids: the corrupted (masked) input
    else:
      loss = model(input_ids=ids, labels=ids).loss
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
    optimizer.step()
    schedule.step()
    losses.append(float(loss.detach()))
  return losses


@pytest.mark.parametrize("name, masked, hf_class", [
    ("tiny-bert", True, "BertForMaskedLM"),
    ("tiny-gpt", False, "GPT2LMHeadModel"),
])
def test_the_loss_curve_equals_transformers_trained_the_same_way(tmp_path, name, masked,
                                                                  hf_class):
  config = load_config(name, SETTINGS)
  batches = reference_batches(masked)
  ours, model, initial = lmjax_curve(config, batches)
  lmjax.to_hf(model, initial, tmp_path / "hf")
  theirs = torch_curve(getattr(transformers, hf_class).from_pretrained(tmp_path / "hf"),
                       config, batches, masked=masked)
  np.testing.assert_allclose(ours, theirs, rtol=1e-3)
  assert ours[-1] < ours[0] - 0.5  # it learned: the comparison is not of two flat lines
