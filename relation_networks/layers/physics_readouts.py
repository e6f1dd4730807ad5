"""Read-out layers of the physics models (paper section 5.5; docs/physics.md): ball identities, per-pair connection
logits, a fixed counter of connected systems, and per-ball context from pair messages. Registered under the
`relation_networks` package name, so models saved when they lived in `relation_networks.tasks.physics` load."""

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="relation_networks")
class BallIdentity(keras.layers.Layer):
    """Replaces the last feature of each ball, its colour value `k / (num_balls - 1)`, by a one-hot of k.

    `[B, num_balls, d]` -> `[B, num_balls, d - 1 + num_balls]`.
    """

    def __init__(self, num_balls, **kwargs):
        super().__init__(**kwargs)
        self.num_balls = int(num_balls)

    def call(self, balls):
        value = balls[..., -1]
        index = keras.ops.cast(keras.ops.round(value * (self.num_balls - 1)), "int32")
        identity = keras.ops.one_hot(index, self.num_balls, dtype=balls.dtype)
        return keras.ops.concatenate([balls[..., :-1], identity], axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (input_shape[-1] - 1 + self.num_balls,)

    def get_config(self):
        return {**super().get_config(), "num_balls": self.num_balls}


@keras.saving.register_keras_serializable(package="relation_networks")
class PairLogits(keras.layers.Layer):
    """Per-pair logits `[B, n, n, 1]` -> connection logits `[B, n * n]` (row-major): the mean of the (i, j) and
    (j, i) logits (a link has no direction), and a fixed "no link" on the diagonal (no ball is linked to itself)."""

    NO_LINK = -30.0  # sigmoid(-30) ~ 1e-13

    def call(self, pair_logits):
        logits = pair_logits[..., 0]
        logits = 0.5 * (logits + keras.ops.transpose(logits, (0, 2, 1)))
        n = logits.shape[-1]
        eye = keras.ops.eye(n, dtype=logits.dtype)
        logits = logits * (1.0 - eye) + self.NO_LINK * eye
        return keras.ops.reshape(logits, (-1, n * n))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] * input_shape[2])


@keras.saving.register_keras_serializable(package="relation_networks")
class SystemCount(keras.layers.Layer):
    """Link logits `[B, n * n]` (as `PairLogits` outputs them) -> count logits `[B, n]` (class k: k + 1 systems).

    The number of connected systems implied by soft links, in three fixed steps with two learned scalars (an offset
    and a scale):

    1. `p = sigmoid(logits + offset)`: the probability that each pair is linked. `offset` is a trainable scalar
       that starts at `initial_offset` (-2.5: about 8% of the pairs are linked in these scenes), so that at the
       start most pairs look unlinked and the count is not saturated at one system.
    2. Transitive closure by the most probable path, `r_ij` = the largest product of link probabilities along a
       path from i to j: start from `p` with ones on the diagonal, and `closure_steps` times replace `r_ij` by
       `max_k r_ik r_kj` (k = i and k = j keep `r_ij` itself). Each step doubles the longest path covered:
       ceil(log2(n - 1)) steps reach across any system. With hard 0/1 links this is exactly reachability. (A soft
       OR over the paths, `1 - prod_k (1 - r_ik r_kj)`, counts the same paths again at every step as if they were
       independent: at the starting 8% per pair it already makes every ball reachable from every other, and the
       count sticks at one system with no gradient.)
    3. `count = sum_i 1 / sum_j r_ij`: each ball contributes one over the size of its system, so every system
       adds up to one. With hard links this is exactly the number of connected components.

    Class `k` (k + 1 systems) gets the logit `-scale * (count - (k + 1))**2` (`scale` trainable, positive): the
    arg max is the integer nearest the count, and the cross-entropy pulls the count towards the label.
    """

    def __init__(self, initial_offset=-2.5, closure_steps=None, **kwargs):
        super().__init__(**kwargs)
        self.initial_offset = float(initial_offset)
        self.closure_steps = None if closure_steps is None else int(closure_steps)

    def build(self, input_shape):
        self.num_balls = int(round(input_shape[-1] ** 0.5))
        if self.num_balls * self.num_balls != input_shape[-1]:
            raise ValueError(f"SystemCount expects num_balls**2 link logits, got {input_shape[-1]}.")
        self.offset = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.initial_offset),
                                      name="offset")
        self.log_scale = self.add_weight(shape=(), initializer="zeros", name="log_scale")

    def _steps(self):
        if self.closure_steps is not None:
            return self.closure_steps
        return max(int(np.ceil(np.log2(max(self.num_balls - 1, 1)))), 0)

    def link_probabilities(self, link_logits):
        """Step 1: the probability `[B, n, n]` that each pair is linked (float32)."""
        if not self.built:  # called directly rather than through __call__
            self.build(link_logits.shape)
        links = keras.ops.sigmoid(keras.ops.cast(link_logits, "float32") + self.offset)
        return keras.ops.reshape(links, (-1, self.num_balls, self.num_balls))

    def count(self, link_logits):
        """The soft number of systems `[B]` (float32)."""
        links = self.link_probabilities(link_logits)
        eye = keras.ops.eye(self.num_balls, dtype="float32")
        reach = links * (1.0 - eye) + eye
        for _ in range(self._steps()):
            reach = keras.ops.max(reach[:, :, :, None] * reach[:, None, :, :], axis=2)  # [B, i, k, j] = r_ik r_kj
        return keras.ops.sum(1.0 / keras.ops.sum(reach, axis=-1), axis=-1)

    def call(self, link_logits):
        count = self.count(link_logits)
        classes = keras.ops.arange(1, self.num_balls + 1, dtype="float32")
        return -keras.ops.exp(self.log_scale) * keras.ops.square(count[:, None] - classes[None, :])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], int(round(input_shape[-1] ** 0.5)))

    def get_config(self):
        return {**super().get_config(), "initial_offset": self.initial_offset, "closure_steps": self.closure_steps}


@keras.saving.register_keras_serializable(package="relation_networks")
class PairContext(keras.layers.Layer):
    """Objects `[B, n, d]` and per-pair messages `[B, n, n, c]` -> `[B, n, d + c]`: each object's row with the mean
    of the messages of its pairs `(i, j)`, `j != i`, appended."""

    def call(self, objects, messages):
        n = messages.shape[1]
        off_diagonal = 1.0 - keras.ops.eye(n, dtype=messages.dtype)
        context = keras.ops.sum(messages * off_diagonal[None, :, :, None], axis=2) / max(n - 1, 1)
        return keras.ops.concatenate([objects, keras.ops.cast(context, objects.dtype)], axis=-1)

    def compute_output_shape(self, objects_shape, messages_shape):
        return tuple(objects_shape[:-1]) + (objects_shape[-1] + messages_shape[-1],)
