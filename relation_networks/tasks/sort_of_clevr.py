"""Sort-of-CLEVR from pixels (paper section 5.3, appendix D): CNN+RN and the CNN+MLP baseline."""

import dataclasses
import json
import os
import typing

import keras
import tensorflow as tf

from relation_networks import tasks
from relation_networks.config import choice
from relation_networks.data import sort_of_clevr as soc
from relation_networks.errors import DataError
from relation_networks.evaluation import grouped_accuracy, mean_of_groups
from relation_networks.layers import ConvObjectExtractor, RelationModule
from relation_networks.models import logits_model, mlp
from relation_networks.tasks.base import Task

SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class SortOfClevrData:
    dir: str = "data/sort_of_clevr"  # generated once per seed, under a sub-directory named for the parameters
    seed: int = 0  # train + val images come from one generation with this seed
    train_images: int = 9800
    val_images: int = 200  # the paper withholds 200 of 10,000 images
    test_seed: int = 1000  # the test split is a separate generation
    test_images: int = 2000
    min_distance_gap: float = 1.0  # closest/furthest must win by this many pixels (no ties)
    question_shuffle_buffer: int = 4000  # questions are shuffled within this window after shuffling images


@dataclasses.dataclass
class SortOfClevrModel:
    type: str = choice("rn", ("rn", "mlp"))
    conv_filters: typing.List[int] = dataclasses.field(default_factory=lambda: [32, 64, 128, 256])
    g_units: typing.List[int] = dataclasses.field(default_factory=lambda: [2000] * 4)
    # Hidden layers of f_phi; a linear layer with one logit per answer is appended. The CNN+MLP baseline uses
    # g_units + f_units as its hidden layers (the same layers and units as the RN, as in the paper).
    f_units: typing.List[int] = dataclasses.field(default_factory=lambda: [2000, 1000, 500, 100])
    dropout: float = 0.0
    aggregation: str = choice("sum", ("sum", "mean"))
    factorized: bool = True
    pair_chunk_size: typing.Optional[int] = None
    bn_momentum: float = 0.9
    synchronized_bn: bool = False


def build_model(model_config, name="sort_of_clevr"):
    """CNN+RN or CNN+MLP: inputs `image` uint8 `[B, 75, 75, 3]` and `question` float32 `[B, 11]`,
    output float32 answer logits `[B, len(ANSWERS)]`."""
    image = keras.Input((soc.IMAGE_SIZE, soc.IMAGE_SIZE, 3), dtype="uint8", name="image")
    question = keras.Input((soc.QUESTION_DIM,), dtype="float32", name="question")
    pixels = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(image)
    cnn = ConvObjectExtractor(
        model_config.conv_filters,
        bn_momentum=model_config.bn_momentum,
        synchronized_bn=model_config.synchronized_bn,
        output_mode="objects" if model_config.type == "rn" else "feature_map",
        name="cnn",
    )
    if model_config.type == "rn":
        logits = RelationModule(
            model_config.g_units,
            list(model_config.f_units) + [len(soc.ANSWERS)],
            dropout=model_config.dropout,
            aggregation=model_config.aggregation,
            factorized=model_config.factorized,
            pair_chunk_size=model_config.pair_chunk_size,
            name="relation_module",
        )(cnn(pixels), question=question)
    else:
        h = keras.layers.Concatenate(name="image_and_question")(
            [keras.layers.Flatten(name="flatten")(cnn(pixels)), question]
        )
        h = mlp(h, list(model_config.g_units) + list(model_config.f_units), "mlp")
        if model_config.dropout:
            h = keras.layers.Dropout(model_config.dropout, name="mlp_dropout")(h)
        logits = keras.layers.Dense(len(soc.ANSWERS), name="mlp_logits")(h)
    return logits_model({"image": image, "question": question}, logits, f"{name}_{model_config.type}")


@tasks.register
class SortOfClevr(Task):
    name = "sort_of_clevr"
    data_config = SortOfClevrData
    model_config = SortOfClevrModel

    def _directory(self, data):
        return soc.dataset_dir(
            data.dir, data.seed, data.train_images, data.val_images, data.test_seed, data.test_images,
            data.min_distance_gap,
        )

    def prepare(self, config, log=print):
        d = config.data
        soc.prepare(
            d.dir, d.seed, d.train_images, d.val_images, d.test_seed, d.test_images, d.min_distance_gap, log=log
        )

    def _manifest(self, config):
        path = os.path.join(self._directory(config.data), "manifest.json")
        if not os.path.exists(path):
            raise DataError(
                f"No Sort-of-CLEVR data at {os.path.dirname(path)}: generate it with "
                f"`python tools/train.py --config ...` (it generates on first use) or check data.dir."
            )
        with open(path) as f:
            return json.load(f)

    def num_examples(self, config, split):
        return self._manifest(config)["images"][self._check_split(split)] * soc.QUESTIONS_PER_IMAGE

    def _check_split(self, split):
        if split not in SPLITS:
            raise DataError(f"Unknown Sort-of-CLEVR split {split!r}; expected one of {', '.join(SPLITS)}.")
        return split

    def dataset(self, config, split, *, training=False, shuffle=None, seed=0, input_context=None):
        self._manifest(config)
        shuffle = training if shuffle is None else shuffle
        path = os.path.join(self._directory(config.data), f"{self._check_split(split)}.tfrecord")
        images = tf.data.TFRecordDataset(path).map(soc.parse_example, num_parallel_calls=tf.data.AUTOTUNE).cache()
        if shuffle:
            images = images.shuffle(100_000, seed=seed, reshuffle_each_iteration=False)

        def questions_of(record):
            n = soc.QUESTIONS_PER_IMAGE
            features = {"image": tf.repeat(record["image"][None], n, axis=0), "question": record["questions"]}
            return tf.data.Dataset.from_tensor_slices((features, tf.cast(record["answers"], tf.int32)))

        examples = images.flat_map(questions_of)
        if shuffle:
            examples = examples.shuffle(config.data.question_shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=False)
        # Shard after the (identically seeded) shuffle, per question: every worker gets a disjoint, equally sized
        # share of each epoch whatever the number of images.
        if input_context is not None and input_context.num_input_pipelines > 1:
            examples = examples.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        return examples

    def build_model(self, config):
        return build_model(config.model)

    def answer_names(self, config):
        return list(soc.ANSWERS)

    def paper_results(self, config):
        if config.model.type == "rn":
            return {"relational": 0.94, "non_relational": 0.94}  # paper: "> 94%" on both
        return {"relational": 0.63, "closest_furthest": 0.523}

    def evaluate(self, predict_fn, config, split, batch_size=256):
        features, labels, logits = self.predictions(predict_fn, config, split, batch_size)
        correct = logits.argmax(-1) == labels
        groups = grouped_accuracy(correct, soc.subtype_index(features["question"]), soc.SUBTYPE_NAMES)
        metrics = {"accuracy": float(correct.mean())}
        for key, names in (
            ("non_relational", soc.SUBTYPES["non_relational"]),
            ("relational", soc.SUBTYPES["relational"]),
            ("closest_furthest", ["closest", "furthest"]),
        ):
            value = mean_of_groups(groups, names)
            if value is not None:
                metrics[key] = value
        return self.report(config, split, len(labels), metrics, groups)
