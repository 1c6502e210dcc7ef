"""Named model configs. The YAML files in `configs/` refer to these by `model.preset`."""

from __future__ import annotations

from lmjax.model.config import ModelConfig, RopeScaling
from lmjax.model.moe_config import MoeConfig

def _modernbert_windows(layers: int, local_attention: int) -> dict:
  """ModernBERT's local layers: all but every third from layer 0, each key at most
  local_attention // 2 slots away on either side, their RoPE base 10,000 (the global layers'
  is the family's 160,000)."""
  return dict(sliding_window=local_attention // 2 + 1, rope_local_theta=10_000.0,
              sliding_layers=tuple(i for i in range(layers) if i % 3))


_PRESETS: dict[str, dict] = {
    # Small enough to train on a laptop CPU in minutes (the demo and the tests).
    "tiny-gpt": dict(family="gpt2", vocab_size=2048, num_layers=4, embed_dim=128,
                     num_heads=4, mlp_dim=512, max_seq_len=256),
    "tiny-bert": dict(family="bert", vocab_size=2048, num_layers=4, embed_dim=128,
                      num_heads=4, mlp_dim=512, max_seq_len=256),
    # Half tiny-bert's layers, as DistilBERT halves BERT-base's.
    "tiny-distilbert": dict(family="distilbert", vocab_size=2048, num_layers=2,
                            embed_dim=128, num_heads=4, mlp_dim=512, max_seq_len=256),
    "tiny-llama": dict(family="llama", vocab_size=2048, num_layers=4, embed_dim=128,
                       num_heads=4, num_kv_heads=2, mlp_dim=384, max_seq_len=256),
    # Heads wider than embed_dim / num_heads, as Qwen3's (4 x 64 = 256 query dims from 128).
    "tiny-qwen3": dict(family="qwen3", vocab_size=2048, num_layers=4, embed_dim=128,
                       num_heads=4, num_kv_heads=2, head_dim=64, mlp_dim=384, max_seq_len=256,
                       tie_embeddings=True),
    # Gemma 2's layout: local (sliding-window) layers alternating with global ones, from layer 0.
    "tiny-gemma2": dict(family="gemma2", vocab_size=2048, num_layers=4, embed_dim=128,
                        num_heads=4, num_kv_heads=2, head_dim=64, mlp_dim=384, max_seq_len=256,
                        sliding_window=64, sliding_layers=(0, 2)),
    # Gemma 3's layout: five local layers (their own RoPE base) to one global, QK-norm.
    "tiny-gemma3": dict(family="gemma3", vocab_size=2048, num_layers=6, embed_dim=128,
                        num_heads=4, num_kv_heads=1, head_dim=64, mlp_dim=384, max_seq_len=256,
                        sliding_window=64, sliding_layers=(0, 1, 2, 3, 4),
                        rope_local_theta=10_000.0),
    # Mixtral's layout at tiny-llama's size: 4 experts of tiny-llama's MLP width, 2 per token.
    "tiny-mixtral": dict(family="mixtral", vocab_size=2048, num_layers=4, embed_dim=128,
                         num_heads=4, num_kv_heads=2, mlp_dim=192, max_seq_len=256,
                         moe=MoeConfig(num_experts=4, experts_per_token=2)),
    # ModernBERT's layout: every third layer global from layer 0, the others local (a window of
    # 32 slots either side, their own RoPE base), at tiny-bert's width.
    "tiny-modernbert": dict(family="modernbert", vocab_size=2048, num_layers=4,
                            embed_dim=128, num_heads=4, mlp_dim=192, max_seq_len=256,
                            **_modernbert_windows(4, 64)),
    # Published architectures.
    "gpt2-small": dict(family="gpt2", vocab_size=50257, num_layers=12, embed_dim=768,
                       num_heads=12, mlp_dim=3072, max_seq_len=1024),
    "gpt2-medium": dict(family="gpt2", vocab_size=50257, num_layers=24, embed_dim=1024,
                        num_heads=16, mlp_dim=4096, max_seq_len=1024),
    "bert-base": dict(family="bert", vocab_size=30522, num_layers=12, embed_dim=768,
                      num_heads=12, mlp_dim=3072, max_seq_len=512),
    "bert-large": dict(family="bert", vocab_size=30522, num_layers=24, embed_dim=1024,
                       num_heads=16, mlp_dim=4096, max_seq_len=512),
    "distilbert-base": dict(family="distilbert", vocab_size=30522, num_layers=6,
                            embed_dim=768, num_heads=12, mlp_dim=3072, max_seq_len=512),
    "roberta-base": dict(family="roberta", vocab_size=50265, num_layers=12, embed_dim=768,
                         num_heads=12, mlp_dim=3072, max_seq_len=512),
    "llama-1b": dict(family="llama", vocab_size=128256, num_layers=16, embed_dim=2048,
                     num_heads=32, num_kv_heads=8, mlp_dim=8192, max_seq_len=8192,
                     rope_theta=500_000.0, tie_embeddings=True,  # Llama 3.2 1B
                     rope_scaling=RopeScaling.LLAMA3, rope_scaling_factor=32.0,
                     rope_original_max_len=8192),
    "llama-7b": dict(family="llama", vocab_size=32000, num_layers=32, embed_dim=4096,
                     num_heads=32, mlp_dim=11008, max_seq_len=4096, norm_eps=1e-6),
    "qwen3-0.6b": dict(family="qwen3", vocab_size=151936, num_layers=28, embed_dim=1024,
                       num_heads=16, num_kv_heads=8, head_dim=128, mlp_dim=3072,
                       max_seq_len=40960, rope_theta=1_000_000.0,
                       tie_embeddings=True),  # Qwen3-0.6B
    "gemma2-2b": dict(family="gemma2", vocab_size=256000, num_layers=26, embed_dim=2304,
                      num_heads=8, num_kv_heads=4, head_dim=256, mlp_dim=9216, max_seq_len=8192,
                      sliding_window=4096, sliding_layers=tuple(range(0, 26, 2))),  # Gemma 2 2B
    "gemma3-1b": dict(family="gemma3", vocab_size=262144, num_layers=26, embed_dim=1152,
                      num_heads=4, num_kv_heads=1, head_dim=256, mlp_dim=6912, max_seq_len=32768,
                      sliding_window=512, rope_theta=1_000_000.0, rope_local_theta=10_000.0,
                      sliding_layers=tuple(i for i in range(26) if (i + 1) % 6)),  # Gemma 3 1B
    "mixtral-8x7b": dict(family="mixtral", vocab_size=32000, num_layers=32, embed_dim=4096,
                         num_heads=32, num_kv_heads=8, mlp_dim=14336, max_seq_len=32768,
                         rope_theta=1_000_000.0,
                         moe=MoeConfig(num_experts=8, experts_per_token=2,
                                       aux_loss_coef=0.02)),  # Mixtral-8x7B-v0.1
    "qwen3-30b-a3b": dict(family="qwen3_moe", vocab_size=151936, num_layers=48,
                          embed_dim=2048, num_heads=32, num_kv_heads=4, head_dim=128,
                          mlp_dim=6144, max_seq_len=40960, rope_theta=1_000_000.0,
                          moe=MoeConfig(num_experts=128, experts_per_token=8, mlp_dim=768)),
    "modernbert-base": dict(family="modernbert", vocab_size=50368, num_layers=22,
                            embed_dim=768, num_heads=12, mlp_dim=1152, max_seq_len=8192,
                            **_modernbert_windows(22, 128)),  # answerdotai/ModernBERT-base
    "modernbert-large": dict(family="modernbert", vocab_size=50368, num_layers=28,
                             embed_dim=1024, num_heads=16, mlp_dim=2624, max_seq_len=8192,
                             **_modernbert_windows(28, 128)),  # answerdotai/ModernBERT-large
}

PRESET_NAMES = tuple(_PRESETS)


def preset_fields(name: str) -> dict:
  """The fields of preset `name` (family defaults not yet applied)."""
  return dict(_PRESETS[name])


def preset(name: str, **overrides) -> ModelConfig:
  """ModelConfig for preset `name`, e.g. `preset("gpt2-small", scan_layers=False)`."""
  fields = {**preset_fields(name), **overrides}
  return ModelConfig.for_family(fields.pop("family"), **fields)


__all__ = ["PRESET_NAMES", "preset", "preset_fields"]
