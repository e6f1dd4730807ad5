"""Adam with a learning-rate multiplier per layer (`train.lr_multipliers`)."""

import keras

from relation_networks.config import ConfigError


def _is_under(path, key):
    """Whether the variable at `path` belongs to layer path `key`: a whole-name prefix (`"cnn"` matches
    `"cnn/conv_0/kernel"`, not `"cnn2/..."`)."""
    key = key.strip("/")
    return path == key or path.startswith(key + "/")


def multiplier_for(path, lr_multipliers):
    """The multiplier for the variable at `path` (e.g. `"cnn/conv_0/kernel"`): that of the longest key of
    `lr_multipliers` the path is under (see `_is_under`), else 1."""
    matches = [(len(key.strip("/")), float(value)) for key, value in lr_multipliers.items() if _is_under(path, key)]
    return max(matches, key=lambda m: m[0])[1] if matches else 1.0  # first of the longest


@keras.saving.register_keras_serializable(package="relation_networks")
class LayerwiseAdam(keras.optimizers.Adam):
    """Adam whose learning rate is scaled per variable: `lr_multipliers` maps a layer path (the leading
    `/`-separated names of `variable.path`, e.g. `"cnn"` or `"relation_module/g_theta_0"`) to a factor; the
    longest matching key wins and unmatched variables use the base rate (or schedule). A factor of 0 freezes the
    layer. Every key must match some variable, so a misspelt layer name is an error rather than a silent no-op.

        optimizer = LayerwiseAdam(1e-3, lr_multipliers={"cnn": 0.2})  # the CNN learns at 2e-4
    """

    def __init__(self, learning_rate=0.001, lr_multipliers=None, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.lr_multipliers = {str(k): float(v) for k, v in (lr_multipliers or {}).items()}
        bad = {k: v for k, v in self.lr_multipliers.items() if not v >= 0.0}
        if bad:
            raise ConfigError(f"train.lr_multipliers must be >= 0, got {bad}.")
        self._factors = []

    def build(self, variables):
        super().build(variables)
        paths = [v.path for v in variables]
        unused = [k for k in self.lr_multipliers if not any(_is_under(p, k) for p in paths)]
        if unused:
            layers = sorted({p.split("/")[0] for p in paths})
            raise ConfigError(
                f"train.lr_multipliers: no trainable variable under {', '.join(map(repr, unused))}. "
                f"Top-level layers with trainable variables: {', '.join(layers)}."
            )
        self._factors = [multiplier_for(p, self.lr_multipliers) for p in paths]

    def update_step(self, gradient, variable, learning_rate):
        factor = self._factors[self._get_variable_index(variable)] if self._factors else 1.0
        if factor != 1.0:
            learning_rate = keras.ops.multiply(keras.ops.cast(learning_rate, variable.dtype), factor)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "lr_multipliers": dict(self.lr_multipliers)}
