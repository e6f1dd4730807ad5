"""CLEVR on a tiny fixture in the official layout: reading, vocabulary, categories, preprocessing, augmentation,
training both models, evaluation, export, and clear errors for bad files."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from clevr_fixture import make_clevr
from conftest import run_tool
from relation_networks import config as config_lib
from relation_networks import tasks
from relation_networks.data import clevr
from relation_networks.errors import DataError
from relation_networks.tasks.clevr import rotate


@pytest.fixture(scope="module")
def clevr_dir(tmp_path_factory):
    return make_clevr(str(tmp_path_factory.mktemp("clevr") / "CLEVR_v1.0"))


def _config(clevr_dir, tmp, *overrides):
    sets = [f"data.dir={clevr_dir}", f"data.preprocessed_dir={tmp}/pre", "data.shards=2", f"run_dir={tmp}/run"]
    return config_lib.load("configs/clevr_pixels.yaml", sets + list(overrides))


@pytest.mark.parametrize("function, expected", [
    ("count", "count"), ("exist", "exist"), ("equal_integer", "compare_numbers"), ("less_than", "compare_numbers"),
    ("greater_than", "compare_numbers"), ("query_shape", "query_attribute"), ("query_material", "query_attribute"),
    ("equal_color", "compare_attribute"), ("equal_size", "compare_attribute"), ("filter_color", None),
])
def test_category_from_last_program_function(function, expected):
    assert clevr.category([{"function": "scene"}, {"function": function}]) == expected
    assert clevr.category([{"type": function}]) == expected  # the other spelling of the key


def test_tokenize_and_vocabulary_from_training_only(clevr_dir):
    assert clevr.tokenize("Is there a red Cube?") == ["is", "there", "a", "red", "cube", "?"]
    vocab = clevr.build_vocabulary(clevr_dir)
    assert vocab["words"][:2] == [clevr.PAD, clevr.UNK] and "cubes" in vocab["words"]
    assert set(vocab["answers"]) >= {"yes", "no", "1", "red", "blue"}


def test_preprocess_and_read_back(clevr_dir, tmp_path):
    config = _config(clevr_dir, tmp_path)
    task = tasks.get("clevr")
    task.prepare(config, log=lambda *_: None)
    meta = task.ensure_split(config, "train")
    assert meta == {**meta, "images": 6, "questions": 30, "has_answers": True, "image_size": 128}
    features, labels = next(task._examples(config, "val").batch(5).as_numpy_iterator())
    assert features["image"].shape == (5, 128, 128, 3) and features["image"].dtype == np.uint8
    assert features["question"].shape == (5, 48) and features["question"][0, 0] == 0  # left-padded
    answers, categories = labels
    vocab = task.vocabulary(config)
    assert [clevr.CATEGORIES[c] for c in categories] == [  # the fixture's five question families, in order
        "count", "exist", "query_attribute", "compare_numbers", "compare_attribute"]
    assert vocab["answers"][answers[1]] == "yes"
    assert os.path.exists(os.path.join(str(tmp_path), "run", "clevr_vocab.json"))
    test_meta = task.ensure_split(config, "test")
    assert not test_meta["has_answers"] and test_meta["questions"] == 10
    with pytest.raises(DataError, match="no answers"):
        task.evaluate(lambda f: np.zeros((len(f["question"]), len(vocab["answers"]))), config, "test")


def test_augmentation_only_in_training_and_keeps_content(clevr_dir, tmp_path):
    config = _config(clevr_dir, tmp_path)
    task = tasks.get("clevr")
    plain = next(task.dataset(config, "train", training=False).batch(30).as_numpy_iterator())[0]["image"]
    evaluation = next(task.dataset(config, "train", training=False).batch(30).as_numpy_iterator())[0]["image"]
    np.testing.assert_array_equal(plain, evaluation)  # deterministic, untouched
    trained = next(task.dataset(config, "train", training=True, shuffle=False).batch(30).as_numpy_iterator())[0]["image"]
    assert trained.shape == plain.shape and np.mean(np.any(trained != plain, axis=(1, 2, 3))) > 0.9
    # Content is kept: the augmented image is close to some shift of the original (crop offset within the pad).
    a, b = plain[0].astype(float), trained[0].astype(float)
    best = min(np.abs(np.roll(np.roll(a, dy, 0), dx, 1)[8:-8, 8:-8] - b[8:-8, 8:-8]).mean()
               for dy in range(-4, 5) for dx in range(-4, 5))
    assert best < 12.0
    # Rotating by +a then -a gives back the image (away from the borders).
    image = tf.constant(plain[:1])
    rotated = rotate(image, tf.constant([0.05])).numpy()[0].astype(float)
    restored = rotate(rotate(image, tf.constant([0.05])), tf.constant([-0.05])).numpy()[0].astype(float)
    moved = np.abs(rotated - plain[0]).max(axis=-1) > 30  # shape edges move by a rotation of 0.05 rad
    assert moved.sum() > 50
    assert np.abs(restored[16:-16, 16:-16] - plain[0, 16:-16, 16:-16]).mean() < np.abs(rotated - plain[0])[16:-16, 16:-16].mean() / 2


@pytest.mark.parametrize("damage, message", [
    ("malformed", "malformed JSON at line"),
    ("missing_image", "not found"),
    ("unknown_answer", "is not one of the"),
])
def test_bad_files_are_clear_errors(tmp_path, damage, message):
    root = make_clevr(str(tmp_path / "CLEVR_v1.0"))
    vocab = clevr.build_vocabulary(root)
    qpath = os.path.join(root, "questions", "CLEVR_val_questions.json")
    if damage == "malformed":
        with open(qpath, "w") as f:
            f.write('{"questions": [{"question": "x",}')
    elif damage == "missing_image":
        os.remove(os.path.join(root, "images", "val", "CLEVR_val_000001.png"))
    else:
        data = json.load(open(qpath))
        data["questions"][3]["answer"] = "purple"
        json.dump(data, open(qpath, "w"))
    with pytest.raises(DataError, match=message) as info:
        clevr.preprocess(root, "val", str(tmp_path / "out"), vocab, shards=1, log=lambda *_: None)
    assert "CLEVR_val" in str(info.value)
    if damage == "unknown_answer":
        assert "question record 3" in str(info.value)
    assert not os.path.exists(tmp_path / "out")  # nothing half-written


@pytest.mark.parametrize("config_name", ["clevr_pixels", "clevr_state"])
def test_train_evaluate_export(clevr_dir, tmp_path, config_name):
    run_dir = str(tmp_path / "run")
    sets = [f"data.dir={clevr_dir}", f"data.preprocessed_dir={tmp_path}/pre", "data.shards=2", f"run_dir={run_dir}",
            "model.g_units=[16,16]", "model.f_units=[16]", "model.lstm_units=16", "model.conv_filters=[8,8,8,8]",
            "train.epochs=2", "train.batch_size=8", "train.precision=float32"]
    result = run_tool("train", "--config", f"configs/{config_name}.yaml", *[a for s in sets for a in ("--set", s)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compare_attribute" in result.stdout and "query_attribute" in result.stdout
    if config_name == "clevr_pixels":  # the evaluation tool; for the other, the trainer's own final evaluation
        result = run_tool("evaluate", "--run", run_dir, "--split", "val", "--json", str(tmp_path / "val.json"))
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.load(open(tmp_path / "val.json"))
    else:
        report = json.load(open(os.path.join(run_dir, "metrics.json")))["evaluation"]["val"]
    assert set(report["groups"]) == set(clevr.CATEGORIES) and report["examples"] == 15
    assert report["paper"]["accuracy"] == (0.955 if config_name == "clevr_pixels" else 0.964)
    out = run_tool("export", "--run", run_dir, "--out", str(tmp_path / "sm"), "--serving_doc", str(tmp_path / "S.md"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FAILED" not in out.stdout
    assert os.path.exists(tmp_path / "sm" / "clevr" / "1" / "vocab.txt")


def test_missing_directory_is_one_clear_error(tmp_path):
    result = run_tool("train", "--config", "configs/clevr_pixels.yaml", "--set", f"data.dir={tmp_path}/nothing",
                      "--set", f"run_dir={tmp_path}/run")
    assert result.returncode == 2 and "CLEVR" in result.stderr and "Traceback" not in result.stderr


def test_tfds_source_is_converted_like_the_official_layout(tmp_path, monkeypatch):
    """TFDS `clevr` examples (no programs) go through the same preprocessing; categories are unknown (-1)."""
    names = {"color": clevr.COLORS, "shape": clevr.SHAPES, "material": clevr.MATERIALS, "size": clevr.SIZES}
    examples = [{
        "file_name": f"CLEVR_train_{n:06d}.png".encode(),
        "image": np.full((320, 480, 3), 60 * n, np.uint8),
        "objects": {"color": np.array([1, 2]), "shape": np.array([0, 1]), "material": np.array([0, 1]),
                    "size": np.array([0, 1]), "3d_coords": np.zeros((2, 3), np.float32)},
        "question_answer": {"question": np.array([b"How many cubes are there?", b"Is there a red cube?"]),
                            "answer": np.array([b"1", b"yes"])},
    } for n in range(3)]
    fake = lambda split, data_dir=None: (3, True, (clevr._tfds_record(n, e, names, split) for n, e in enumerate(examples)))
    monkeypatch.setattr(clevr, "tfds_records", fake)
    vocab = clevr.build_vocabulary(str(tmp_path), source="tfds")
    assert vocab["answers"] == ["1", "yes"] and "cubes" in vocab["words"]
    out = clevr.preprocess(str(tmp_path), "train", str(tmp_path / "pre"), vocab, shards=1, log=lambda *_: None,
                           source="tfds")
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["images"] == 3 and meta["questions"] == 6
    record = next(iter(tf.data.TFRecordDataset(os.path.join(out, "train-00000-of-00001.tfrecord")).map(
        lambda r: clevr.parse_example(r, 128, 48))))
    assert list(record["categories"].numpy()) == [-1, -1]
    assert record["object_mask"].numpy().sum() == 2 and record["objects"].numpy()[0, 3 + 1] == 1.0  # red


def test_preprocessed_shards_are_rebuilt_when_what_they_were_built_from_changes(tmp_path):
    """The cache is keyed on its inputs: a changed question file or question_length rebuilds it (it was reused
    with a vocabulary whose word ids no longer matched, or ended in a traceback)."""
    source = make_clevr(str(tmp_path / "CLEVR_v1.0"))
    task = tasks.get("clevr")
    logs = []
    config = _config(source, tmp_path)
    first = task.ensure_split(config, "val", log=logs.append)
    assert task.ensure_split(config, "val", log=logs.append) == first  # unchanged: reused
    assert sum("Preprocessing" in line for line in logs) == 1

    shorter = _config(source, tmp_path, "data.question_length=40")
    meta = task.ensure_split(shorter, "val", log=logs.append)
    assert meta["question_length"] == 40 and any("question_length changed" in line for line in logs)
    features, _ = next(task._examples(shorter, "val").batch(2).as_numpy_iterator())
    assert features["question"].shape == (2, 40)

    path = clevr.questions_path(source, "val")
    with open(path) as f:
        questions = json.load(f)
    questions["questions"][0]["question"] = "How many cubes are there ?"
    with open(path, "w") as f:
        json.dump(questions, f)
    os.utime(path, ns=(1, 1))  # another modification time, whatever the clock's resolution
    logs.clear()
    task.ensure_split(shorter, "val", log=logs.append)
    assert any("files changed" in line for line in logs)
