"""Pieces shared by the task model builders."""

import keras


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
