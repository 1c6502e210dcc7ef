"""The model: config, layers, attention and the Transformer."""

from lmjax.model.config import (Activation, AttentionImpl, ClassifierPooling, ContextParallel,
                                Head, ModelConfig, Norm, NormPosition, PoolerActivation, Positions,
                                Remat, RopeScaling)
from lmjax.model.families import Family, family_names, register_family
from lmjax.model.pipeline import PipelineSchedule
from lmjax.model.presets import PRESET_NAMES, preset
from lmjax.model.transformer import Cache, Transformer, init_cache, param_shapes, unrolled

__all__ = [
    "Activation", "AttentionImpl", "Cache", "ClassifierPooling", "ContextParallel", "Family",
    "Head", "ModelConfig", "Norm", "NormPosition", "PipelineSchedule", "PoolerActivation",
    "Positions", "PRESET_NAMES", "Remat", "RopeScaling", "Transformer", "family_names",
    "init_cache", "param_shapes", "preset",
    "register_family", "unrolled",
]
