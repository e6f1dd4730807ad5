"""The interface every task implements; the trainer, evaluator and exporter only talk to this.

The contract, in short:

- A task is a `Task` subclass registered by name (`relation_networks.registry.register`), with `name`, its
  `data_config` and `model_config` dataclasses (the `data:` and `model:` sections of a YAML config, checked when the
  config loads: field types, `bounded`/`choice` metadata and the dataclass's own `__post_init__`), and `splits`.
- It must implement `num_examples`, `dataset`, `build_model` and `evaluate`; everything else has a default:
  `prepare` (generate or preprocess data once), grouped training elements (`training_dataset`,
  `training_group_size`, `training_forward`), `loss` / `correct` (softmax cross-entropy, argmax), the serving
  outputs, answer names, input bounds and assets, symmetries and the paper's numbers.
- Conventions the trainer and the tools read from a config, by name and only where present:
  `config.model.type` (the model's kind, in logs, metrics.json and model cards), `config.data.dir` (the data's
  directory; made relative in an exported config.yaml), and `config.run_dir` (where a task keeps files that belong
  to the model, e.g. a vocabulary, so that an exported or evaluated model reads the same one).
- Keys of `config.train` are the trainer's (`relation_networks.config.TrainConfig`); a task reads `train.shuffle`,
  `train.init_from` or `train.eval_splits` at most.
- A task is a stateless singleton that takes the config in every call: one registered object serves every config
  in a process (a run, its export, the evaluation of another run). An object holding its config (Model Garden's
  task) was weighed and not adopted: it needs one object per config and changes every call site, for no behaviour
  gained.
"""

import numpy as np
import tensorflow as tf
import keras

from relation_networks.config import ConfigError
from relation_networks.errors import UserError
from relation_networks.evaluation import Report


def prefetched(ds):
    """`ds` with a prefetch buffer and without tf.data's autotuning, for a pass over it from Python. The
    autotuner's thread sleeps up to 60 s between optimisations and an iterator's destructor waits for it, so an
    iterator dropped after a minute or more of use stalled the caller by up to a minute (45-59 s at every epoch
    of the RMC on nth_farthest). AUTOTUNE values (parallel maps, prefetch) take tf.data's untuned defaults; the
    data and its order do not change."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


class Task:
    """A task: where its data comes from, how its models are built, how it is scored and served.

    Subclasses set `name`, `data_config` and `model_config` (dataclasses: the `data` and `model` sections of the
    YAML config) and implement the methods below that raise `NotImplementedError`.
    """

    name = None
    data_config = None
    model_config = None
    splits = ("train", "val", "test")  # the splits `dataset` serves (what `train.eval_splits` may name)

    # -- data ----------------------------------------------------------------------------------------------------

    def prepare(self, config, log=print):
        """Make sure the data exists (generate or preprocess it once); raise `DataError` if it cannot."""

    def num_examples(self, config, split):
        """Number of examples in `split`."""
        raise NotImplementedError

    def dataset(self, config, split, *, training=False, shuffle=None, seed=0, input_context=None):
        """Unbatched `tf.data.Dataset` of `(features, label)` for `split`, `features` a dict keyed by the model's
        input names. With `training`, augmented (where the task augments) and, unless `shuffle=False`, shuffled
        deterministically from `seed`. With an `input_context`, only this input pipeline's shard: shards are
        disjoint and each holds at least `num_examples // num_input_pipelines` examples."""
        raise NotImplementedError

    @staticmethod
    def shard(dataset, input_context):
        """This input pipeline's share of `dataset` (all of it without an `input_context` or with one pipeline).

        Call it after an identically seeded shuffle: the shards of the pipelines are then disjoint and equal in
        size (to one element) whatever the data set's size."""
        if input_context is not None and input_context.num_input_pipelines > 1:
            return dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        return dataset

    def training_dataset(self, config, *, seed=0, input_context=None):
        """The dataset the trainer batches: by default `dataset(config, "train", training=True, ...)`.

        A task may group examples that share work (e.g. several questions about one image, so the image is
        encoded once): each element then holds `training_group_size(config)` examples, with features and labels
        carrying that many rows on their first axis, and `training_forward` must accept such batches."""
        return self.dataset(
            config, "train", training=True, shuffle=config.train.shuffle, seed=seed, input_context=input_context
        )

    def training_group_size(self, config):
        """Examples per element of `training_dataset` (1: one example per element)."""
        return 1

    def training_forward(self, config, model):
        """`fn(features, training) -> logits` for a batch of `training_dataset` elements (default: `model`).
        Must use only `model`'s layers, so training updates the model that is evaluated and exported."""
        return lambda features, training: model(features, training=training)

    # -- model ---------------------------------------------------------------------------------------------------

    def build_model(self, config):
        """A `keras.Model` from the config, taking the features dict and returning float32 logits."""
        raise NotImplementedError

    def model_from_config(self, config):
        """`build_model` for a user's config (what the tools call): a layer that refuses an argument taken from the
        config (a `ValueError`, e.g. `model.num_heads: 0`) becomes a `ConfigError` naming the `model` section."""
        try:
            return self.build_model(config)
        except ValueError as e:
            raise ConfigError(f"model: {e}") from e

    def loss(self, config, labels, logits):
        """Per-example loss `[batch]` (default: softmax cross-entropy over classes)."""
        return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)

    def correct(self, config, labels, logits):
        """Per-example 1.0 / 0.0 correctness `[batch]` (default: argmax equals the label)."""
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32)

    # -- serving (relation_networks.export) -----------------------------------------------------------------------

    def multilabel(self, config):
        """True when each logit is an independent yes/no output (sigmoid), False for one softmax over classes."""
        return False

    def serving_outputs(self, config, logits):
        """The serving signature's outputs for float32 `logits`: `logits`, `probabilities`, `answer_id`."""
        if self.multilabel(config):
            probabilities = tf.sigmoid(logits)
            return {"logits": logits, "probabilities": probabilities, "answer_id": tf.cast(logits > 0, tf.int32)}
        return {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits),
            "answer_id": tf.argmax(logits, axis=-1, output_type=tf.int32),
        }

    def tflite_batch_size(self, config):
        """Static batch size of the serving/TFLite signature, or None for a dynamic batch."""
        return None

    def answer_names(self, config):
        """Names of the answer classes (for predictions in words), or None."""
        return None

    def input_bounds(self, config):
        """Valid ranges of integer inputs beyond their dtype's, `{input name: (low, high)}` inclusive, e.g. token ids
        within the vocabulary; a request outside them is refused (`relation_networks.serving.parse_request`)."""
        return {}

    def write_serving_assets(self, config, directory):
        """Write files a client needs next to an exported model (e.g. a vocabulary)."""

    # -- evaluation ----------------------------------------------------------------------------------------------

    def predictions(self, predict_fn, config, split, batch_size):
        """Run `predict_fn` (features dict of NumPy arrays -> logits) over a split.

        Returns (features, labels, logits) as NumPy arrays concatenated over the split.
        """
        features, labels, logits = [], [], []
        ds = prefetched(self.dataset(config, split, training=False).batch(batch_size))
        for batch_features, batch_labels in ds.as_numpy_iterator():
            logits.append(np.asarray(predict_fn(batch_features)))
            features.append(batch_features)
            labels.append(batch_labels)
        if not labels:
            raise ValueError(f"Split {split!r} of task {self.name!r} is empty.")
        joined = {k: np.concatenate([f[k] for f in features]) for k in features[0]}
        return joined, np.concatenate(labels), np.concatenate(logits)

    def evaluate(self, predict_fn, config, split, batch_size=256):
        """A `Report` of `predict_fn` on `split` with the paper's breakdown."""
        raise NotImplementedError

    def symmetries(self, config):
        """Transformations of a batch's features that leave every label unchanged (e.g. reflections of a table-top
        scene): a list of `fn(features dict of NumPy arrays) -> features dict`, the identity first. Empty (the
        default) where the task has none. `symmetric_predictor` averages a model's outputs over them."""
        return []

    def symmetric_predictor(self, predict_fn, config):
        """`predict_fn` averaged over the task's `symmetries` (`tools/evaluate.py --symmetries`): each batch is
        predicted once per symmetry and the probabilities are averaged (softmax, or sigmoid per output where
        `multilabel`); the result is returned as logits of that average, so every metric reads it unchanged."""
        views = self.symmetries(config)
        if not views:
            raise UserError(f"Task {self.name!r} defines no symmetries to average predictions over.")
        multilabel = self.multilabel(config)

        def predict(features):
            outputs = np.stack([np.asarray(predict_fn(view(features)), np.float64) for view in views])
            if multilabel:
                p = np.clip(np.mean(1.0 / (1.0 + np.exp(-outputs)), axis=0), 1e-12, 1 - 1e-12)
                return np.log(p) - np.log1p(-p)
            shifted = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
            return np.log(np.maximum(np.mean(shifted / shifted.sum(-1, keepdims=True), axis=0), 1e-300))

        return predict

    def metric_names(self, config):
        """The headline metrics `evaluate` reports for this config (what `train.keep_best` may name), or None when
        they are not known before an evaluation (then `keep_best` is checked at the first one)."""
        return None

    def paper_results(self, config):
        """The paper's results for this config's model, keyed like the report's metrics and groups."""
        return {}

    def mean_loss(self, config, labels, logits, batch_size=4096):
        """The training loss (`loss`) averaged over evaluated examples, in batches."""
        total = 0.0
        for start in range(0, len(logits), batch_size):
            chunk = self.loss(config, labels[start:start + batch_size], tf.constant(logits[start:start + batch_size]))
            total += float(tf.reduce_sum(chunk))
        return total / max(len(logits), 1)

    def report(self, config, split, examples, metrics, groups=None, extra=None, labels=None, logits=None):
        """The split's `Report`; given the `labels` and `logits`, its `extra["loss"]` holds the mean loss (the
        trainer logs it to TensorBoard beside the metrics)."""
        extra = dict(extra or {})
        if labels is not None and logits is not None:
            extra["loss"] = self.mean_loss(config, labels, logits)
        return Report(
            task=self.name,
            split=split,
            examples=int(examples),
            metrics=metrics,
            groups=groups or {},
            paper=dict(self.paper_results(config)),
            extra=extra,
        )
