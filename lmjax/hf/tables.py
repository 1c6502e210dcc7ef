"""HF activation names (`hidden_act`, `activation_function`, …) and their exact lmjax
equivalents, both ways."""

from __future__ import annotations

from lmjax.model.config import Activation

# HF `hidden_act` / `activation_function` names with the exact lmjax equivalent.
ACTIVATIONS: dict[str, Activation] = {
    "gelu_new": Activation.GELU_TANH, "gelu_pytorch_tanh": Activation.GELU_TANH,
    "gelu": Activation.GELU, "silu": Activation.SILU, "swish": Activation.SILU,
    "relu": Activation.RELU,
}
ACTIVATION_NAMES = {Activation.GELU_TANH: "gelu_new", Activation.GELU: "gelu",
                    Activation.SILU: "silu", Activation.RELU: "relu"}

__all__ = ["ACTIVATIONS", "ACTIVATION_NAMES"]
