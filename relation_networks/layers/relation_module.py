"""The Relation Network module of Santoro et al. (2017), equation (1).

    RN(O, q) = f_phi( sum_{i,j} g_theta(o_i, o_j, q) )

`g_theta` is an MLP applied to every ordered pair of objects (conditioned on an optional question vector);
its outputs ("relations") are summed over all pairs and passed through a second MLP `f_phi`.
"""

import keras
from keras import ops

# The aggregations that pool the pairs into one vector (every one but "none"); task configs offer these.
POOLED_AGGREGATIONS = ("sum", "mean", "max", "sum+max", "mean+max")
_AGGREGATIONS = POOLED_AGGREGATIONS + ("none",)


def _check_units(name, units):
    if isinstance(units, int) or not units or not all(isinstance(u, int) and u > 0 for u in units):
        raise ValueError(
            f"Invalid value for argument {name}: expected a non-empty list of positive integers "
            f"(units per layer), got {units!r}."
        )
    return [int(u) for u in units]


@keras.saving.register_keras_serializable(package="relation_networks")
class RelationModule(keras.layers.Layer):
    """Relation Network: `f_phi(sum_{i,j} g_theta(o_i, o_j, q))`.

    The first layer of `g_theta` is linear in the concatenation `[o_i; o_j; q]`, so it is computed in factorized
    form `W_i o_i + W_j o_j + W_q q + b`: one projection per object, broadcast-added over the pair grid. This is
    identical in value to the naive concatenation (`factorized=False`, kept for testing and benchmarks) but costs
    `N*D*H` instead of `N^2*(2D+Q)*H` multiply-adds and never materialises the `[B, N, N, 2D+Q]` pair tensor.
    Both modes share the same weights, so a trained layer can be switched between them.

    Under a mixed precision policy (e.g. `"mixed_bfloat16"`), `g_theta` -- the `N^2` cost -- runs in the compute
    dtype, while the sum over pairs and `f_phi` run in the variable dtype (float32): a bfloat16 sum of 625
    relations is rounded to ~0.4% of its size, more than one pair's whole contribution. With
    `precise_first_layer=True` the first layer of `g_theta` and its activation run in the variable dtype too.

    Args:
        g_units: list of ints, the widths of the layers of `g_theta`; every layer is followed by `activation`.
            The last entry is the width of each pair relation.
        f_units: list of ints, the widths of the layers of `f_phi`. Every layer but the last is followed by
            `activation`; **the last layer is linear** (it produces logits), and its width is the output width.
        dropout: dropout rate applied to the input of the last (linear) layer of `f_phi`, i.e. on the
            penultimate layer of the RN, where the paper puts it. Only active when `training=True`.
        activation: activation of the hidden layers of `g_theta` and `f_phi`.
        aggregation: `"sum"` (the paper) or `"mean"` over the valid pairs. `"mean"` keeps the scale of the
            aggregate independent of the number of objects. `"max"`: the element-wise maximum over the valid pairs
            (zero when there is none) -- an extreme ("the farthest object") is then one relation rather than a
            small part of a sum; `"sum+max"` / `"mean+max"`: both, side by side (`f_phi` reads `2 * g_units[-1]`),
            for questions that count as well as compare. A maximum is not combined with `pair_chunk_size`.
            `"none"`: no aggregation, `f_phi` reads every pair's
            relation on its own and the layer returns one output per pair, `[batch, N, N, f_units[-1]]` (zero for
            masked pairs) -- an edge-level read-out for answers that are themselves per pair (which balls are
            connected). Not combined with `pair_chunk_size`.
        factorized: compute the first layer of `g_theta` per object (default) or on explicit concatenations.
        pair_chunk_size: if set, process the pair grid in blocks of this many rows `i` and recompute each block
            in the backward pass (rematerialisation). Peak memory then grows with `chunk * N` instead of `N^2`,
            for large object counts. Requires a static number of objects and the TensorFlow backend (the
            blocks are recomputed with `tf.custom_gradient`); under another Keras backend it is refused with a
            `ValueError`. Every other option runs on any backend.
        precise_first_layer: under a mixed precision policy, compute the first layer of `g_theta` (objects,
            kernel, the pair sums `W_i o_i + W_j o_j` and the activation) in the variable dtype (float32) and only
            then cast to the compute dtype. For objects whose *differences* carry the signal, e.g. coordinates of
            two balls whose distance barely changes: in bfloat16 each coordinate, and each half of the pair sum,
            is rounded to ~0.4% of its size, which drowns a difference much smaller than that. Costs one float32
            `[B, N, N, g_units[0]]` addition; no effect under a float32 policy.
        return_relations: if True the layer returns `(output, relations)` where `relations` holds every pair's
            `g_theta` output, `[batch, N, N, g_units[-1]]`, zero for masked pairs. Can also be given per call.
        kernel_initializer, bias_initializer: initialisers of every dense kernel / bias.

    Call arguments:
        objects: `[batch, N, D]` float tensor, the object set.
        question: optional `[batch, Q]` conditioning vector, concatenated to every pair.
        object_mask: optional `[batch, N]`, 1 for real objects, 0 for padding. Padded objects take no part in
            any pair.
        pair_mask: optional `[batch, N, N]`, 1 for pairs `(i, j)` to include (the paper's "list of only those pairs
            that should be considered").
        training: bool, enables dropout.
        return_relations: overrides the constructor argument for this call.

    Returns:
        `[batch, f_units[-1]]` (`[batch, N, N, f_units[-1]]` with `aggregation="none"`) in the variable dtype (and
        the relations, in the compute dtype, see
        `return_relations`).
    """

    def __init__(
        self,
        g_units,
        f_units,
        dropout=0.0,
        activation="relu",
        aggregation="sum",
        factorized=True,
        pair_chunk_size=None,
        return_relations=False,
        precise_first_layer=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.g_units = _check_units("g_units", g_units)
        self.f_units = _check_units("f_units", f_units)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"Invalid value for argument dropout: expected a rate in [0, 1), got {dropout!r}.")
        if aggregation not in _AGGREGATIONS:
            raise ValueError(
                f"Invalid value for argument aggregation. Expected one of {set(_AGGREGATIONS)}, got {aggregation!r}."
            )
        if pair_chunk_size is not None and (not isinstance(pair_chunk_size, int) or pair_chunk_size < 1):
            raise ValueError(
                f"Invalid value for argument pair_chunk_size: expected None or a positive integer, "
                f"got {pair_chunk_size!r}."
            )
        if pair_chunk_size is not None and keras.backend.backend() != "tensorflow":
            raise ValueError(
                f"pair_chunk_size={pair_chunk_size!r} needs the TensorFlow backend (the pair blocks are recomputed "
                f"with tf.custom_gradient), but Keras runs on {keras.backend.backend()!r}: leave pair_chunk_size "
                "unset, or set KERAS_BACKEND=tensorflow."
            )
        self.dropout = float(dropout)
        self.activation = keras.activations.get(activation)
        self.aggregation = aggregation
        self.factorized = bool(factorized)
        self.pair_chunk_size = pair_chunk_size
        self.return_relations = bool(return_relations)
        if aggregation == "none" and pair_chunk_size is not None:
            raise ValueError(
                'aggregation="none" returns every pair\'s output, so it cannot be combined with pair_chunk_size '
                f"(got {pair_chunk_size!r})."
            )
        if "max" in aggregation and pair_chunk_size is not None:
            raise ValueError(
                f"aggregation={aggregation!r} takes a maximum over all pairs at once, so it cannot be combined with "
                f"pair_chunk_size (got {pair_chunk_size!r}); chunking is for the sum and the mean."
            )
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

        # g_theta shares this layer's dtype policy (not the global one), so a mixed-precision model reloads intact.
        # The sum over pairs and f_phi run in the variable dtype (float32 under a mixed policy): in bfloat16 (8-bit
        # mantissa) a sum of N^2 relations is rounded to ~0.4% of its size, which for 625 pairs is more than one
        # pair's whole contribution, so the one relation that answers the question would be lost in rounding.
        # f_phi sees one vector per example, so this costs almost nothing.
        self._aggregate_dtype = self.dtype_policy.variable_dtype
        self.precise_first_layer = bool(precise_first_layer)
        self._first_dtype = self._aggregate_dtype if self.precise_first_layer else self.dtype_policy.compute_dtype
        init = dict(kernel_initializer=self.kernel_initializer, bias_initializer=self.bias_initializer)
        self.g_theta = [
            keras.layers.Dense(units, activation=self.activation, name=f"g_theta_{k}", dtype=self.dtype_policy, **init)
            for k, units in enumerate(self.g_units[1:], start=1)
        ]
        f_dtype = self._aggregate_dtype
        self.f_phi = [
            keras.layers.Dense(units, activation=self.activation, name=f"f_phi_{k}", dtype=f_dtype, **init)
            for k, units in enumerate(self.f_units[:-1])
        ]
        self.f_phi.append(
            keras.layers.Dense(self.f_units[-1], name=f"f_phi_{len(self.f_units) - 1}", dtype=f_dtype, **init)
        )
        self.f_dropout = keras.layers.Dropout(self.dropout, name="f_phi_dropout", dtype=f_dtype)

    def build(self, objects_shape, question_shape=None, object_mask_shape=None, pair_mask_shape=None):
        if len(objects_shape) != 3 or objects_shape[-1] is None:
            raise ValueError(
                f"RelationModule expects objects of shape [batch, objects, dim] with a known dim, "
                f"got {tuple(objects_shape)}."
            )
        self._object_dim = int(objects_shape[-1])
        self._question_dim = 0
        if question_shape is not None:
            if len(question_shape) != 2 or question_shape[-1] is None:
                raise ValueError(
                    f"RelationModule expects question of shape [batch, dim], got {tuple(question_shape)}."
                )
            self._question_dim = int(question_shape[-1])
        # One kernel for the concatenation [o_i; o_j; q]: the factorized path slices it, the naive path uses it
        # whole, so the two are the same function of the same weights.
        self.g_kernel = self.add_weight(
            name="g_theta_0_kernel",
            shape=(2 * self._object_dim + self._question_dim, self.g_units[0]),
            initializer=self.kernel_initializer,
        )
        self.g_bias = self.add_weight(name="g_theta_0_bias", shape=(self.g_units[0],), initializer=self.bias_initializer)
        width = self.g_units[0]
        for layer in self.g_theta:
            layer.build((None, width))
            width = layer.units
        if "+" in self.aggregation:  # f_phi reads both aggregates side by side
            width *= 2
        for layer in self.f_phi:
            layer.build((None, width))
            width = layer.units

    @property
    def input_dtype(self):
        """Keras casts float inputs to this before `call`: the first layer's dtype, so that a precise first layer
        sees the objects unrounded."""
        return self._first_dtype

    # -- the pieces of equation (1) -------------------------------------------------------------------------

    def _first_layer_terms(self, objects, question):
        """Per-object halves of g's first layer: `W_i o_i + W_q q + b` `[B, N, H]` and `W_j o_j` `[B, N, H]`."""
        d = self._object_dim
        kernel = ops.cast(self.g_kernel, self._first_dtype)
        left = ops.matmul(objects, kernel[:d]) + ops.cast(self.g_bias, self._first_dtype)
        right = ops.matmul(objects, kernel[d : 2 * d])
        if question is not None:
            left = left + ops.expand_dims(ops.matmul(question, kernel[2 * d :]), 1)
        return left, right

    def _naive_first_layer(self, rows, objects, question):
        """`[o_i; o_j; q] @ W + b` on explicit concatenations, `[B, r, N, H]` for the r objects in `rows`."""
        r, n = ops.shape(rows)[1], ops.shape(objects)[1]
        parts = [
            ops.broadcast_to(ops.expand_dims(rows, 2), (ops.shape(rows)[0], r, n, self._object_dim)),
            ops.broadcast_to(ops.expand_dims(objects, 1), (ops.shape(rows)[0], r, n, self._object_dim)),
        ]
        if question is not None:
            parts.append(
                ops.broadcast_to(question[:, None, None, :], (ops.shape(rows)[0], r, n, self._question_dim))
            )
        pairs = ops.concatenate(parts, axis=-1)
        kernel = ops.cast(self.g_kernel, self._first_dtype)
        return ops.matmul(pairs, kernel) + ops.cast(self.g_bias, self._first_dtype)

    def _g_theta(self, pre_activation):
        """The rest of g_theta on a `[B, r, N, H0]` block of first-layer pre-activations -> `[B, r, N, Hg]`."""
        shape = ops.shape(pre_activation)
        h = ops.cast(ops.reshape(self.activation(pre_activation), (-1, self.g_units[0])), self.compute_dtype)
        for layer in self.g_theta:
            h = layer(h)
        return ops.reshape(h, (shape[0], shape[1], shape[2], self.g_units[-1]))

    def _pair_block(self, left_rows, right, rows, objects, question):
        if self.factorized:
            pre = ops.expand_dims(left_rows, 2) + ops.expand_dims(right, 1)
        else:
            pre = self._naive_first_layer(rows, objects, question)
        return self._g_theta(pre)

    def _chunked_sum(self, left, right, objects, question, weights):
        """`sum_{i,j} w_ij g(o_i, o_j, q)` `[B, Hg]`, computed `pair_chunk_size` rows `i` at a time.

        Memory-bounded in both passes: the forward pass keeps no block's activations, and the backward pass
        recomputes one block at a time inside a `tf.while_loop` (a loop, rather than unrolled blocks or
        `tf.recompute_grad`, so graph optimisation can neither merge the recomputation with the forward pass nor
        run all blocks at once). Peak memory grows with `pair_chunk_size * N` instead of `N^2`.
        """
        import tensorflow as tf

        n, chunk = objects.shape[1], self.pair_chunk_size
        blocks = -(-n // chunk)
        pad = blocks * chunk - n
        if pad:  # padded rows get zero weight: they take part in no pair
            left = tf.pad(left, [[0, 0], [0, pad], [0, 0]])
            weights = tf.pad(weights, [[0, 0], [0, pad], [0, 0]])
            rows_all = tf.pad(objects, [[0, 0], [0, pad], [0, 0]])
        else:
            rows_all = objects
        width = self.g_units[-1]

        def block(k, left, right, rows_all, objects, question, weights):
            start = k * chunk
            left_rows = left[:, start : start + chunk]
            rows = rows_all[:, start : start + chunk]
            q = question if self._question_dim else None
            relations = self._pair_block(left_rows, right, rows, objects, q)
            weighted = relations * weights[:, start : start + chunk, :, None]
            return tf.reduce_sum(tf.cast(weighted, self._aggregate_dtype), axis=[1, 2])

        @tf.custom_gradient
        def chunked(left, right, rows_all, objects, question, weights):
            batch = tf.shape(objects)[0]
            total = tf.while_loop(
                lambda k, acc: k < blocks,
                lambda k, acc: (k + 1, acc + block(k, left, right, rows_all, objects, question, weights)),
                (tf.constant(0), tf.zeros((batch, width), self._aggregate_dtype)),
                parallel_iterations=1,
            )[1]

            def grad(upstream, variables=None):
                variables = list(variables or [])
                inputs = [left, right, rows_all, objects, question, weights]

                def body(k, input_grads, variable_grads):
                    with tf.GradientTape() as tape:
                        tape.watch(inputs)
                        out = block(k, *inputs)
                    g = tape.gradient(out, inputs + variables, output_gradients=upstream,
                                      unconnected_gradients=tf.UnconnectedGradients.ZERO)
                    return (k + 1, [a + b for a, b in zip(input_grads, g[: len(inputs)])],
                            [a + b for a, b in zip(variable_grads, g[len(inputs):])])

                _, input_grads, variable_grads = tf.while_loop(
                    lambda k, *_: k < blocks, body,
                    (tf.constant(0), [tf.zeros_like(x) for x in inputs],
                     [tf.zeros_like(v) for v in variables]),
                    parallel_iterations=1,
                )
                return input_grads, variable_grads

            return total, grad

        return chunked(left, right, rows_all, objects, question, weights)

    def _f_phi(self, h, training):
        """f_phi on `[..., Hg]`: hidden layers, dropout, the linear output layer."""
        for layer in self.f_phi[:-1]:
            h = layer(h)
        return self.f_phi[-1](self.f_dropout(h, training=training))

    def _pair_weights(self, object_mask, pair_mask):
        """`[B, N, N]` weight of every pair (1 = included), or None when every pair counts."""
        weights = None
        if object_mask is not None:
            m = ops.cast(object_mask, self.compute_dtype)
            weights = ops.expand_dims(m, 2) * ops.expand_dims(m, 1)
        if pair_mask is not None:
            p = ops.cast(pair_mask, self.compute_dtype)
            weights = p if weights is None else weights * p
        return weights

    def _max_over_pairs(self, relations, weights):
        """`max_{i,j} g(o_i, o_j, q)` over the included pairs `[B, Hg]` (zero where no pair is included)."""
        relations = ops.cast(relations, self._aggregate_dtype)
        if weights is None:
            return ops.max(relations, axis=(1, 2))
        included = ops.expand_dims(ops.cast(weights, "bool"), -1)
        largest = ops.max(ops.where(included, relations, float("-inf")), axis=(1, 2))
        any_pair = ops.any(included, axis=(1, 2))
        return ops.where(any_pair, largest, ops.zeros_like(largest))

    def call(self, objects, question=None, object_mask=None, pair_mask=None, training=None, return_relations=None):
        return_relations = self.return_relations if return_relations is None else return_relations
        objects = ops.cast(objects, self._first_dtype)
        if question is not None:
            question = ops.cast(question, self._first_dtype)
        left, right = self._first_layer_terms(objects, question)
        weights = self._pair_weights(object_mask, pair_mask)
        n_static = objects.shape[1]

        if self.pair_chunk_size is None or return_relations or (n_static is not None and n_static <= self.pair_chunk_size):
            relations = self._masked(self._pair_block(left, right, objects, objects, question), weights)
            output = self._read_out(relations, weights, training)
            return (output, relations) if return_relations else output
        # Chunked: a sum (or mean) built block by block; never a maximum or "none" (checked in __init__).
        if n_static is None:
            raise ValueError("RelationModule: pair_chunk_size needs a static number of objects (shape[1]).")
        batch = ops.shape(objects)[0]
        block_weights = weights if weights is not None else ops.ones((batch, n_static, n_static), self.compute_dtype)
        block_question = question if question is not None else ops.zeros((batch, 0), self._first_dtype)
        total = self._chunked_sum(left, right, objects, block_question, block_weights)
        return self._f_phi_on_aggregate(self._scale_sum(total, weights, n_static * n_static), training)

    def read_out(self, relations, object_mask=None, pair_mask=None, training=None):
        """The layer's output from its pair relations `[batch, N, N, g_units[-1]]` (those `return_relations`
        gives): the aggregation over the included pairs and `f_phi`, exactly as in `call`. For
        attributions: the gradient of an output with respect to `relations` says how much each pair carried."""
        weights = self._pair_weights(object_mask, pair_mask)
        return self._read_out(self._masked(ops.convert_to_tensor(relations), weights), weights, training)

    @staticmethod
    def _masked(relations, weights):
        """`relations` `[B, N, N, H]` with the pairs `weights` leaves out set to zero."""
        if weights is None:
            return relations
        return relations * ops.expand_dims(ops.cast(weights, relations.dtype), -1)

    def _read_out(self, relations, weights, training):
        """`read_out` of relations already zero for the pairs `weights` leaves out."""
        if self.aggregation == "none":
            output = self._f_phi(ops.cast(relations, self._aggregate_dtype), training)
            if weights is not None:  # f_phi's biases would give masked pairs an output
                output = output * ops.expand_dims(ops.cast(weights, output.dtype), -1)
            return output
        if self.aggregation == "max":
            return self._f_phi_on_aggregate(self._max_over_pairs(relations, weights), training)
        total = ops.sum(ops.cast(relations, self._aggregate_dtype), axis=(1, 2))
        aggregate = self._scale_sum(total, weights, ops.shape(relations)[1] * ops.shape(relations)[2])
        if self.aggregation.endswith("+max"):
            aggregate = ops.concatenate([aggregate, self._max_over_pairs(relations, weights)], axis=-1)
        return self._f_phi_on_aggregate(aggregate, training)

    def _scale_sum(self, total, weights, pairs):
        """The sum over pairs as the aggregation wants it: itself, or divided by the number of included pairs."""
        if not self.aggregation.startswith("mean"):
            return total
        if weights is None:
            return total / ops.cast(pairs, self._aggregate_dtype)
        return total / ops.maximum(ops.sum(ops.cast(weights, self._aggregate_dtype), axis=(1, 2)), 1.0)[:, None]

    def _f_phi_on_aggregate(self, aggregate, training):
        return self._f_phi(aggregate, training)

    def compute_output_shape(self, objects_shape, question_shape=None, object_mask_shape=None, pair_mask_shape=None):
        n = objects_shape[1]
        output = (objects_shape[0], self.f_units[-1])
        if self.aggregation == "none":
            output = (objects_shape[0], n, n, self.f_units[-1])
        if self.return_relations:
            return output, (objects_shape[0], n, n, self.g_units[-1])
        return output

    def get_config(self):
        config = super().get_config()
        config.update(
            g_units=list(self.g_units),
            f_units=list(self.f_units),
            dropout=self.dropout,
            activation=keras.activations.serialize(self.activation),
            aggregation=self.aggregation,
            precise_first_layer=self.precise_first_layer,
            factorized=self.factorized,
            pair_chunk_size=self.pair_chunk_size,
            return_relations=self.return_relations,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config
