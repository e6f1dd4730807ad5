"""Sort-of-CLEVR (Santoro et al. 2017, section 3.2 and appendix D): generator, storage and reader.

Each 75x75 RGB image holds 6 objects, one of each colour in `COLORS`, each a square or a circle (`SHAPES`),
non-overlapping, on a white background. Each image carries 20 questions: 10 non-relational then 10 relational.

Question encoding (11 floats, one-hot groups):
    bits 0-5   colour of the reference object, in the order of `COLORS`
    bits 6-7   question type: {non-relational, relational}
    bits 8-10  subtype: non-relational {shape, horizontal, vertical}; relational {closest, furthest, count}

Answers (`ANSWERS`, the answer vocabulary, indices are the class ids):
    shape / closest / furthest -> "square" | "circle"  (closest and furthest exclude the reference itself)
    horizontal -> "left" | "right"   (centre x < 37.5 is left)
    vertical   -> "top" | "bottom"   (centre y < 37.5 is top)
    count      -> "1" .. "6"         (objects with the reference's shape, the reference included)

Distances are Euclidean between object centres. Layouts in which any reference's closest or furthest object is
not unique by at least `min_distance_gap` pixels are rejected and redrawn, so every answer is well defined at the
image's resolution.

Storage: one TFRecord file per split, one `tf.train.Example` per image (see `write_tfrecord`), in a directory
named for the generation parameters, with a `manifest.json`; the directory is written to a temporary name and
renamed, so an interrupted generation never leaves a partial data set.
"""

import hashlib
import json
import os
import shutil
import time

import numpy as np

from relation_networks.errors import DataError
from relation_networks.io import publish_modes, work_directory

COLORS = ["red", "green", "blue", "orange", "yellow", "gray"]
RGB = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "orange": (255, 156, 0),
    "yellow": (255, 255, 0),
    "gray": (128, 128, 128),
}
SHAPES = ["square", "circle"]
QUESTION_TYPES = ["non_relational", "relational"]
SUBTYPES = {"non_relational": ["shape", "horizontal", "vertical"], "relational": ["closest", "furthest", "count"]}
SUBTYPE_NAMES = SUBTYPES["non_relational"] + SUBTYPES["relational"]
ANSWERS = ["square", "circle", "left", "right", "top", "bottom", "1", "2", "3", "4", "5", "6"]

IMAGE_SIZE = 75
OBJECT_HALF_SIZE = 5
NUM_OBJECTS = len(COLORS)
QUESTIONS_PER_TYPE = 10
QUESTIONS_PER_IMAGE = 2 * QUESTIONS_PER_TYPE
QUESTION_DIM = 11
FORMAT_VERSION = 1


def encode_question(color, relational, subtype):
    """11-float question vector for colour index `color`, `relational` bool and subtype index 0-2."""
    q = np.zeros(QUESTION_DIM, np.float32)
    q[color] = 1.0
    q[6 + int(relational)] = 1.0
    q[8 + subtype] = 1.0
    return q


def decode_question(question):
    """(colour index, subtype name) of an 11-float question vector."""
    question = np.asarray(question)
    color = int(np.argmax(question[:6]))
    kind = QUESTION_TYPES[int(np.argmax(question[6:8]))]
    return color, SUBTYPES[kind][int(np.argmax(question[8:11]))]


def subtype_index(questions):
    """Index into `SUBTYPE_NAMES` of each question, `[...]` for questions `[..., 11]` (NumPy)."""
    questions = np.asarray(questions)
    return 3 * np.argmax(questions[..., 6:8], axis=-1) + np.argmax(questions[..., 8:11], axis=-1)


def colour_index(questions):
    """Index into `COLORS` of the object each question is about, `[...]` for questions `[..., 11]` (NumPy)."""
    return np.argmax(np.asarray(questions)[..., :NUM_OBJECTS], axis=-1)


def describe(question):
    """The question in words, e.g. 'What is the shape of the object closest to the red object?'."""
    color, subtype = decode_question(question)
    name = COLORS[color]
    return {
        "shape": f"What is the shape of the {name} object?",
        "horizontal": f"Is the {name} object on the left or the right?",
        "vertical": f"Is the {name} object at the top or the bottom?",
        "closest": f"What is the shape of the object closest to the {name} object?",
        "furthest": f"What is the shape of the object furthest from the {name} object?",
        "count": f"How many objects have the same shape as the {name} object?",
    }[subtype]


def _answer(objects, color, subtype):
    """Answer string for one question about one image's `[6, 4]` object table (rows indexed by colour)."""
    x, y, shape = objects[:, 1], objects[:, 2], objects[:, 3].astype(int)
    if subtype == "shape":
        return SHAPES[shape[color]]
    if subtype == "horizontal":
        return "left" if x[color] < IMAGE_SIZE / 2 else "right"
    if subtype == "vertical":
        return "top" if y[color] < IMAGE_SIZE / 2 else "bottom"
    if subtype == "count":
        return str(int(np.sum(shape == shape[color])))
    return SHAPES[shape[_extreme_object(objects, color, subtype)[0]]]


def _extreme_object(objects, color, subtype):
    """(index of the object closest to / furthest from object `color`, the other objects' indices, every
    object's distance to `color`) for a closest/furthest question."""
    x, y = objects[:, 1], objects[:, 2]
    distance = np.hypot(x - x[color], y - y[color])
    others = [k for k in range(len(objects)) if k != color]
    pick = min if subtype == "closest" else max
    return pick(others, key=lambda k: distance[k]), others, distance


def answer_margin(objects, question):
    """How far from a different answer a closest/furthest question is, in pixels: the distance between the
    answered object's distance to the reference and that of the nearest rival of the other shape (the rival
    that would flip the answer if distances were misjudged). `inf` when every candidate has the answer's shape;
    NaN for the other subtypes. `objects` is one image's `[6, 4]` table, `question` its 11-float encoding."""
    color, subtype = decode_question(question)
    if subtype not in ("closest", "furthest"):
        return float("nan")
    shape = objects[:, 3].astype(int)
    target, others, distance = _extreme_object(objects, color, subtype)
    rivals = [distance[k] for k in others if shape[k] != shape[target]]
    if not rivals:
        return float("inf")
    return float(min(rivals) - distance[target] if subtype == "closest" else distance[target] - max(rivals))


def _distances_unambiguous(centres, min_gap):
    diff = centres[:, None, :] - centres[None, :, :]
    dist = np.hypot(diff[..., 0], diff[..., 1])
    for k in range(len(centres)):
        d = np.sort(np.delete(dist[k], k))
        if d[1] - d[0] < min_gap or d[-1] - d[-2] < min_gap:
            return False
    return True


# Layouts drawn for one image before `min_distance_gap` is declared unsatisfiable. The share of layouts that pass is
# ~34% at a gap of 1 px, 1.9% at 4 px, 0.23% at 6 px and none at 10 px (3,000 layouts drawn), so a gap that
# passes nothing fails within seconds instead of looping forever.
MAX_LAYOUT_ATTEMPTS = 100_000
MAX_DISTANCE_GAP = 6.0  # the largest gap the config accepts (0.23% of layouts pass: ~430 draws per image)


def _place_objects(rng, min_gap):
    """6 integer centres with no overlap (bounding squares at least 2 px apart) and unambiguous distances."""
    lo, hi = OBJECT_HALF_SIZE, IMAGE_SIZE - 1 - OBJECT_HALF_SIZE
    for _ in range(MAX_LAYOUT_ATTEMPTS):
        centres = []
        while len(centres) < NUM_OBJECTS:
            c = rng.integers(lo, hi + 1, size=2)
            if all(np.max(np.abs(c - o)) >= 2 * OBJECT_HALF_SIZE + 2 for o in centres):
                centres.append(c)
        centres = np.array(centres, np.float64)
        if _distances_unambiguous(centres, min_gap):
            return centres
    raise ValueError(f"No layout of {NUM_OBJECTS} objects in {MAX_LAYOUT_ATTEMPTS:,} draws has every closest and "
                     f"furthest object ahead by min_distance_gap={min_gap:g} px: lower it (at most "
                     f"{MAX_DISTANCE_GAP:g}).")


def draw(objects):
    """Render a `[6, 4]` object table (colour, x, y, shape) as a `[75, 75, 3]` uint8 image."""
    image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, np.uint8)
    rows, cols = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    s = OBJECT_HALF_SIZE
    for color, x, y, shape in objects:
        if SHAPES[int(shape)] == "square":
            inside = (np.abs(cols - x) <= s) & (np.abs(rows - y) <= s)
        else:
            inside = (cols - x) ** 2 + (rows - y) ** 2 <= s * s + s  # +s: a rounder disc on the pixel grid
        image[inside] = RGB[COLORS[int(color)]]
    return image


def generate(num_images, seed, min_distance_gap=1.0, progress=None):
    """Generate `num_images` Sort-of-CLEVR images with their questions and answers, deterministically from `seed`.

    Returns a dict of NumPy arrays:
        images    uint8   `[num_images, 75, 75, 3]`
        questions float32 `[num_images, 20, 11]` (10 non-relational, then 10 relational)
        answers   int64   `[num_images, 20]`, indices into `ANSWERS`
        objects   float32 `[num_images, 6, 4]`: colour index, centre x (pixel column), centre y (pixel row),
                  shape index; row k is the object of colour k.

    `progress(done, total)`, if given, is called every 1,000 images and at the end.
    """
    if not isinstance(num_images, (int, np.integer)) or num_images < 0:
        raise ValueError(f"num_images must be a non-negative integer, got {num_images!r}.")
    rng = np.random.default_rng(seed)
    images = np.empty((num_images, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    questions = np.empty((num_images, QUESTIONS_PER_IMAGE, QUESTION_DIM), np.float32)
    answers = np.empty((num_images, QUESTIONS_PER_IMAGE), np.int64)
    objects = np.empty((num_images, NUM_OBJECTS, 4), np.float32)
    for n in range(num_images):
        centres = _place_objects(rng, min_distance_gap)
        shapes = rng.integers(0, len(SHAPES), size=NUM_OBJECTS)
        objects[n] = np.column_stack([np.arange(NUM_OBJECTS), centres[:, 0], centres[:, 1], shapes])
        images[n] = draw(objects[n])
        for k in range(QUESTIONS_PER_IMAGE):
            relational = k >= QUESTIONS_PER_TYPE
            color, subtype = int(rng.integers(NUM_OBJECTS)), int(rng.integers(3))
            questions[n, k] = encode_question(color, relational, subtype)
            name = SUBTYPES[QUESTION_TYPES[int(relational)]][subtype]
            answers[n, k] = ANSWERS.index(_answer(objects[n], color, name))
        if progress and ((n + 1) % 1000 == 0 or n + 1 == num_images):
            progress(n + 1, num_images)
    return {"images": images, "questions": questions, "answers": answers, "objects": objects}


# -- storage ---------------------------------------------------------------------------------------------------


def write_tfrecord(path, arrays):
    """Write generated arrays to one TFRecord file, one `tf.train.Example` per image with features
    `image` (raw uint8 bytes, 75*75*3), `questions` (220 floats), `answers` (20 ints), `objects` (24 floats)."""
    import tensorflow as tf

    def feature(values, kind):
        if kind == "bytes":
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[values]))
        if kind == "float":
            return tf.train.Feature(float_list=tf.train.FloatList(value=values.reshape(-1).tolist()))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values.reshape(-1).tolist()))

    with tf.io.TFRecordWriter(path) as writer:
        for n in range(len(arrays["images"])):
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "image": feature(arrays["images"][n].tobytes(), "bytes"),
                        "questions": feature(arrays["questions"][n], "float"),
                        "answers": feature(arrays["answers"][n], "int"),
                        "objects": feature(arrays["objects"][n], "float"),
                    }
                )
            )
            writer.write(example.SerializeToString())


def parse_example(serialized):
    """Parse one stored image record into `image` `[75,75,3]` uint8, `questions` `[20,11]`, `answers` `[20]`,
    `objects` `[6,4]` tensors."""
    import tensorflow as tf

    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "questions": tf.io.FixedLenFeature([QUESTIONS_PER_IMAGE * QUESTION_DIM], tf.float32),
        "answers": tf.io.FixedLenFeature([QUESTIONS_PER_IMAGE], tf.int64),
        "objects": tf.io.FixedLenFeature([NUM_OBJECTS * 4], tf.float32),
    }
    record = tf.io.parse_single_example(serialized, spec)
    return {
        "image": tf.reshape(tf.io.decode_raw(record["image"], tf.uint8), (IMAGE_SIZE, IMAGE_SIZE, 3)),
        "questions": tf.reshape(record["questions"], (QUESTIONS_PER_IMAGE, QUESTION_DIM)),
        "answers": record["answers"],
        "objects": tf.reshape(record["objects"], (NUM_OBJECTS, 4)),
    }


def dataset_dir(root, seed, train_images, val_images, test_seed, test_images, min_distance_gap):
    name = (
        f"v{FORMAT_VERSION}_seed{seed}_train{train_images}_val{val_images}"
        f"_test{test_images}-seed{test_seed}_gap{min_distance_gap:g}"
    )
    return os.path.join(root, name)


def prepare(root, seed, train_images, val_images, test_seed, test_images, min_distance_gap=1.0, log=print):
    """Generate and store the train/val/test splits under `root` unless they exist; return their directory.

    Train and validation come from one generation with `seed` (the paper's 10,000 images with 200 withheld);
    the test split is a separate generation with `test_seed`.
    """
    target = dataset_dir(root, seed, train_images, val_images, test_seed, test_images, min_distance_gap)
    if os.path.exists(os.path.join(target, "manifest.json")):
        verify(target)
        return target
    if test_seed == seed:
        raise ValueError("data.test_seed must differ from seed, or the test images would repeat the training images.")
    os.makedirs(root, exist_ok=True)
    log(f"Generating Sort-of-CLEVR into {target} ...")
    tmp = work_directory(root, "sort_of_clevr")
    start = time.perf_counter()

    def progress(part):
        def report(done, total):
            log(f"  {part}: {done:,} of {total:,} images ({time.perf_counter() - start:.0f} s)")
        return report

    try:
        main = generate(train_images + val_images, seed, min_distance_gap, progress=progress("train + val"))
        splits = {
            "train": {k: v[:train_images] for k, v in main.items()},
            "val": {k: v[train_images:] for k, v in main.items()},
            "test": generate(test_images, test_seed, min_distance_gap, progress=progress("test")),
        }
        for split, arrays in splits.items():
            write_tfrecord(os.path.join(tmp, f"{split}.tfrecord"), arrays)
        manifest = {
            "files": {f"{split}.tfrecord": _file_record(os.path.join(tmp, f"{split}.tfrecord")) for split in splits},
            "format_version": FORMAT_VERSION,
            "seed": seed,
            "test_seed": test_seed,
            "min_distance_gap": min_distance_gap,
            "images": {split: len(arrays["images"]) for split, arrays in splits.items()},
            "questions_per_image": QUESTIONS_PER_IMAGE,
            "answers": ANSWERS,
            "colors": COLORS,
            "shapes": SHAPES,
        }
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)
        publish_modes(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not os.path.exists(os.path.join(target, "manifest.json")):  # another worker may have won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _file_record(path):
    """Size and SHA-256 of a stored file, kept in the manifest so that a damaged copy is found before training."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def read_manifest(directory):
    """The manifest of a generated data directory; a `DataError` saying how to regenerate it if it is damaged."""
    path = os.path.join(directory, "manifest.json")
    try:
        with open(path) as f:
            manifest = json.load(f)
        if not isinstance(manifest, dict) or "images" not in manifest:
            raise ValueError("no image counts")
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is damaged ({e}). Delete the directory {directory} and run the same command again: "
                        "the data is generated again, identically, from its seeds.") from None
    return manifest


def verify(directory):
    """Check the stored files against the sizes and checksums their manifest recorded (manifests written before
    checksums were kept are only read); a `DataError` naming the damaged file and how to regenerate it."""
    manifest = read_manifest(directory)
    for name, expected in manifest.get("files", {}).items():
        path = os.path.join(directory, name)
        found = _file_record(path) if os.path.isfile(path) else None
        if found != expected:
            what = "is missing" if found is None else "does not match the checksum its manifest recorded"
            raise DataError(f"{path} {what}: the data is damaged. Delete the directory {directory} and run the same "
                            "command again: the data is generated again, identically, from its seeds.")
