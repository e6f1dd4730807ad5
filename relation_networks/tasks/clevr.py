"""CLEVR from pixels (paper appendix B) and from state descriptions (appendix C).

`data.dir` is a CLEVR v1.0 directory in the official layout. On first use each split is preprocessed into
TFRecord shards under `data.preprocessed_dir` (by default `<run's data cache>`), with the vocabulary built from the
training questions only and saved with the run (`clevr_vocab.json`).
"""

import dataclasses
import hashlib
import json
import os
import typing

import keras
import numpy as np
import tensorflow as tf

from relation_networks import tasks
from relation_networks.config import bounded, choice, positive
from relation_networks.data import clevr
from relation_networks.errors import DataError
from relation_networks.evaluation import grouped_accuracy
from relation_networks.io import atomic_write_json
from relation_networks.layers import POOLED_AGGREGATIONS, ConvObjectExtractor, RelationModule
from relation_networks.models import logits_model
from relation_networks.tasks.base import Task, prefetched

VOCAB_FILE = "clevr_vocab.json"
PAPER_PIXELS = {"accuracy": 0.955, "count": 0.901, "exist": 0.978, "compare_numbers": 0.936,
                "query_attribute": 0.979, "compare_attribute": 0.971}
PAPER_STATE = {"accuracy": 0.964}


@dataclasses.dataclass
class ClevrData:
    dir: str = "data/CLEVR_v1.0"  # official layout; with source=tfds, the TFDS data_dir holding a prepared `clevr`
    source: str = choice("official", ("official", "tfds"))  # tfds has no programs: overall accuracy only
    preprocessed_dir: typing.Optional[str] = None  # default: <dir>_preprocessed_<image_size>
    image_size: int = positive(128)
    question_length: int = positive(48)
    shards: int = positive(32)
    augment: bool = True  # pad to image_size + 8, random crop, random rotation (training only)
    pad: int = bounded(8, low=0)
    max_rotation: float = 0.05  # radians
    question_shuffle_buffer: int = positive(10000)


@dataclasses.dataclass
class ClevrModel:
    type: str = choice("pixels", ("pixels", "state"))
    conv_filters: typing.List[int] = positive([24, 24, 24, 24], nonempty=True)
    embedding_dim: int = positive(32)
    lstm_units: int = positive(128)
    g_units: typing.List[int] = positive([256] * 4, nonempty=True)
    f_units: typing.List[int] = positive([256, 256], nonempty=True)  # + linear answer logits
    dropout: float = bounded(0.5, low=0.0, below=1.0)  # on the penultimate layer of the RN (paper)
    aggregation: str = choice("sum", POOLED_AGGREGATIONS)
    bn_momentum: float = 0.9
    synchronized_bn: bool = False


def rotate(images, angles, fill_mode="nearest"):
    """Rotate `[B, H, W, C]` images by `angles` `[B]` radians about their centres (bilinear)."""
    images = tf.convert_to_tensor(images)
    h = tf.cast(tf.shape(images)[1], tf.float32)
    w = tf.cast(tf.shape(images)[2], tf.float32)
    cos, sin = tf.cos(angles), tf.sin(angles)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # output pixel (x, y) samples input at R^-1 (x - c) + c
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy,
                          tf.zeros_like(cos), tf.zeros_like(cos)], axis=1)
    out = keras.ops.image.affine_transform(tf.cast(images, tf.float32), transform, interpolation="bilinear",
                                           fill_mode=fill_mode)
    return tf.cast(tf.round(out), images.dtype) if images.dtype.is_integer else out


def augment(image, seed, image_size, pad, max_rotation):
    """The paper's training augmentation: pad by `pad` pixels, random crop back to `image_size`, random rotation
    in [-max_rotation, max_rotation] radians. `seed` is a `[2]` stateless seed."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    padded = tf.image.resize_with_crop_or_pad(image, image_size + pad, image_size + pad)
    cropped = tf.image.stateless_random_crop(padded, (image_size, image_size, 3), seed=seeds[0])
    angle = tf.random.stateless_uniform((1,), seeds[1], -max_rotation, max_rotation)
    return rotate(cropped[None], angle)[0]


def build_model(model_config, data_config, vocab):
    question = keras.Input((data_config.question_length,), dtype="int32", name="question")
    embedded = keras.layers.Embedding(len(vocab["words"]), model_config.embedding_dim, name="embedding")(question)
    # Questions are left-padded, so the final state follows the last word without masking; unrolled, the LSTM
    # converts to TFLite builtin ops with a dynamic batch.
    q = keras.layers.LSTM(model_config.lstm_units, unroll=True, name="question_lstm")(embedded)
    rn = RelationModule(
        model_config.g_units, list(model_config.f_units) + [len(vocab["answers"])], dropout=model_config.dropout,
        aggregation=model_config.aggregation, name="relation_module",
    )
    if model_config.type == "pixels":
        image = keras.Input((data_config.image_size, data_config.image_size, 3), dtype="uint8", name="image")
        pixels = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(image)
        objects = ConvObjectExtractor(model_config.conv_filters, bn_momentum=model_config.bn_momentum,
                                      synchronized_bn=model_config.synchronized_bn, name="cnn")(pixels)
        logits = rn(objects, question=q)
        inputs = {"image": image, "question": question}
    else:
        objects = keras.Input((clevr.MAX_OBJECTS, clevr.OBJECT_DIM), name="objects")
        mask = keras.Input((clevr.MAX_OBJECTS,), name="object_mask")
        logits = rn(objects, question=q, object_mask=mask)
        inputs = {"objects": objects, "object_mask": mask, "question": question}
    return logits_model(inputs, logits, f"clevr_{model_config.type}")


@tasks.register
class Clevr(Task):
    name = "clevr"
    data_config = ClevrData
    model_config = ClevrModel

    def _preprocessed(self, config, split):
        d = config.data
        root = d.preprocessed_dir or f"{d.dir.rstrip('/')}_preprocessed_{d.source}_{d.image_size}"
        return os.path.join(root, split)

    def vocabulary(self, config):
        path = os.path.join(config.run_dir or ".", VOCAB_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
        vocab = clevr.build_vocabulary(config.data.dir, config.data.source)
        if config.run_dir:
            atomic_write_json(path, vocab)
        return vocab

    def _cache_key(self, config, split):
        """What a split's preprocessed shards are built from: the settings that shape them, the vocabulary that
        numbers their words and answers, and the size and modification time of the source files. Shards whose key
        differs are rebuilt (a changed question file, another question_length, another run's vocabulary)."""
        d = config.data
        vocab = json.dumps(self.vocabulary(config), sort_keys=True).encode()
        sources = [clevr.questions_path(d.dir, split), clevr.scenes_path(d.dir, split)] if d.source == "official" else []
        return {
            "image_size": d.image_size, "question_length": d.question_length, "shards": d.shards, "source": d.source,
            "vocabulary_sha256": hashlib.sha256(vocab).hexdigest(),
            "files": {os.path.basename(p): [os.path.getsize(p), os.stat(p).st_mtime_ns] for p in sources
                      if os.path.isfile(p)},
        }

    def ensure_split(self, config, split, log=print):
        out = self._preprocessed(config, split)
        meta_path = os.path.join(out, "meta.json")
        d = config.data
        if not os.path.isdir(d.dir) and not os.path.isfile(meta_path):
            raise DataError(f"CLEVR directory not found: {d.dir} (set data.dir to your CLEVR_v1.0 directory).")
        key = self._cache_key(config, split) if os.path.isdir(d.dir) else None
        meta = self._read_meta(meta_path)
        if meta is not None and key is not None and meta.get("key") != key:
            changed = sorted(k for k in key if (meta.get("key") or {}).get(k) != key[k])
            log(f"The preprocessed CLEVR {split} split in {out} was built from other inputs ({', '.join(changed)} "
                "changed): rebuilding it.")
            meta = None
        if meta is None:
            log(f"Preprocessing CLEVR {split} into {out} (one-time) ...")
            clevr.preprocess(d.dir, split, out, self.vocabulary(config), d.image_size, d.question_length, d.shards,
                             log=log, source=d.source, key=key)
            meta = self._read_meta(meta_path)
        return meta

    @staticmethod
    def _read_meta(path):
        """A preprocessed split's meta.json, or None when there is none or it is damaged (then it is rebuilt)."""
        try:
            with open(path) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and "shards" in meta else None

    def prepare(self, config, log=print):
        self.vocabulary(config)
        for split in config.train.eval_splits + ["train"]:
            self.ensure_split(config, split, log=log)

    def num_examples(self, config, split):
        return self.ensure_split(config, split)["questions"]

    def dataset(self, config, split, *, training=False, shuffle=None, seed=0, input_context=None):
        examples = self._examples(config, split, training, shuffle, seed, input_context)
        return examples.map(lambda features, labels: (features, labels[0]))

    def _examples(self, config, split, training=False, shuffle=None, seed=0, input_context=None):
        """Like `dataset`, with labels `(answer, category)`."""
        d = config.data
        meta = self.ensure_split(config, split)
        files = sorted(tf.io.gfile.glob(os.path.join(self._preprocessed(config, split), f"{split}-*.tfrecord")))
        shuffle = training if shuffle is None else shuffle
        records = tf.data.Dataset.from_tensor_slices(files)
        if shuffle:
            records = records.shuffle(len(files), seed=seed)
        records = records.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)))
        images = records.map(lambda r: clevr.parse_example(r, meta["image_size"], meta["question_length"]),
                             num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        state = config.model.type == "state"

        def questions_of(record):
            n = tf.shape(record["questions"])[0]
            features = {"question": tf.cast(record["questions"], tf.int32)}
            if state:
                features["objects"] = tf.repeat(record["objects"][None], n, axis=0)
                features["object_mask"] = tf.repeat(record["object_mask"][None], n, axis=0)
            else:
                features["image"] = tf.repeat(record["image"][None], n, axis=0)
            labels = (tf.cast(record["answers"], tf.int32), tf.cast(record["categories"], tf.int32))
            return tf.data.Dataset.from_tensor_slices((features, labels))

        examples = images.flat_map(questions_of)
        if shuffle:
            examples = examples.shuffle(d.question_shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=False)
        examples = self.shard(examples, input_context)
        if training and d.augment and not state:
            def augmented(features, labels, index):
                features = dict(features)
                features["image"] = augment(features["image"], tf.stack([tf.cast(seed, tf.int64), index]),
                                            d.image_size, d.pad, d.max_rotation)
                return features, labels

            examples = examples.enumerate().map(lambda i, e: augmented(e[0], e[1], i), num_parallel_calls=tf.data.AUTOTUNE)
        return examples

    def build_model(self, config):
        return build_model(config.model, config.data, self.vocabulary(config))

    def answer_names(self, config):
        return list(self.vocabulary(config)["answers"])

    def input_bounds(self, config):
        return {"question": (0, len(self.vocabulary(config)["words"]) - 1)}  # token ids: 0 = padding

    def write_serving_assets(self, config, directory):
        vocab = self.vocabulary(config)
        atomic_write_json(os.path.join(directory, VOCAB_FILE), vocab)
        with open(os.path.join(directory, "vocab.txt"), "w") as f:  # token id = line number (0 = padding)
            f.write("\n".join(vocab["words"]) + "\n")

    def paper_results(self, config):
        return dict(PAPER_PIXELS if config.model.type == "pixels" else PAPER_STATE)

    def metric_names(self, config):
        return ["accuracy"]

    def evaluate(self, predict_fn, config, split, batch_size=256):
        if not self.ensure_split(config, split)["has_answers"]:
            raise DataError(f"The CLEVR {split} split has no answers: it can only be predicted "
                            "(tools/predict.py on an exported model), not evaluated. Evaluate on val.")
        ds = prefetched(self._examples(config, split).batch(batch_size))
        correct, categories = [], []
        for features, (answers, cats) in ds.as_numpy_iterator():
            correct.append(np.asarray(predict_fn(features)).argmax(-1) == answers)
            categories.append(cats)
        correct, categories = np.concatenate(correct), np.concatenate(categories)
        groups = grouped_accuracy(correct, categories, clevr.CATEGORIES)
        return self.report(config, split, len(correct), {"accuracy": float(correct.mean())}, groups)
