"""Sort-of-CLEVR from pixels (paper section 5.3, appendix D): CNN+RN and the CNN+MLP baseline."""

import dataclasses
import os
import typing

import keras
import numpy as np
import tensorflow as tf

from relation_networks import tasks
from relation_networks.config import ConfigError, bounded, choice, positive, seed_field
from relation_networks.data import sort_of_clevr as soc
from relation_networks.errors import DataError
from relation_networks.evaluation import grouped_accuracy, mean_of_groups
from relation_networks.layers import POOLED_AGGREGATIONS, ConvObjectExtractor, RelationModule
from relation_networks.layers.conv_objects import NORM_ORDERS
from relation_networks.tasks.base import Task

SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class SortOfClevrData:
    dir: str = "data/sort_of_clevr"  # generated once per seed, under a sub-directory named for the parameters
    seed: int = seed_field(0)  # train + val images come from one generation with this seed
    train_images: int = positive(9800)
    val_images: int = positive(200)  # the paper withholds 200 of 10,000 images
    test_seed: int = seed_field(1000)  # the test split is a separate generation (another seed than `seed`)
    test_images: int = positive(2000)
    # closest/furthest must win by this many pixels (no ties); above soc.MAX_DISTANCE_GAP almost no layout passes
    min_distance_gap: float = bounded(1.0, low=0.0, high=soc.MAX_DISTANCE_GAP)
    question_shuffle_buffer: int = positive(4000)  # questions are shuffled within this window after shuffling images
    # Training only: questions about one image that go into a batch together, so the CNN encodes the image once
    # for all of them (a batch of 64 = 16 images x 4 questions). 1 = every question with its own copy of the
    # image, as in the paper. Must divide 20 and the batch per replica. Evaluation is always per question.
    group_questions: int = positive(4)

    def __post_init__(self):
        if self.test_seed == self.seed:
            raise ConfigError(f"'data.test_seed' must differ from 'data.seed' (both {self.seed}): the test images would "
                              "repeat the training images.")
        if soc.QUESTIONS_PER_IMAGE % self.group_questions:
            raise ConfigError(f"'data.group_questions' must divide the {soc.QUESTIONS_PER_IMAGE} questions of an image, "
                              f"got {self.group_questions}.")


@dataclasses.dataclass
class SortOfClevrModel:
    type: str = choice("rn", ("rn", "mlp"))
    conv_filters: typing.List[int] = positive([32, 64, 128, 256], nonempty=True)
    g_units: typing.List[int] = positive([2000] * 4, nonempty=True)
    # Hidden layers of f_phi; a linear layer with one logit per answer is appended. The CNN+MLP baseline uses
    # g_units + f_units as its hidden layers (the same layers and units as the RN, as in the paper).
    f_units: typing.List[int] = positive([2000, 1000, 500, 100], nonempty=True)
    dropout: float = bounded(0.0, low=0.0, below=1.0)
    aggregation: str = choice("sum", POOLED_AGGREGATIONS)
    factorized: bool = True
    pair_chunk_size: typing.Optional[int] = positive(None)
    bn_momentum: float = 0.9
    synchronized_bn: bool = False
    # ConvObjectExtractor(film_layers=...): conv layers modulated by the question (FiLM); [] = the paper's CNN,
    # which sees only the image. With any, the CNN runs once per question (data.group_questions saves no CNN work).
    film_layers: typing.List[int] = dataclasses.field(default_factory=list)
    # ConvObjectExtractor(input_coordinates=...): each pixel's (row, col) as two more input channels, so the conv
    # features can say where in its 15-pixel cell an object is (closest/furthest between near-equal distances).
    input_coordinates: bool = False
    # ConvObjectExtractor(norm_order=...): "bn_relu" (conv -> BN -> ReLU) or "relu_bn" (conv with bias -> ReLU ->
    # BN, as kimhc6028/relational-networks); the paper names both parts but not their order.
    norm_order: str = choice("bn_relu", NORM_ORDERS)


def relation_module(model_config):
    """The CNN+RN's RelationModule for `model_config`: objects (+ question) -> one logit per answer."""
    return RelationModule(
        model_config.g_units,
        list(model_config.f_units) + [len(soc.ANSWERS)],
        dropout=model_config.dropout,
        aggregation=model_config.aggregation,
        factorized=model_config.factorized,
        pair_chunk_size=model_config.pair_chunk_size,
        name="relation_module",
    )


def _layers(model_config):
    """The model's layers by name (built by `build_model`, fetched back by `training_forward`)."""
    layers = {
        "rescale": keras.layers.Rescaling(1.0 / 255.0, name="rescale"),
        "cnn": ConvObjectExtractor(
            model_config.conv_filters,
            bn_momentum=model_config.bn_momentum,
            synchronized_bn=model_config.synchronized_bn,
            output_mode="objects" if model_config.type == "rn" else "feature_map",
            film_layers=model_config.film_layers,
            input_coordinates=model_config.input_coordinates,
            norm_order=model_config.norm_order,
            name="cnn",
        ),
        "logits": keras.layers.Activation("linear", dtype="float32", name="logits"),
    }
    if model_config.type == "rn":
        layers["relation_module"] = relation_module(model_config)
    else:
        layers["flatten"] = keras.layers.Flatten(name="flatten")
        layers["image_and_question"] = keras.layers.Concatenate(name="image_and_question")
        units = list(model_config.g_units) + list(model_config.f_units)
        for k, width in enumerate(units):
            layers[f"mlp_{k}"] = keras.layers.Dense(width, activation="relu", name=f"mlp_{k}")
        layers["mlp_dropout"] = keras.layers.Dropout(model_config.dropout, name="mlp_dropout")
        layers["mlp_logits"] = keras.layers.Dense(len(soc.ANSWERS), name="mlp_logits")
    return layers


def _logits(layers, model_config, image, question, training=None, questions_per_image=1):
    """Answer logits for uint8 `image` `[B, 75, 75, 3]` and `question` `[B * questions_per_image, 11]`: the CNN
    runs once per image and its output is repeated for that image's consecutive questions (once per question
    when it is conditioned on the question, `model_config.film_layers`)."""
    image = layers["rescale"](image)
    if model_config.film_layers:
        if questions_per_image > 1:
            image = keras.ops.repeat(image, questions_per_image, axis=0)
        features = layers["cnn"](image, condition=question, training=training)
    else:
        features = layers["cnn"](image, training=training)
        if questions_per_image > 1:
            features = keras.ops.repeat(features, questions_per_image, axis=0)
    if model_config.type == "rn":
        logits = layers["relation_module"](features, question=question, training=training)
    else:
        h = layers["image_and_question"]([layers["flatten"](features), question])
        for k in range(len(model_config.g_units) + len(model_config.f_units)):
            h = layers[f"mlp_{k}"](h)
        if model_config.dropout:
            h = layers["mlp_dropout"](h, training=training)
        logits = layers["mlp_logits"](h)
    return layers["logits"](logits)


# Closest/furthest accuracy by the answer's margin (`soc.answer_margin`, pixels; objects are 11 px wide and the
# CNN's cells 15 px): are the errors near-ties, which need a precise position, or choices of the wrong object?
MARGIN_BINS = [("under 2 px", 2.0), ("2-4 px", 4.0), ("4-8 px", 8.0), ("8-16 px", 16.0), ("16 px or more", np.inf),
               ("one shape only", None)]


def _margin_bins(margins):
    """Index into `MARGIN_BINS` of each margin; -1 (no bin) for NaN (not a closest/furthest question)."""
    bins = np.full(len(margins), -1)
    lower = 0.0
    for index, (_, upper) in enumerate(MARGIN_BINS):
        if upper is None:
            bins[np.isinf(margins)] = index
        else:
            bins[(margins >= lower) & (margins < upper)] = index
            lower = upper
    return bins


def build_model(model_config, name="sort_of_clevr"):
    """CNN+RN or CNN+MLP: inputs `image` uint8 `[B, 75, 75, 3]` and `question` float32 `[B, 11]`,
    output float32 answer logits `[B, len(ANSWERS)]`."""
    image = keras.Input((soc.IMAGE_SIZE, soc.IMAGE_SIZE, 3), dtype="uint8", name="image")
    question = keras.Input((soc.QUESTION_DIM,), dtype="float32", name="question")
    logits = _logits(_layers(model_config), model_config, image, question)
    return keras.Model({"image": image, "question": question}, logits, name=f"{name}_{model_config.type}")


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
        return soc.read_manifest(os.path.dirname(path))

    def num_examples(self, config, split):
        return self._manifest(config)["images"][self._check_split(split)] * soc.QUESTIONS_PER_IMAGE

    def _check_split(self, split):
        if split not in SPLITS:
            raise DataError(f"Unknown Sort-of-CLEVR split {split!r}; expected one of {', '.join(SPLITS)}.")
        return split

    def images(self, config, split):
        """The stored records of a split, one per image: a cached `tf.data.Dataset` of dicts with `image`
        `[75, 75, 3]` uint8, `questions` `[20, 11]`, `answers` `[20]` and the object table `objects` `[6, 4]`
        (colour index, centre x, centre y, shape index), as written by `prepare`."""
        self._manifest(config)
        path = os.path.join(self._directory(config.data), f"{self._check_split(split)}.tfrecord")
        return tf.data.TFRecordDataset(path).map(soc.parse_example, num_parallel_calls=tf.data.AUTOTUNE).cache()

    def dataset(self, config, split, *, training=False, shuffle=None, seed=0, input_context=None):
        shuffle = training if shuffle is None else shuffle
        images = self.images(config, split)
        if shuffle:
            images = images.shuffle(100_000, seed=seed, reshuffle_each_iteration=False)

        def questions_of(record):
            n = soc.QUESTIONS_PER_IMAGE
            features = {"image": tf.repeat(record["image"][None], n, axis=0), "question": record["questions"]}
            return tf.data.Dataset.from_tensor_slices((features, tf.cast(record["answers"], tf.int32)))

        examples = images.flat_map(questions_of)
        if shuffle:
            examples = examples.shuffle(config.data.question_shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=False)
        return self.shard(examples, input_context)

    def training_group_size(self, config):
        k = config.data.group_questions
        if k < 1 or soc.QUESTIONS_PER_IMAGE % k:
            raise ConfigError(
                f"data.group_questions must divide the {soc.QUESTIONS_PER_IMAGE} questions per image, got {k}."
            )
        return k

    def training_dataset(self, config, *, seed=0, input_context=None):
        k = self.training_group_size(config)
        shuffle = config.train.shuffle
        if k == 1:
            return super().training_dataset(config, seed=seed, input_context=input_context)
        images = self.images(config, "train").enumerate()
        if shuffle:
            images = images.shuffle(100_000, seed=seed, reshuffle_each_iteration=False)

        def groups_of(index, record):
            order = tf.range(soc.QUESTIONS_PER_IMAGE)
            if shuffle:  # a fresh split of this image's questions into groups every epoch
                noise = tf.random.stateless_uniform([soc.QUESTIONS_PER_IMAGE], seed=tf.stack([tf.cast(seed, tf.int64), index]))
                order = tf.argsort(noise)
            groups = soc.QUESTIONS_PER_IMAGE // k
            questions = tf.reshape(tf.gather(record["questions"], order), (groups, k, soc.QUESTION_DIM))
            answers = tf.reshape(tf.cast(tf.gather(record["answers"], order), tf.int32), (groups, k))
            features = {"image": tf.repeat(record["image"][None], groups, axis=0), "question": questions}
            return tf.data.Dataset.from_tensor_slices((features, answers))

        examples = images.flat_map(groups_of)
        if shuffle:
            buffer = max(1, config.data.question_shuffle_buffer // k)
            examples = examples.shuffle(buffer, seed=seed + 1, reshuffle_each_iteration=False)
        return self.shard(examples, input_context)

    def training_forward(self, config, model):
        k = self.training_group_size(config)
        if k == 1:
            return super().training_forward(config, model)
        layers = {layer.name: layer for layer in model.layers}

        @tf.autograph.experimental.do_not_convert  # plain tensor code: nothing for AutoGraph to convert
        def forward(features, training):
            questions = tf.reshape(features["question"], (-1, soc.QUESTION_DIM))
            logits = _logits(layers, config.model, features["image"], questions, training, questions_per_image=k)
            return tf.reshape(logits, (-1, k, len(soc.ANSWERS)))

        return forward

    def build_model(self, config):
        return build_model(config.model)

    def answer_names(self, config):
        return list(soc.ANSWERS)

    def paper_results(self, config):
        if config.model.type == "rn":
            return {"relational": 0.94, "non_relational": 0.94}  # paper: "> 94%" on both
        return {"relational": 0.63, "closest_furthest": 0.523}

    def metric_names(self, config):
        return ["accuracy", "non_relational", "relational", "closest_furthest"]

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
        # Per subtype and question colour: a model that has not bound the question's colour to an object is
        # near its prior for every colour; one that has is not (JSON only; the printed table skips it).
        colours = soc.colour_index(features["question"])
        subtypes = soc.subtype_index(features["question"])
        by_colour = {}
        for k, name in enumerate(soc.SUBTYPE_NAMES):
            asked = subtypes == k
            if asked.any():
                groups_k = grouped_accuracy(correct[asked], colours[asked], soc.COLORS)
                by_colour[name] = {colour: g["accuracy"] for colour, g in groups_k.items()}
        extra = {"accuracy_by_colour": by_colour}
        margins = self._answer_margins(config, split, features["question"])
        if margins is not None:
            extra["closest_furthest_by_margin"] = grouped_accuracy(
                correct, _margin_bins(margins), [name for name, _ in MARGIN_BINS]
            )
        return self.report(config, split, len(labels), metrics, groups, extra=extra, labels=labels, logits=logits)

    def _answer_margins(self, config, split, questions):
        """`soc.answer_margin` of every question of a split in `dataset` order (20 per image, images in file
        order), or None when the questions do not line up with the stored images (e.g. a sharded split)."""
        objects = np.stack([record["objects"] for record in self.images(config, split).as_numpy_iterator()])
        if len(questions) != len(objects) * soc.QUESTIONS_PER_IMAGE:
            return None
        per_question = np.repeat(objects, soc.QUESTIONS_PER_IMAGE, axis=0)
        return np.array([soc.answer_margin(o, q) for o, q in zip(per_question, questions)])
