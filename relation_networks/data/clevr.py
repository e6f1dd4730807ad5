"""CLEVR v1.0 (Johnson et al. 2017) in its official layout, preprocessed once into TFRecord shards.

Layout read:
    <dir>/images/<split>/CLEVR_<split>_NNNNNN.png          480x320 RGBA
    <dir>/questions/CLEVR_<split>_questions.json          {"questions": [{question, answer, image_index,
                                                            image_filename, program, ...}]}
    <dir>/scenes/CLEVR_<split>_scenes.json                {"scenes": [{image_index, objects: [{3d_coords,
                                                            color, shape, material, size}]}]}
The test split has no answers, programs or scenes: it is preprocessed for prediction only.

Preprocessing (`preprocess`) streams images one at a time (never the whole split in memory), resizes them to
`image_size` and writes one `tf.train.Example` per image holding the PNG-encoded image, the tokenised questions
(left-padded ids), answer ids, question categories and the scene's object table, into `shards` TFRecord files in
a temporary directory that is renamed when complete.
"""

import dataclasses
import json
import os
import re
import shutil
import typing

import numpy as np

from relation_networks.errors import DataError
from relation_networks.io import work_directory

PAD, UNK = "<pad>", "<unk>"
CATEGORIES = ["count", "exist", "compare_numbers", "query_attribute", "compare_attribute"]
COLORS = ["gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow"]
SHAPES = ["cube", "sphere", "cylinder"]
MATERIALS = ["rubber", "metal"]
SIZES = ["large", "small"]
OBJECT_DIM = 3 + len(COLORS) + len(SHAPES) + len(MATERIALS) + len(SIZES)
MAX_OBJECTS = 10
_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def tokenize(text):
    """Lower-cased words, punctuation split off: 'Is it red?' -> ['is', 'it', 'red', '?']."""
    return _TOKEN.findall(text.lower())


def category(program):
    """The paper's question category from the last function of a CLEVR program (None if unknown)."""
    if not program:
        return None
    last = program[-1]
    name = last.get("function", last.get("type", "")) if isinstance(last, dict) else str(last)
    if name == "count":
        return "count"
    if name == "exist":
        return "exist"
    if name in ("equal_integer", "less_than", "greater_than"):
        return "compare_numbers"
    if name.startswith("query_"):
        return "query_attribute"
    if name.startswith("equal_"):
        return "compare_attribute"
    return None


def load_json(path, key):
    """`json[key]` of an official CLEVR file, with a clear error for a missing or malformed file."""
    if not os.path.isfile(path):
        raise DataError(f"CLEVR file not found: {path}")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}.") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path}: expected a JSON object with a list under {key!r}.")
    return data[key]


def questions_path(directory, split):
    return os.path.join(directory, "questions", f"CLEVR_{split}_questions.json")


def scenes_path(directory, split):
    return os.path.join(directory, "scenes", f"CLEVR_{split}_scenes.json")


def build_vocabulary(directory, source="official"):
    """Words and answers of the *training* questions: {"words": [PAD, UNK, ...], "answers": [...]}.
    (Images are not decoded for the official layout.)"""
    _, _, records = official_records(directory, "train") if source == "official" else tfds_records("train", directory)
    return vocabulary_from_records(records)


def object_table(scene, where):
    """`[MAX_OBJECTS, OBJECT_DIM]` float32 (3-D coordinates, one-hot colour/shape/material/size) and a mask."""
    table = np.zeros((MAX_OBJECTS, OBJECT_DIM), np.float32)
    mask = np.zeros(MAX_OBJECTS, np.float32)
    objects = scene.get("objects", [])
    if len(objects) > MAX_OBJECTS:
        raise DataError(f"{where}: {len(objects)} objects, more than the {MAX_OBJECTS} the state model takes.")
    for k, o in enumerate(objects):
        try:
            row = list(o["3d_coords"])
            for value, names in ((o["color"], COLORS), (o["shape"], SHAPES), (o["material"], MATERIALS), (o["size"], SIZES)):
                one_hot = [0.0] * len(names)
                one_hot[names.index(value)] = 1.0
                row += one_hot
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(f"{where}: object {k} is malformed ({type(e).__name__}: {e}).") from None
        table[k], mask[k] = row, 1.0
    return table, mask


def _encode_question(tokens, index, length, where, unknown):
    if len(tokens) > length:
        raise DataError(f"{where}: the question has {len(tokens)} tokens, more than the model's maximum of "
                        f"{length} (data.question_length).")
    ids = [index.get(t, 1) for t in tokens]
    unknown.update(t for t in tokens if t not in index)
    return [0] * (length - len(ids)) + ids


@dataclasses.dataclass
class ImageRecord:
    """One image and its questions, whichever source it came from."""

    index: int
    load_image: typing.Callable  # () -> RGB uint8 array (or PIL image); raises DataError when it cannot
    questions: list  # [(where, text, answer or None, program or None)]
    objects: typing.Optional[list]  # scene objects as in the official JSON (names, 3d_coords), or None
    where: str  # for error messages


def official_records(directory, split):
    """`(number of images, has_answers, iterator of ImageRecord)` from the official layout, image by image."""
    from PIL import Image

    qpath = questions_path(directory, split)
    questions = load_json(qpath, "questions")
    has_answers = split != "test" and all("answer" in q for q in questions)
    scenes = {}
    if os.path.isfile(scenes_path(directory, split)):
        for s in load_json(scenes_path(directory, split), "scenes"):
            scenes[s.get("image_index")] = s
    by_image = {}
    for i, q in enumerate(questions):
        where = f"{qpath}, question record {i}"
        for key in ("question", "image_index", "image_filename"):
            if key not in q:
                raise DataError(f"{where}: missing field {key!r}.")
        filename, items = by_image.setdefault(q["image_index"], (q["image_filename"], []))
        items.append((where, q["question"], str(q["answer"]) if "answer" in q else None, q.get("program")))

    def records():
        for image_index, (filename, items) in sorted(by_image.items()):
            image_path = os.path.join(directory, "images", split, filename)

            def load(image_path=image_path, where=items[0][0]):
                try:
                    with Image.open(image_path) as img:
                        return np.asarray(img.convert("RGB"))
                except FileNotFoundError:
                    raise DataError(f"{where}: image {image_path} not found.") from None
                except OSError as e:
                    raise DataError(f"{image_path}: the image does not decode ({e}).") from None

            scene = scenes.get(image_index)
            yield ImageRecord(image_index, load, items, scene.get("objects", []) if scene else None,
                              f"{scenes_path(directory, split)}, scene {image_index}")

    return len(by_image), has_answers, records()


def tfds_records(split, data_dir=None):
    """`(number of images, has_answers, iterator of ImageRecord)` from TFDS's `clevr` builder (prepared in
    `data_dir`). TFDS has no programs, so categories are unknown and only overall accuracy is reported."""
    import tensorflow_datasets as tfds

    builder = tfds.builder("clevr", data_dir=data_dir)
    tfds_split = {"val": "validation"}.get(split, split)
    try:
        ds = builder.as_dataset(split=tfds_split)
    except Exception as e:  # tfds raises several types when the data is not prepared
        raise DataError(f"TFDS clevr {tfds_split} is not available in {data_dir}: {e}") from None
    count = builder.info.splits[tfds_split].num_examples
    objects = builder.info.features["objects"]
    names = {k: objects[k].names for k in ("color", "shape", "material", "size")}
    return count, split != "test", (_tfds_record(n, e, names, split) for n, e in enumerate(tfds.as_numpy(ds)))


def _tfds_record(n, example, names, split):
    where = f"tfds clevr/{split} example {n} ({example['file_name'].decode() if isinstance(example['file_name'], bytes) else example['file_name']})"
    qa = example["question_answer"]
    answers = qa.get("answer")
    questions = [
        (where, _text(q), _text(answers[k]) if answers is not None and split != "test" else None, None)
        for k, q in enumerate(qa["question"])
    ]
    o = example["objects"]
    scene = [
        {"3d_coords": list(map(float, o["3d_coords"][k])),
         **{key: names[key][int(o[key][k])] for key in ("color", "shape", "material", "size")}}
        for k in range(len(o["color"]))
    ]
    image = example["image"]
    return ImageRecord(n, lambda image=image: image[..., :3], questions, scene, where)


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def vocabulary_from_records(records):
    """Words and answers of training `ImageRecord`s: {"words": [PAD, UNK, ...], "answers": [...]}."""
    words, answers = set(), set()
    for record in records:
        for where, text, answer, _ in record.questions:
            if answer is None:
                raise DataError(f"{where}: a training question has no answer.")
            words.update(tokenize(text))
            answers.add(answer)
    return {"words": [PAD, UNK] + sorted(words), "answers": sorted(answers)}


def preprocess(directory, split, out_dir, vocab, image_size=128, question_length=48, shards=8, log=print,
               source="official", key=None):
    """Write the split's TFRecord shards into `out_dir` (atomically); return `out_dir`. `key` (what the shards
    were built from, see `relation_networks.tasks.clevr`) is stored in their meta.json.

    `source`: "official" (the CLEVR v1.0 layout in `directory`) or "tfds" (TFDS's `clevr`, prepared in
    `directory`)."""
    import tensorflow as tf
    from PIL import Image

    import keras

    count, has_answers, records = official_records(directory, split) if source == "official" else tfds_records(split, directory)
    word_index = {w: i for i, w in enumerate(vocab["words"])}
    answer_index = {a: i for i, a in enumerate(vocab["answers"])}
    unknown = set()
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = work_directory(parent, "clevr")
    try:
        writers = [tf.io.TFRecordWriter(os.path.join(tmp, f"{split}-{k:05d}-of-{shards:05d}.tfrecord")) for k in range(shards)]
        progress = keras.utils.Progbar(count, unit_name="image")
        counts = {"images": 0, "questions": 0}
        for n, record in enumerate(records):
            image = Image.fromarray(np.asarray(record.load_image())).resize((image_size, image_size), Image.BILINEAR)
            png = tf.io.encode_png(np.asarray(image)).numpy()
            tokens, answers, cats = [], [], []
            for where, text, answer, program in record.questions:
                tokens += _encode_question(tokenize(text), word_index, question_length, where, unknown)
                if has_answers:
                    if answer not in answer_index:
                        raise DataError(f"{where}: answer {answer!r} is not one of the {len(answer_index)} training answers.")
                    answers.append(answer_index[answer])
                    c = category(program)
                    cats.append(CATEGORIES.index(c) if c else -1)
                else:
                    answers.append(-1)
                    cats.append(-1)
            if record.objects is not None:
                table, mask = object_table({"objects": record.objects}, record.where)
            else:
                table, mask = np.zeros((MAX_OBJECTS, OBJECT_DIM), np.float32), np.zeros(MAX_OBJECTS, np.float32)
            feature = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
                "image_index": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(record.index)])),
                "questions": tf.train.Feature(int64_list=tf.train.Int64List(value=tokens)),
                "answers": tf.train.Feature(int64_list=tf.train.Int64List(value=answers)),
                "categories": tf.train.Feature(int64_list=tf.train.Int64List(value=cats)),
                "objects": tf.train.Feature(float_list=tf.train.FloatList(value=table.reshape(-1).tolist())),
                "object_mask": tf.train.Feature(float_list=tf.train.FloatList(value=mask.tolist())),
            }
            writers[n % shards].write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
            counts["images"] += 1
            counts["questions"] += len(record.questions)
            progress.update(n + 1)
        for w in writers:
            w.close()
        if unknown:
            log(f"WARNING: {len(unknown)} word(s) of the {split} questions are not in the training vocabulary and map "
                f"to {UNK}: {', '.join(sorted(unknown)[:10])}")
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"split": split, "has_answers": has_answers, "image_size": image_size,
                       "question_length": question_length, "shards": shards, "key": key, **counts}, f, indent=2)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def parse_example(serialized, image_size, question_length):
    """One preprocessed image record -> dict of tensors; questions `[Q, question_length]`."""
    import tensorflow as tf

    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "questions": tf.io.VarLenFeature(tf.int64),
        "answers": tf.io.VarLenFeature(tf.int64),
        "categories": tf.io.VarLenFeature(tf.int64),
        "objects": tf.io.FixedLenFeature([MAX_OBJECTS * OBJECT_DIM], tf.float32),
        "object_mask": tf.io.FixedLenFeature([MAX_OBJECTS], tf.float32),
    }
    r = tf.io.parse_single_example(serialized, spec)
    image = tf.io.decode_png(r["image"], channels=3)
    image = tf.ensure_shape(image, (image_size, image_size, 3))
    return {
        "image": image,
        "questions": tf.reshape(tf.sparse.to_dense(r["questions"]), (-1, question_length)),
        "answers": tf.sparse.to_dense(r["answers"]),
        "categories": tf.sparse.to_dense(r["categories"]),
        "objects": tf.reshape(r["objects"], (MAX_OBJECTS, OBJECT_DIM)),
        "object_mask": r["object_mask"],
    }
