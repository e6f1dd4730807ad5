"""Sentence objects for text tasks (Santoro et al. 2017, section 4, "Dealing with text")."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="relation_networks")
class SentenceObjects(keras.layers.Layer):
    """Encode each support sentence with one shared LSTM; tag its final state with the sentence's position.

    Args:
        vocab_size: number of token ids (0 is padding).
        embedding_dim: word embedding width.
        units: LSTM units.
        unroll: unroll the LSTM over the (fixed) sentence length. Unrolled LSTMs convert to TFLite builtin ops
            with a dynamic batch (a Keras 3 LSTM loop otherwise needs `tf.TensorListReserve`, a Flex op).
        embeddings_initializer: initializer of the word embeddings (Keras' default `"uniform"` draws from
            [-0.05, 0.05]; `keras.initializers.RandomNormal(stddev=1.0)` gives unit-scale words).
        trim: drop the trailing sentence slots that are absent in every example of the batch before encoding, so
            the objects are `[batch, k, units + sentences]` with `k` one past the last slot present anywhere in
            the batch (the position one-hot keeps its full width, so the weights do not depend on `k`). A model
            that masks absent objects computes the same outputs, with work growing with `k` instead of
            `sentences` -- e.g. a Relation Network's `k^2` pairs. The output's second dimension is then dynamic.

    Call arguments:
        context: int `[batch, sentences, length]` token ids, each sentence left-padded with 0 so the LSTM's final
            state follows its last word; a sentence of all 0 is absent.

    Returns:
        `(objects, object_mask)`: objects `[batch, sentences, units + sentences]` (final LSTM state followed by a
        one-hot of the sentence's position, oldest first) and object_mask `[batch, sentences]` (1 = present);
        `k` rows instead of `sentences` with `trim`.
    """

    def __init__(self, vocab_size, embedding_dim=32, units=32, unroll=True, trim=False,
                 embeddings_initializer="uniform", **kwargs):
        super().__init__(**kwargs)
        for name, value in (("vocab_size", vocab_size), ("embedding_dim", embedding_dim), ("units", units)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid value for argument {name}: expected a positive integer, got {value!r}.")
        self.vocab_size, self.embedding_dim, self.units, self.unroll = vocab_size, embedding_dim, units, bool(unroll)
        self.trim = bool(trim)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embedding = keras.layers.Embedding(
            vocab_size, embedding_dim, embeddings_initializer=self.embeddings_initializer, name="embedding",
            dtype=self.dtype_policy)
        self.lstm = keras.layers.LSTM(units, unroll=self.unroll, name="lstm", dtype=self.dtype_policy)

    def build(self, context_shape):
        if len(context_shape) != 3 or context_shape[1] is None or context_shape[2] is None:
            raise ValueError(f"SentenceObjects expects context [batch, sentences, length] with static sizes, got {context_shape}.")
        self.embedding.build((None, context_shape[2]))
        self.lstm.build((None, context_shape[2], self.embedding_dim))

    def call(self, context):
        sentences, length = context.shape[1], context.shape[2]
        present = ops.any(ops.not_equal(context, 0), axis=-1)  # [B, S]
        if self.trim:
            slots = ops.arange(1, sentences + 1, dtype="int32")
            k = ops.maximum(ops.max(ops.where(ops.any(present, axis=0), slots, ops.zeros_like(slots))), 1)
            context, present = context[:, :k], present[:, :k]
        rows = ops.shape(context)[1]
        flat = ops.reshape(context, (-1, length))
        states = ops.reshape(self.lstm(self.embedding(flat)), (-1, rows, self.units))
        positions = ops.eye(sentences, dtype=states.dtype)[:rows]  # the slots kept, each tagged among all S
        positions = ops.broadcast_to(positions[None], (ops.shape(states)[0], rows, sentences))
        return ops.concatenate([states, positions], axis=-1), ops.cast(present, states.dtype)

    def compute_output_shape(self, context_shape):
        b, s = context_shape[0], context_shape[1]
        rows = None if self.trim else s
        return (b, rows, self.units + s), (b, rows)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, embedding_dim=self.embedding_dim, units=self.units,
                      unroll=self.unroll, trim=self.trim,
                      embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer))
        return config
