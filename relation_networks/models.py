"""Pieces shared by the task model builders."""

import dataclasses
import typing

import keras

from relation_networks.config import choice, positive
from relation_networks.layers import RelationalMemory


@dataclasses.dataclass
class RelationalMemorySettings:
    """The `model:` keys of a Relational Memory Core, shared by every task that offers `type: rmc`."""

    mem_slots: int = 4
    head_size: int = 64
    num_heads: int = 4
    num_blocks: int = 1
    attention_mlp_layers: int = 2
    gate_style: typing.Optional[str] = choice("unit", ("unit", "memory", None))
    forget_bias: float = 1.0
    input_bias: float = 0.0
    key_size: typing.Optional[int] = None
    # Layer-normalise the attention's projected queries, keys and values, as Sonnet does (RelationalMemory's
    # `qkv_norm`; the layer's default too). Runs trained before the option existed set it false.
    qkv_norm: bool = True
    # Sonnet's other choices (RelationalMemory's arguments of the same names): one attention MLP shared by the
    # blocks, layer-norm epsilon 1e-5, kernels from a truncated normal of std 1/sqrt(fan_in) ("sonnet").
    shared_attention_mlp: bool = False
    layer_norm_epsilon: float = positive(1e-3)
    kernel_initializer: str = choice("glorot_uniform", ("glorot_uniform", "sonnet"))


def relational_memory(settings, name="relational_memory"):
    """A `RelationalMemory` cell from a model config holding the `RelationalMemorySettings` keys."""
    return RelationalMemory(
        settings.mem_slots, settings.head_size, num_heads=settings.num_heads, num_blocks=settings.num_blocks,
        forget_bias=settings.forget_bias, input_bias=settings.input_bias, gate_style=settings.gate_style,
        attention_mlp_layers=settings.attention_mlp_layers, key_size=settings.key_size, qkv_norm=settings.qkv_norm,
        shared_attention_mlp=settings.shared_attention_mlp, layer_norm_epsilon=settings.layer_norm_epsilon,
        kernel_initializer=settings.kernel_initializer, name=name,
    )


def mlp(h, units, prefix):
    """Dense ReLU layers named `<prefix>_<k>` applied to `h`."""
    for k, width in enumerate(units):
        h = keras.layers.Dense(width, activation="relu", name=f"{prefix}_{k}")(h)
    return h


def logits_model(inputs, logits, name):
    """A `keras.Model` from named `inputs` (dict) to `logits`, cast to float32 by a final layer named `logits`
    (so mixed-precision models give float32 logits to the loss and the serving signature)."""
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(inputs, logits, name=name)
