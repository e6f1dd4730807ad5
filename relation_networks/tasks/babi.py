"""bAbI, all 20 tasks trained jointly (paper section 5.4, appendix E).

Splits: `train` and `val` are the training files with `data.val_fraction` of each task's questions held out
(seeded); `test` reads the official `qa<N>_*_test.txt` files from `data.dir`. The vocabulary (words and answers)
comes from the training files only and is saved as `vocab.json` in the model's directory (run or export), so a
model is always evaluated with the vocabulary it was trained with.
"""

import dataclasses
import functools
import json
import os
import re
import typing

import keras
import numpy as np
import tensorflow as tf

from relation_networks import tasks
from relation_networks.config import ConfigError, bounded, choice, positive, seed_field
from relation_networks.data import babi
from relation_networks.errors import DataError
from relation_networks.evaluation import grouped_accuracy
from relation_networks.io import atomic_write_json
from relation_networks.layers import POOLED_AGGREGATIONS, RelationModule, SentenceObjects
from relation_networks.models import RelationalMemorySettings, logits_model, mlp, relational_memory
from relation_networks.tasks.base import Task

VOCAB_FILE = "vocab.json"
PASS_THRESHOLD = 0.95
# The paper's joint RN (appendix E, table 3): tasks 2 and 3 failed (by 3.1 and 11.5 points), 18/20 passed.
PAPER = {"qa2": 0.919, "qa3": 0.835, "qa16": 0.979}


@dataclasses.dataclass
class BabiData:
    dir: str = "data/babi/en-10k"  # the official en-10k directory (set it in the config)
    tasks: typing.List[int] = dataclasses.field(default_factory=lambda: list(range(1, 21)))
    val_fraction: float = bounded(0.1, above=0.0, below=1.0)
    split_seed: int = seed_field(0)
    max_sentences: int = positive(20)
    sentence_length: int = positive(12)
    question_length: int = positive(12)
    # Training batches of similar story lengths (0 = plain shuffle): each epoch's shuffled questions are cut into
    # windows of `length_window` batches, sorted by their number of sentences within a window, and the batches
    # are shuffled. With `model.trim` a batch then costs what its longest story needs, not `max_sentences`.
    length_window: int = bounded(0, low=0)
    # Training only (default: none): per task, groups of words with interchangeable roles, e.g. qa16's names,
    # animals and colours: {qa16: [[lily, bernhard, greg, julius, brian], [swan, lion, frog, rhino], ...]}. Each
    # training question of the task gets each group's words renamed by a random permutation of the group, drawn
    # afresh every epoch, alike in its story, question and answer (`babi.interchange_words`). Validation and test
    # questions are never changed.
    interchangeable: typing.Dict[str, typing.List[typing.List[str]]] = dataclasses.field(default_factory=dict)
    # Training only (default: none): per task, how many times each of its training questions appears in an epoch,
    # e.g. {qa16: 4} for a task that joint training leaves behind. With `interchangeable` every copy is renamed
    # afresh. Validation and test questions appear once.
    repeats: typing.Dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name, count in self.repeats.items():
            self._check_task_key(f"data.repeats.{name}", name)
            if count < 1:
                raise ConfigError(f"'data.repeats.{name}': must be a whole number >= 1, got {count!r}.")
        for name, groups in self.interchangeable.items():
            key = f"data.interchangeable.{name}"
            self._check_task_key(key, name)
            words = [w for group in groups for w in group]
            if not groups or any(len(set(group)) < 2 or len(set(group)) < len(group) for group in groups):
                raise ConfigError(f"'{key}': every group needs two or more distinct words, got {groups}.")
            if len(set(words)) < len(words):
                raise ConfigError(f"'{key}': a word may be in one group only, got {groups}.")

    def _check_task_key(self, key, name):
        match = re.fullmatch(r"qa(\d+)", name)
        if not match or int(match.group(1)) not in self.tasks:
            raise ConfigError(f"'{key}': keys are tasks of data.tasks named qa<N>, got {name!r}.")


@dataclasses.dataclass
class BabiModel(RelationalMemorySettings):
    # rn: the paper's RN over the sentence objects. rmc: a Relational Memory Core reads the same sentence objects
    # one per step (each with the question appended; absent sentences are skipped), then f_units + logits on its
    # final memory (the RMC keys: RelationalMemorySettings). lstm: the RMC's baseline, an LSTM of lstm_units reading
    # the same steps, then f_units + logits on its final state.
    type: str = choice("rn", ("rn", "rmc", "lstm"))
    lstm_units: int = positive(256)
    embedding_dim: int = positive(32)
    # Initial word embeddings of the sentence and question LSTMs: "uniform" is Keras' default, U(-0.05, 0.05);
    # "normal" is N(0, 1) (PyTorch's default scale), which makes the untrained sentence encodings differ from one
    # sentence to the next -- without it qa19 (path finding) never leaves chance (docs/babi.md).
    embedding_init: str = choice("uniform", ("uniform", "normal"))
    sentence_lstm: int = positive(32)
    question_lstm: int = positive(32)
    g_units: typing.List[int] = positive([256] * 4, nonempty=True)
    f_units: typing.List[int] = positive([256, 512], nonempty=True)  # + linear answer logits
    dropout: float = bounded(0.0, low=0.0, below=1.0)
    aggregation: str = choice("sum", POOLED_AGGREGATIONS)
    # RN only: objects stop at the last sentence slot present in the batch (`SentenceObjects(trim=True)`): the
    # same outputs, with k^2 pairs for a batch whose longest story has k sentences instead of max_sentences^2.
    trim: bool = True


def build_model(model_config, data_config, vocab):
    """Inputs `context` int32 `[B, S, L]` and `question` int32 `[B, Lq]` (left-padded token ids, 0 = padding),
    output answer logits `[B, len(vocab.answers)]`.

    One LSTM encodes every support sentence (`SentenceObjects`); its final state, tagged with a one-hot of the
    sentence's position, is an object; absent sentences are masked out of the RN. A separate embedding and LSTM
    encode the question. The LSTMs are unrolled over the fixed lengths, which keeps them convertible to TFLite
    builtin ops with a dynamic batch.
    """
    context = keras.Input((data_config.max_sentences, data_config.sentence_length), dtype="int32", name="context")
    question = keras.Input((data_config.question_length,), dtype="int32", name="question")
    # One unseeded Keras initializer instance draws the same values at each call: with "normal" a word starts as the
    # same vector in the sentences and in the question (the two embeddings are trained apart from there).
    initializer = keras.initializers.RandomNormal(stddev=1.0) if model_config.embedding_init == "normal" else "uniform"
    objects, object_mask = SentenceObjects(
        len(vocab.words), model_config.embedding_dim, model_config.sentence_lstm,
        trim=model_config.trim and model_config.type == "rn", embeddings_initializer=initializer,
        name="sentence_objects",
    )(context)
    embedded = keras.layers.Embedding(len(vocab.words), model_config.embedding_dim, embeddings_initializer=initializer,
                                      name="question_embedding")(question)
    q = keras.layers.LSTM(model_config.question_lstm, unroll=True, name="question_lstm")(embedded)
    if model_config.type in ("rmc", "lstm"):
        steps = keras.layers.Concatenate(name="sentence_and_question")(
            [objects, keras.layers.RepeatVector(data_config.max_sentences, name="question_per_step")(q)])
        reader = (keras.layers.RNN(relational_memory(model_config), unroll=True, name="rmc")
                  if model_config.type == "rmc" else keras.layers.LSTM(model_config.lstm_units, unroll=True, name="lstm"))
        memory = reader(steps, mask=keras.ops.cast(object_mask, "bool"))
        logits = keras.layers.Dense(len(vocab.answers), name="answer")(mlp(memory, model_config.f_units, "f_phi"))
        return logits_model({"context": context, "question": question}, logits, f"babi_{model_config.type}")
    logits = RelationModule(
        model_config.g_units, list(model_config.f_units) + [len(vocab.answers)], dropout=model_config.dropout,
        aggregation=model_config.aggregation, name="relation_module",
    )(objects, question=q, object_mask=object_mask)
    return logits_model({"context": context, "question": question}, logits, "babi_rn")


def _examples(arrays, rows=slice(None)):
    """`(features, answers)` of the given rows of `Babi.encoded` arrays, features keyed by the model's inputs."""
    return {"context": arrays["context"][rows], "question": arrays["question"][rows]}, arrays["answer"][rows]


def repeated_rows(task_ids, repeats):
    """Row indices into `Babi.encoded` arrays (task ids `task_ids`) with those of task N present `repeats["qaN"]`
    times: every row in order, then the copies."""
    extra = [np.flatnonzero(task_ids == int(name[2:])) for name, count in sorted(repeats.items())
             for _ in range(count - 1)]
    return np.concatenate([np.arange(len(task_ids))] + extra)


def story_lengths(context):
    """One past the last sentence slot present in each example of a `[n, sentences, length]` context array."""
    present = (context != 0).any(axis=-1)
    return np.where(present.any(axis=-1), present.shape[1] - np.argmax(present[:, ::-1], axis=-1), 0)


def length_grouped_order(lengths, candidates, batch_size, window, seed):
    """A permutation of `candidates` (indices into `lengths`) whose consecutive runs of `batch_size` are batches of
    similar length: shuffled (seeded), cut into windows of `window` batches, sorted by length within a window,
    and the whole batches shuffled; a final partial batch stays last (the trainer drops it)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(candidates)
    span = window * batch_size
    order = np.concatenate([
        chunk[np.argsort(lengths[chunk], kind="stable")] for chunk in np.split(order, range(span, len(order), span))
    ])
    full = len(order) // batch_size
    batches = order[: full * batch_size].reshape(full, batch_size)[rng.permutation(full)]
    return np.concatenate([batches.reshape(-1), order[full * batch_size :]])


@functools.lru_cache(maxsize=8)
def _questions(directory, split, task_list, max_context):
    return babi.load_split(directory, split, list(task_list), max_context=max_context)


@tasks.register
class Babi(Task):
    name = "babi"
    data_config = BabiData
    model_config = BabiModel

    def vocabulary(self, config):
        """The model's vocabulary: `vocab.json` in its directory; for a new run started from `train.init_from`, the
        source model's (so that its word embeddings fit, whatever tasks this run trains on); else built from the
        training files. A new run saves it in its directory."""
        path = os.path.join(config.run_dir or ".", VOCAB_FILE)
        source = config.train.init_from
        inherited = source and os.path.join(source if os.path.isdir(source) else os.path.dirname(source), VOCAB_FILE)
        for candidate in (path, inherited):
            if candidate and os.path.isfile(candidate):
                with open(candidate) as f:
                    vocab = babi.Vocabulary.from_json(json.load(f))
                break
        else:
            vocab = babi.Vocabulary.build(self._raw(config, "train"))
        if config.run_dir and not os.path.isfile(path):
            atomic_write_json(path, vocab.to_json())
        return vocab

    def _raw(self, config, split):
        d = config.data
        file_split = "test" if split == "test" else "train"
        questions = _questions(os.path.abspath(d.dir), file_split, tuple(d.tasks), d.max_sentences)
        if split == "test":
            return questions
        held_out = babi.holdout_mask(questions, d.val_fraction, d.split_seed)
        keep = held_out if split == "val" else ~held_out
        return [q for q, k in zip(questions, keep) if k]

    def encoded(self, config, split):
        """Token-id arrays of a split (see `babi.encode`), computed once per process and config."""
        if split not in ("train", "val", "test"):
            raise DataError(f"Unknown bAbI split {split!r}; expected train, val or test.")
        key = (json.dumps(dataclasses.asdict(config.data), sort_keys=True), config.run_dir, split)
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            d = config.data
            cache[key] = babi.encode(self._raw(config, split), self.vocabulary(config), d.max_sentences,
                                     d.sentence_length, d.question_length)
        return cache[key]

    def prepare(self, config, log=print):
        self.vocabulary(config)

    def num_examples(self, config, split):
        """The questions of `split`; for "train", an epoch's (with `data.repeats`)."""
        tasks = self.encoded(config, split)["task"]
        return len(repeated_rows(tasks, config.data.repeats)) if split == "train" else len(tasks)

    def dataset(self, config, split, *, training=False, shuffle=None, seed=0, input_context=None):
        arrays = self.encoded(config, split)
        ds = tf.data.Dataset.from_tensor_slices(_examples(arrays))
        if training:  # answers outside the vocabulary cannot be trained on
            ds = ds.filter(lambda features, answer: answer >= 0)
        if training if shuffle is None else shuffle:
            ds = ds.shuffle(len(arrays["answer"]), seed=seed, reshuffle_each_iteration=False)
        ds = self.shard(ds, input_context)
        return ds

    def training_dataset(self, config, *, seed=0, input_context=None):
        """The training questions with an answer in the vocabulary, shuffled with `seed` (one per epoch): in batches
        of similar story length with `data.length_window`, repeated with `data.repeats` and renamed with
        `data.interchangeable`."""
        arrays = self.encoded(config, "train")
        if config.data.repeats:
            rows = repeated_rows(arrays["task"], config.data.repeats)
            arrays = {key: values[rows] for key, values in arrays.items()}
        if config.data.interchangeable:
            arrays = self._interchanged(config, arrays, np.random.default_rng([seed, 1]))
        order = np.flatnonzero(arrays["answer"] >= 0)  # answers outside the vocabulary cannot be trained on
        if config.train.shuffle and config.data.length_window:
            pipelines = input_context.num_input_pipelines if input_context is not None else 1
            global_batch = config.train.batch_size * pipelines  # train.batch_size is per worker
            order = length_grouped_order(
                story_lengths(arrays["context"]), order, global_batch, config.data.length_window, seed)
        elif config.train.shuffle:
            order = np.random.default_rng(seed).permutation(order)
        ds = tf.data.Dataset.from_tensor_slices(_examples(arrays, order))
        # Element-wise sharding keeps each global batch's questions together: a worker's batch is its share of one.
        return self.shard(ds, input_context)

    def _interchanged(self, config, arrays, rng):
        vocab = self.vocabulary(config)
        for name, groups in sorted(config.data.interchangeable.items()):
            rows = np.flatnonzero(arrays["task"] == int(name[2:]))
            try:
                arrays = babi.interchange_words(arrays, rows, groups, vocab, rng)
            except DataError as e:
                raise ConfigError(f"data.interchangeable.{name}: {e}") from None
        return arrays

    def build_model(self, config):
        return build_model(config.model, config.data, self.vocabulary(config))

    def loss(self, config, labels, logits):
        return keras.losses.sparse_categorical_crossentropy(tf.maximum(labels, 0), logits, from_logits=True)

    def answer_names(self, config):
        return list(self.vocabulary(config).answers)

    def input_bounds(self, config):
        last = len(self.vocabulary(config).words) - 1  # token ids: 0 = padding, then one per word
        return {"context": (0, last), "question": (0, last)}

    def write_serving_assets(self, config, directory):
        vocab = self.vocabulary(config)
        atomic_write_json(os.path.join(directory, VOCAB_FILE), vocab.to_json())
        with open(os.path.join(directory, "vocab.txt"), "w") as f:  # token id = line number (0 = padding)
            f.write("\n".join(vocab.words) + "\n")

    def paper_results(self, config):
        return dict(PAPER) if config.model.type == "rn" else {}

    def predictions(self, predict_fn, config, split, batch_size):
        """As `Task.predictions`, but the questions go through `predict_fn` in order of story length, so that a
        batch costs what its own stories need (`model.trim`); everything is returned in the split's order."""
        arrays = self.encoded(config, split)
        if not len(arrays["answer"]):
            raise ValueError(f"Split {split!r} of task {self.name!r} is empty.")
        features, answers = _examples(arrays)
        order = np.argsort(story_lengths(arrays["context"]), kind="stable")
        logits = np.concatenate([
            np.asarray(predict_fn({name: values[batch] for name, values in features.items()}))
            for batch in np.split(order, range(batch_size, len(order), batch_size))
        ])
        in_split_order = np.empty_like(logits)
        in_split_order[order] = logits
        return features, answers, in_split_order

    def metric_names(self, config):
        return ["accuracy", "mean_task_accuracy"]

    def evaluate(self, predict_fn, config, split, batch_size=256):
        features, labels, logits = self.predictions(predict_fn, config, split, batch_size)
        tasks_of = self.encoded(config, split)["task"]
        correct = logits.argmax(-1) == labels
        names = [f"qa{t}" for t in range(1, babi.NUM_TASKS + 1)]
        groups = grouped_accuracy(correct, tasks_of - 1, names)
        passed = [name for name, g in groups.items() if g["accuracy"] > PASS_THRESHOLD]
        metrics = {"accuracy": float(correct.mean()), "mean_task_accuracy": float(np.mean([g["accuracy"] for g in groups.values()]))}
        extra = {
            "passed": len(passed),
            "tasks": len(groups),
            "failed_tasks": [name for name in groups if name not in passed],
            "pass_threshold": PASS_THRESHOLD,
        }
        if config.model.type == "rn":  # the RN paper's joint model
            extra.update(paper_passed=18, paper_failed_tasks=["qa2", "qa3"])
        return self.report(config, split, len(labels), metrics, groups, extra, labels=labels, logits=logits)
