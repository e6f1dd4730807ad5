"""The Relational Memory Core (Santoro et al. 2018, "Relational recurrent neural networks", arXiv:1806.01822).

A memory `M` of `mem_slots` rows, each of width `mem_size = head_size * num_heads`. At every time step:

    x~      = W_in x_t                                            (the input, projected to one memory row)
    M~      = [M; x~]                                             (input appended as an extra row)
    repeat num_blocks times:
        M~  = LayerNorm(M~ + MHDPA(M~))                           (multi-head dot-product attention; with
                                                                   qkv_norm, queries, keys and values are
                                                                   layer-normalised together, as in Sonnet)
        M~  = LayerNorm(M~ + MLP(M~))                             (row-wise MLP, attention_mlp_layers deep)
    M'      = M~ without the input row
    i, f    = sigmoid(W_i x~ + U_i tanh(M) + input_bias), sigmoid(W_f x~ + U_f tanh(M) + forget_bias)
    M_t     = i * tanh(M') + f * M                                (LSTM-style gating per unit or per slot)

The output at each step is the flattened memory `[batch, mem_slots * mem_size]` (as in Sonnet).
"""

import numbers

import keras
from keras import ops

_GATE_STYLES = ("unit", "memory", None)


@keras.saving.register_keras_serializable(package="relation_networks")
class FanInTruncatedNormal(keras.initializers.Initializer):
    """Sonnet's default for linear layers: a normal of standard deviation `1 / sqrt(fan_in)` truncated at two
    standard deviations (without Keras's `VarianceScaling` correction of the truncated variance)."""

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        stddev = 1.0 / max(1, int(shape[0])) ** 0.5
        return keras.random.truncated_normal(shape, stddev=stddev, dtype=dtype, seed=self.seed)

    def get_config(self):
        return {"seed": self.seed}


def _initializer(name):
    return FanInTruncatedNormal() if name == "sonnet" else keras.initializers.get(name)


def _is_positive_integer(value):
    """True for a positive Python or NumPy integer (not a bool, not a float such as 4.0)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


@keras.saving.register_keras_serializable(package="relation_networks")
class RelationalMemory(keras.layers.Layer):
    """Relational Memory Core as a Keras RNN cell: use it inside `keras.layers.RNN`.

    Args:
        mem_slots: number of memory rows.
        head_size: width of each attention head's values; the memory width is `head_size * num_heads`.
        num_heads: attention heads.
        num_blocks: attention + MLP blocks per time step.
        forget_bias: added to the forget gate's pre-activation (1.0 keeps memory early in training).
        input_bias: added to the input gate's pre-activation.
        gate_style: `"unit"` (one gate per memory unit), `"memory"` (one gate per slot) or `None` (no gating: the
            memory is replaced by the attended memory each step).
        attention_mlp_layers: depth of the row-wise MLP after attention.
        key_size: width of queries and keys (default: `head_size`).
        qkv_norm: layer-normalise each row's projected queries, keys and values (jointly, over all heads) before
            the attention, as Sonnet's `RelationalMemory` does; this sets the attention logits' scale at
            initialisation independently of the memory's. `False` leaves the projection as it is (the behaviour of
            this layer before the option existed; saved layers without the key load that way).
        shared_attention_mlp: one row-wise MLP for all `num_blocks` blocks, as Sonnet builds it (default: one per
            block). The same with `num_blocks=1`.
        layer_norm_epsilon: epsilon of the attention and MLP layer norms (Keras's 1e-3 by default; Sonnet 1e-5).
        kernel_initializer: initialiser of every kernel: a Keras initialiser (default `"glorot_uniform"`) or
            `"sonnet"`, Sonnet's truncated normal of standard deviation `1 / sqrt(fan_in)` (`FanInTruncatedNormal`).

    With `qkv_norm=True, shared_attention_mlp=True, layer_norm_epsilon=1e-5, kernel_initializer="sonnet"` the layer
    is Sonnet's `RelationalMemory` (tests/test_relational_memory.py checks one step against NumPy).

    Call arguments (as an RNN cell):
        inputs: `[batch, input_dim]`, one time step.
        states: `[memory]`, memory flattened to `[batch, mem_slots * mem_size]`.

    Returns:
        `(output, [new_memory])`, both `[batch, mem_slots * mem_size]`.

    Initial state (`get_initial_state`): each slot is a row of the identity matrix, padded with zeros or truncated
    to `mem_size`.
    """

    def __init__(
        self,
        mem_slots,
        head_size,
        num_heads=1,
        num_blocks=1,
        forget_bias=1.0,
        input_bias=0.0,
        gate_style="unit",
        attention_mlp_layers=2,
        key_size=None,
        qkv_norm=True,
        shared_attention_mlp=False,
        layer_norm_epsilon=1e-3,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("mem_slots", mem_slots), ("head_size", head_size), ("num_heads", num_heads),
                            ("num_blocks", num_blocks), ("attention_mlp_layers", attention_mlp_layers)):
            if not _is_positive_integer(value):
                raise ValueError(f"Invalid value for argument {name}: expected a positive integer, got {value!r}.")
        if key_size is not None and not _is_positive_integer(key_size):
            raise ValueError(f"Invalid value for argument key_size: expected None or a positive integer, got {key_size!r}.")
        if not isinstance(qkv_norm, bool):
            raise ValueError(f"Invalid value for argument qkv_norm: expected True or False, got {qkv_norm!r}.")
        if gate_style not in _GATE_STYLES:
            raise ValueError(
                f"Invalid value for argument gate_style. Expected one of {{'unit', 'memory', None}}, got {gate_style!r}."
            )
        self.mem_slots = int(mem_slots)
        self.head_size = int(head_size)
        self.num_heads = int(num_heads)
        self.num_blocks = int(num_blocks)
        self.forget_bias = float(forget_bias)
        self.input_bias = float(input_bias)
        self.gate_style = gate_style
        self.attention_mlp_layers = int(attention_mlp_layers)
        self.key_size = int(key_size or head_size)
        self.qkv_norm = qkv_norm
        self.shared_attention_mlp = bool(shared_attention_mlp)
        if not float(layer_norm_epsilon) > 0:
            raise ValueError(f"Invalid value for argument layer_norm_epsilon: expected a positive number, got "
                             f"{layer_norm_epsilon!r}.")
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.kernel_initializer = kernel_initializer if isinstance(kernel_initializer, str) else \
            keras.initializers.serialize(keras.initializers.get(kernel_initializer))
        init = dict(kernel_initializer=_initializer(kernel_initializer))
        eps = dict(epsilon=self.layer_norm_epsilon)
        self.mem_size = self.head_size * self.num_heads
        self.state_size = self.mem_slots * self.mem_size
        self.output_size = self.mem_slots * self.mem_size

        policy = dict(dtype=self.dtype_policy)  # sub-layers follow this layer's policy, also after reloading
        self.input_projection = keras.layers.Dense(self.mem_size, name="input_projection", **init, **policy)
        qkv = self.num_heads * (2 * self.key_size + self.head_size)

        def attention_mlp(prefix):
            return [keras.layers.Dense(self.mem_size, activation="relu" if k < attention_mlp_layers - 1 else None,
                                       name=f"{prefix}mlp_{k}", **init, **policy) for k in range(attention_mlp_layers)]

        shared = attention_mlp("") if self.shared_attention_mlp else None
        self.blocks = []
        for b in range(num_blocks):
            self.blocks.append({
                "qkv": keras.layers.Dense(qkv, name=f"block_{b}_qkv", **init, **policy),
                "qkv_norm": keras.layers.LayerNormalization(
                    epsilon=1e-5, name=f"block_{b}_qkv_norm", **policy) if qkv_norm else None,
                "attention_norm": keras.layers.LayerNormalization(name=f"block_{b}_attention_norm", **eps, **policy),
                "mlp": shared or attention_mlp(f"block_{b}_"),
                "mlp_norm": keras.layers.LayerNormalization(name=f"block_{b}_mlp_norm", **eps, **policy),
            })
        if gate_style is not None:
            gates = 2 * (self.mem_size if gate_style == "unit" else 1)
            self.input_gates = keras.layers.Dense(gates, name="input_gates", **init, **policy)
            self.memory_gates = keras.layers.Dense(gates, name="memory_gates", **init, **policy)

    def build(self, input_shape):
        self.input_projection.build((None, input_shape[-1]))
        row = (None, self.mem_size)
        for block in self.blocks:
            block["qkv"].build(row)
            if block["qkv_norm"] is not None:
                block["qkv_norm"].build((None, block["qkv"].units))
            block["attention_norm"].build(row)
            for layer in block["mlp"]:
                if not layer.built:  # a shared MLP is built once
                    layer.build(row)
            block["mlp_norm"].build(row)
        if self.gate_style is not None:
            self.input_gates.build(row)
            self.memory_gates.build(row)

    def get_initial_state(self, batch_size=None):
        eye = ops.eye(self.mem_slots, dtype=self.compute_dtype)
        if self.mem_size > self.mem_slots:
            eye = ops.concatenate([eye, ops.zeros((self.mem_slots, self.mem_size - self.mem_slots), eye.dtype)], axis=1)
        else:
            eye = eye[:, : self.mem_size]
        memory = ops.broadcast_to(ops.reshape(eye, (1, -1)), (batch_size, self.state_size))
        return [memory]

    # -- the steps, named as in the paper -------------------------------------------------------------------------

    def _multihead_attention(self, memory, block):
        """MHDPA over the rows of `memory` `[B, R, M]` -> `[B, R, M]`."""
        rows = ops.shape(memory)[1]
        qkv = block["qkv"](memory)
        if block["qkv_norm"] is not None:
            qkv = block["qkv_norm"](qkv)
        qkv = ops.transpose(ops.reshape(qkv, (-1, rows, self.num_heads, 2 * self.key_size + self.head_size)), (0, 2, 1, 3))
        # Split, not sliced: a slice's gradient scatters into zeros of the whole input (StridedSliceGrad), which took
        # a quarter of a training step on a CPU; the gradient of a split is one concatenation.
        q, k, v = ops.split(qkv, [self.key_size, 2 * self.key_size], axis=-1)
        q = q * (self.key_size**-0.5)
        weights = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))), axis=-1)  # [B, H, R, R]
        attended = ops.matmul(weights, v)  # [B, H, R, head_size]
        return ops.reshape(ops.transpose(attended, (0, 2, 1, 3)), (-1, rows, self.mem_size))

    def _attend_over_memory(self, memory):
        for block in self.blocks:
            memory = block["attention_norm"](memory + self._multihead_attention(memory, block))
            h = memory
            for layer in block["mlp"]:
                h = layer(h)
            memory = block["mlp_norm"](memory + h)
        return memory

    def _create_gates(self, projected_input, memory):
        """Input and forget gates from the projected input `[B, 1, M]` and the previous memory `[B, S, M]`."""
        gates = self.memory_gates(ops.tanh(memory)) + self.input_gates(projected_input)
        input_gate, forget_gate = ops.split(gates, 2, axis=-1)
        return ops.sigmoid(input_gate + self.input_bias), ops.sigmoid(forget_gate + self.forget_bias)

    def call(self, inputs, states, training=None):
        memory = ops.reshape(states[0] if isinstance(states, (list, tuple)) else states, (-1, self.mem_slots, self.mem_size))
        projected = ops.expand_dims(self.input_projection(inputs), 1)  # [B, 1, M]
        attended, _ = ops.split(self._attend_over_memory(ops.concatenate([memory, projected], axis=1)),
                                [self.mem_slots], axis=1)  # the input row dropped (a split, as above)
        if self.gate_style is None:
            next_memory = attended
        else:
            input_gate, forget_gate = self._create_gates(projected, memory)
            next_memory = input_gate * ops.tanh(attended) + forget_gate * memory
        flat = ops.reshape(next_memory, (-1, self.state_size))
        return flat, [flat]

    def get_config(self):
        config = super().get_config()
        config.update(
            mem_slots=self.mem_slots, head_size=self.head_size, num_heads=self.num_heads, num_blocks=self.num_blocks,
            forget_bias=self.forget_bias, input_bias=self.input_bias, gate_style=self.gate_style,
            attention_mlp_layers=self.attention_mlp_layers, key_size=self.key_size, qkv_norm=self.qkv_norm,
            shared_attention_mlp=self.shared_attention_mlp, layer_norm_epsilon=self.layer_norm_epsilon,
            kernel_initializer=self.kernel_initializer,
        )
        return config

    @classmethod
    def from_config(cls, config):
        # Layers saved before `qkv_norm` existed had no normalisation of the projection: they load as they ran.
        return super().from_config({"qkv_norm": False, **config})
