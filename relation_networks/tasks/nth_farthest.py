"""Nth-farthest (Santoro et al. 2018): the Relational Memory Core against an LSTM baseline."""

import dataclasses
import typing

import keras
import numpy as np
import tensorflow as tf

from relation_networks import tasks
from relation_networks.config import ConfigError, choice, positive, seed_field
from relation_networks.data import nth_farthest as nf
from relation_networks.errors import DataError
from relation_networks.evaluation import grouped_accuracy
from relation_networks.layers import RelationModule
from relation_networks.models import RelationalMemorySettings, logits_model, mlp, relational_memory
from relation_networks.tasks.base import Task


VAL_SEED = 1_000_001
TEST_SEED = 2_000_003


@dataclasses.dataclass
class NthFarthestData:
    num_vectors: int = positive(8)
    vector_dim: int = positive(16)
    # Width of the id, reference and rank one-hots and number of answer classes (unset: num_vectors). Larger than
    # num_vectors, each sample's ids are a random subset of 0 .. max_vectors - 1: a model trained on fewer vectors
    # then has the shapes of the larger instance and resumes on it (a curriculum over the number of vectors).
    max_vectors: typing.Optional[int] = positive(None)
    # Width of each step's vector (unset: vector_dim): the vectors zero-padded to it, which leaves every distance as
    # it is, so a model trained on fewer dimensions resumes on more (a curriculum over the number of dimensions).
    max_dim: typing.Optional[int] = positive(None)
    train_size: int = positive(100_000)  # fresh samples every epoch, seeded by the run seed and the epoch
    val_size: int = positive(5_000)
    test_size: int = positive(10_000)
    # Validation and test samples come from these fixed seeds; training samples from the run's seed and the epoch
    # (seed * EPOCH_SEED_STRIDE + epoch, a few hundred thousand at most), which these large primes stay clear of.
    # "farthest" (default): rank 1 = the farthest from m, m excluded. "nearest_with_reference": Sonnet's variant,
    # rank 0 = m itself, then nearest first -- its figures compare with Sonnet's and L0SG's.
    ranking: str = choice("farthest", nf.RANKINGS)
    val_seed: int = seed_field(VAL_SEED)
    test_seed: int = seed_field(TEST_SEED)

    def __post_init__(self):
        if self.val_seed == self.test_seed:
            raise ConfigError(f"'data.val_seed' and 'data.test_seed' must differ (both {self.val_seed}): the "
                              "validation samples would be the test samples.")


@dataclasses.dataclass
class NthFarthestModel(RelationalMemorySettings):
    type: str = choice("rmc", ("rmc", "lstm", "rn"))
    lstm_units: int = positive(512)  # the LSTM baseline
    # type "rn": a Relation Network over the set of vectors (each `[vector, one-hot id]`), conditioned on the
    # question `[one-hot m, one-hot n - 1]`; f_phi is mlp_units + the linear logits. A non-recurrent reference
    # that sees all vectors at once.
    g_units: typing.List[int] = positive([256, 256, 256], nonempty=True)
    mlp_units: typing.List[int] = positive([256, 256], nonempty=True)  # head, + linear logits
    # rmc / lstm: ReLU layers applied to every time step's input before the recurrent core (none by default), so
    # the core receives non-linear features of each vector (its length, say) and not only a linear projection.
    input_mlp_units: typing.List[int] = positive([])
    # rmc / lstm: layer-normalise every step's input (after the input MLP) before the core. At initialisation the
    # RMC's memory hardly depends on an input of the input MLP's scale (tools/diagnostics/probe_nth_farthest.py
    # --input_dependence; docs/nth_farthest.md).
    input_norm: bool = False


def id_width(data_config):
    """The one-hots' width and number of answer classes: `data.max_vectors`, or `data.num_vectors` if unset."""
    try:
        return nf.id_width(data_config.num_vectors, data_config.max_vectors)
    except ValueError as e:
        raise ConfigError(f"data.max_vectors ({data_config.max_vectors}) must be at least data.num_vectors "
                          f"({data_config.num_vectors}), or unset.") from e


def vector_width(data_config):
    """Width of each step's vector: `data.max_dim`, or `data.vector_dim` if unset."""
    try:
        return nf.vector_width(data_config.vector_dim, data_config.max_dim)
    except ValueError as e:
        raise ConfigError(f"data.max_dim ({data_config.max_dim}) must be at least data.vector_dim "
                          f"({data_config.vector_dim}), or unset.") from e


def build_model(model_config, data_config):
    """Input `sequence` float32 `[B, num_vectors, vector_width + 3 * ids]`, output logits over the `ids`
    (`id_width`). The recurrent core is unrolled over the fixed sequence length (TFLite builtin ops, dynamic batch);
    its weights do not depend on that length, so a run resumes with another `data.num_vectors` of the same
    `id_width`, or another `data.vector_dim` of the same `vector_width`."""
    steps, ids, dims = data_config.num_vectors, id_width(data_config), vector_width(data_config)
    sequence = keras.Input((steps, dims + 3 * ids), name="sequence")
    if model_config.type == "rn":
        if model_config.input_mlp_units or model_config.input_norm:
            raise ConfigError("model.input_mlp_units and model.input_norm are for the recurrent models (rmc, lstm); "
                              "the rn reads the vectors as they are.")
        width = dims + ids
        objects, question = sequence[:, :, :width], sequence[:, 0, width:]  # the question is on every step
        logits = RelationModule(model_config.g_units, list(model_config.mlp_units) + [ids],
                                name="relation_module")(objects, question=question)
        return logits_model({"sequence": sequence}, logits, "nth_farthest_rn")
    steps_in = mlp(sequence, model_config.input_mlp_units, "input_mlp")
    if model_config.input_norm:
        steps_in = keras.layers.LayerNormalization(name="input_norm")(steps_in)
    if model_config.type == "rmc":
        h = keras.layers.RNN(relational_memory(model_config), unroll=True, name="rmc")(steps_in)
    else:
        h = keras.layers.LSTM(model_config.lstm_units, unroll=True, name="lstm")(steps_in)
    logits = keras.layers.Dense(ids, name="answer")(mlp(h, model_config.mlp_units, "mlp"))
    return logits_model({"sequence": sequence}, logits, f"nth_farthest_{model_config.type}")


@tasks.register
class NthFarthest(Task):
    name = "nth_farthest"
    data_config = NthFarthestData
    model_config = NthFarthestModel

    def samples(self, config, split, seed=0):
        """`nf.generate`'s dict for a split: val and test from their fixed seeds, train from `seed` (the epoch's)."""
        d = config.data
        sizes = {"train": d.train_size, "val": d.val_size, "test": d.test_size}
        if split not in sizes:
            raise DataError(f"Unknown nth_farthest split {split!r}; expected train, val or test.")
        seed = {"train": seed, "val": d.val_seed, "test": d.test_seed}[split]
        return nf.generate(sizes[split], seed, d.num_vectors, d.vector_dim, id_width(d), vector_width(d),
                           ranking=d.ranking)

    def num_examples(self, config, split):
        return {"train": config.data.train_size, "val": config.data.val_size, "test": config.data.test_size}[split]

    def dataset(self, config, split, *, training=False, shuffle=None, seed=0, input_context=None):
        # Training samples are drawn afresh for every epoch (the trainer's seed changes with the epoch); they are
        # already in random order, so `shuffle` has nothing to do.
        data = self.samples(config, split, seed)
        ds = tf.data.Dataset.from_tensor_slices(({"sequence": data["inputs"]}, data["answers"]))
        ds = self.shard(ds, input_context)
        return ds

    def build_model(self, config):
        return build_model(config.model, config.data)

    def answer_names(self, config):
        return [f"vector {i}" for i in range(id_width(config.data))]

    def paper_results(self, config):
        """The RRNN paper's 91% is for the RMC on 8 vectors of 16 dims: no reference for other instances."""
        paper_instance = (config.data.num_vectors, config.data.vector_dim) == (8, 16)
        return {"accuracy": 0.91} if config.model.type == "rmc" and paper_instance else {}

    def metric_names(self, config):
        return ["accuracy"]

    def evaluate(self, predict_fn, config, split, batch_size=256):
        features, labels, logits = self.predictions(predict_fn, config, split, batch_size)
        rank = self.samples(config, split)["rank"]
        correct = logits.argmax(-1) == labels
        groups = grouped_accuracy(correct, rank - 1, [f"rank_{n}" for n in range(1, config.data.num_vectors)])
        return self.report(config, split, len(labels), {"accuracy": float(np.mean(correct))}, groups, labels=labels,
                           logits=logits)
