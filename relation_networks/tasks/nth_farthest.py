"""Nth-farthest (Santoro et al. 2018): the Relational Memory Core against an LSTM baseline."""

import dataclasses
import typing

import keras
import numpy as np
import tensorflow as tf

from relation_networks import tasks
from relation_networks.config import ConfigError, choice
from relation_networks.data import nth_farthest as nf
from relation_networks.errors import DataError
from relation_networks.evaluation import grouped_accuracy
from relation_networks.layers import RelationModule
from relation_networks.models import RelationalMemorySettings, logits_model, mlp, relational_memory
from relation_networks.tasks.base import Task


@dataclasses.dataclass
class NthFarthestData:
    num_vectors: int = 8
    vector_dim: int = 16
    train_size: int = 100_000  # fresh samples every epoch, seeded by the run seed and the epoch
    val_size: int = 5_000
    test_size: int = 10_000
    val_seed: int = 1_000_001
    test_seed: int = 2_000_003


@dataclasses.dataclass
class NthFarthestModel(RelationalMemorySettings):
    type: str = choice("rmc", ("rmc", "lstm", "rn"))
    lstm_units: int = 512  # the LSTM baseline
    # type "rn": a Relation Network over the set of vectors (each `[vector, one-hot id]`), conditioned on the
    # question `[one-hot m, one-hot n - 1]`; f_phi is mlp_units + the linear logits. A non-recurrent reference
    # that sees all vectors at once.
    g_units: typing.List[int] = dataclasses.field(default_factory=lambda: [256, 256, 256])
    mlp_units: typing.List[int] = dataclasses.field(default_factory=lambda: [256, 256])  # head, + linear logits
    # rmc / lstm: ReLU layers applied to every time step's input before the recurrent core (none by default), so
    # the core receives non-linear features of each vector (its length, say) and not only a linear projection.
    input_mlp_units: typing.List[int] = dataclasses.field(default_factory=list)
    # rmc / lstm: layer-normalise every step's input (after the input MLP) before the core. At initialisation the
    # RMC's memory hardly depends on an input of the input MLP's scale (tools/probe_nth_farthest.py
    # --input_dependence; docs/RESULTS.md).
    input_norm: bool = False


def build_model(model_config, data_config):
    """Input `sequence` float32 `[B, num_vectors, vector_dim + 3 * num_vectors]`, output logits over the ids.
    The recurrent core is unrolled over the fixed sequence length (TFLite builtin ops, dynamic batch)."""
    steps = data_config.num_vectors
    sequence = keras.Input((steps, nf.input_dim(data_config.num_vectors, data_config.vector_dim)), name="sequence")
    if model_config.type == "rn":
        if model_config.input_mlp_units or model_config.input_norm:
            raise ConfigError("model.input_mlp_units and model.input_norm are for the recurrent models (rmc, lstm); "
                              "the rn reads the vectors as they are.")
        width = data_config.vector_dim + data_config.num_vectors
        objects, question = sequence[:, :, :width], sequence[:, 0, width:]  # the question is on every step
        logits = RelationModule(model_config.g_units, list(model_config.mlp_units) + [data_config.num_vectors],
                                name="relation_module")(objects, question=question)
        return logits_model({"sequence": sequence}, logits, "nth_farthest_rn")
    steps_in = mlp(sequence, model_config.input_mlp_units, "input_mlp")
    if model_config.input_norm:
        steps_in = keras.layers.LayerNormalization(name="input_norm")(steps_in)
    if model_config.type == "rmc":
        h = keras.layers.RNN(relational_memory(model_config), unroll=True, name="rmc")(steps_in)
    else:
        h = keras.layers.LSTM(model_config.lstm_units, unroll=True, name="lstm")(steps_in)
    logits = keras.layers.Dense(data_config.num_vectors, name="answer")(mlp(h, model_config.mlp_units, "mlp"))
    return logits_model({"sequence": sequence}, logits, f"nth_farthest_{model_config.type}")


@tasks.register
class NthFarthest(Task):
    name = "nth_farthest"
    data_config = NthFarthestData
    model_config = NthFarthestModel

    def _samples(self, config, split, seed):
        d = config.data
        sizes = {"train": d.train_size, "val": d.val_size, "test": d.test_size}
        if split not in sizes:
            raise DataError(f"Unknown nth_farthest split {split!r}; expected train, val or test.")
        seed = {"train": seed, "val": d.val_seed, "test": d.test_seed}[split]
        return nf.generate(sizes[split], seed, d.num_vectors, d.vector_dim)

    def num_examples(self, config, split):
        return {"train": config.data.train_size, "val": config.data.val_size, "test": config.data.test_size}[split]

    def dataset(self, config, split, *, training=False, shuffle=None, seed=0, input_context=None):
        # Training samples are drawn afresh for every epoch (the trainer's seed changes with the epoch); they are
        # already in random order, so `shuffle` has nothing to do.
        data = self._samples(config, split, seed)
        ds = tf.data.Dataset.from_tensor_slices(({"sequence": data["inputs"]}, data["answers"]))
        ds = self.shard(ds, input_context)
        return ds

    def build_model(self, config):
        return build_model(config.model, config.data)

    def answer_names(self, config):
        return [f"vector {i}" for i in range(config.data.num_vectors)]

    def paper_results(self, config):
        """The RRNN paper's 91% is for the RMC on 8 vectors of 16 dims: no reference for other instances."""
        paper_instance = (config.data.num_vectors, config.data.vector_dim) == (8, 16)
        return {"accuracy": 0.91} if config.model.type == "rmc" and paper_instance else {}

    def evaluate(self, predict_fn, config, split, batch_size=256):
        features, labels, logits = self.predictions(predict_fn, config, split, batch_size)
        rank = self._samples(config, split, 0)["rank"]
        correct = logits.argmax(-1) == labels
        groups = grouped_accuracy(correct, rank - 1, [f"rank_{n}" for n in range(1, config.data.num_vectors)])
        return self.report(config, split, len(labels), {"accuracy": float(np.mean(correct))}, groups)
