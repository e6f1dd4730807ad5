"""Sort-of-CLEVR training groups: several questions per image share one CNN pass, and nothing else changes."""

import numpy as np
import pytest
import tensorflow as tf

from relation_networks import config as config_lib
from relation_networks import tasks
from relation_networks.config import ConfigError
from relation_networks.data import sort_of_clevr as soc

TASK = tasks.get("sort_of_clevr")


def _config(data_dir, *overrides):
    small = [
        f"data.dir={data_dir}", "data.train_images=12", "data.val_images=2", "data.test_images=2",
        "model.conv_filters=[4,4,4,4]", "model.g_units=[8,8]", "model.f_units=[8]", *overrides,
    ]
    config = config_lib.load("configs/sort_of_clevr.yaml", small)
    TASK.prepare(config, log=lambda *a: None)
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("soc_groups"))


def _pairs(dataset):
    """Every (image bytes, question bytes, answer) in a dataset of groups, as a sorted list."""
    out = []
    for features, answers in dataset:
        image = features["image"].numpy().tobytes()
        for q, a in zip(features["question"].numpy(), answers.numpy()):
            out.append((image, q.tobytes(), int(a)))
    return sorted(out)


def test_one_epoch_of_groups_holds_every_question_once(data_dir):
    config = _config(data_dir)
    per_question = [
        (f["image"].numpy().tobytes(), f["question"].numpy().tobytes(), int(a))
        for f, a in TASK.dataset(config, "train", shuffle=False)
    ]
    groups = TASK.training_dataset(config, seed=7)
    first = next(iter(groups))
    assert first[0]["image"].shape == (75, 75, 3) and first[0]["question"].shape == (4, 11)
    assert first[1].shape == (4,)
    assert _pairs(groups) == sorted(per_question)  # same questions, same answers, each exactly once


def test_groups_are_redrawn_each_epoch_and_deterministic(data_dir):
    config = _config(data_dir)

    def grouping(seed):
        return [f["question"].numpy().tobytes() for f, _ in TASK.training_dataset(config, seed=seed)]

    assert grouping(1) == grouping(1)
    assert grouping(1) != grouping(2)


@pytest.mark.parametrize("model_type, film_layers", [("rn", "[]"), ("mlp", "[]"), ("rn", "[0,2]"), ("mlp", "[0]")])
def test_grouped_forward_equals_the_per_question_model(data_dir, model_type, film_layers):
    config = _config(data_dir, f"model.type={model_type}", "data.group_questions=5", f"model.film_layers={film_layers}")
    model = TASK.build_model(config)
    rng = np.random.default_rng(0)
    for weight in model.get_layer("cnn").weights:
        if "/film_" in weight.path:  # FiLM starts at zero (question-blind): make each question change the CNN
            weight.assign(rng.normal(size=weight.shape))
    forward = TASK.training_forward(config, model)
    features, labels = next(iter(TASK.training_dataset(config, seed=0).batch(3)))
    grouped = forward(features, training=False).numpy()
    assert grouped.shape == (3, 5, len(soc.ANSWERS)) and labels.shape == (3, 5)
    one_by_one = model(
        {"image": tf.repeat(features["image"], 5, axis=0), "question": tf.reshape(features["question"], (-1, 11))},
        training=False,
    ).numpy()
    np.testing.assert_allclose(grouped.reshape(15, -1), one_by_one, rtol=1e-5, atol=1e-5)


def test_group_size_one_is_the_plain_dataset(data_dir):
    config = _config(data_dir, "data.group_questions=1")
    features, label = next(iter(TASK.training_dataset(config, seed=0)))
    assert features["question"].shape == (11,) and label.shape == ()


def test_a_group_of_no_questions_is_refused_when_the_config_loads(data_dir):
    with pytest.raises(ConfigError, match="'data.group_questions' must be greater than 0"):
        _config(data_dir, "data.group_questions=0")


@pytest.mark.parametrize("size", [3, 40])
def test_group_size_must_divide_the_questions(data_dir, size):
    with pytest.raises(ConfigError, match="group_questions' must divide the 20 questions"):  # when the config loads
        _config(data_dir, f"data.group_questions={size}")


def test_report_breaks_accuracy_down_by_question_colour(data_dir):
    config = _config(data_dir, "data.val_images=6")
    truth = {}
    for features, answer in TASK.dataset(config, "val"):
        truth[features["image"].numpy().tobytes() + features["question"].numpy().tobytes()] = int(answer)

    def right_about_red_only(batch):
        logits = np.zeros((len(batch["question"]), len(soc.ANSWERS)), np.float32)
        for row, (image, question) in enumerate(zip(batch["image"], batch["question"])):
            answer = truth[image.tobytes() + question.tobytes()]
            red = question[: soc.NUM_OBJECTS].argmax() == soc.COLORS.index("red")
            logits[row, answer if red else (answer + 1) % len(soc.ANSWERS)] = 1.0
        return logits

    report = TASK.evaluate(right_about_red_only, config, "val", batch_size=32)
    by_colour = report.extra["accuracy_by_colour"]
    assert set(by_colour) <= set(soc.SUBTYPE_NAMES) and by_colour
    for subtype, colours in by_colour.items():
        for colour, accuracy in colours.items():
            assert accuracy == (1.0 if colour == "red" else 0.0), (subtype, colour)
    assert any("red" in colours for colours in by_colour.values())


def test_report_breaks_closest_furthest_down_by_answer_margin(data_dir):
    config = _config(data_dir, "data.val_images=6")
    records = list(TASK.images(config, "val").as_numpy_iterator())
    truth = {}
    for record in records:
        for q, a in zip(record["questions"], record["answers"]):
            truth[record["image"].tobytes() + q.tobytes()] = (int(a), soc.answer_margin(record["objects"], q))

    def right_on_wide_margins(batch):
        logits = np.zeros((len(batch["question"]), len(soc.ANSWERS)), np.float32)
        for row, (image, question) in enumerate(zip(batch["image"], batch["question"])):
            answer, margin = truth[image.tobytes() + question.tobytes()]
            logits[row, answer if not margin < 8.0 else (answer + 1) % len(soc.ANSWERS)] = 1.0
        return logits

    report = TASK.evaluate(right_on_wide_margins, config, "val", batch_size=32)
    by_margin = report.extra["closest_furthest_by_margin"]
    asked = [soc.decode_question(q)[1] for record in records for q in record["questions"]]
    assert sum(g["count"] for g in by_margin.values()) == sum(s in ("closest", "furthest") for s in asked)
    for name, group in by_margin.items():
        assert group["accuracy"] == (0.0 if name in ("under 2 px", "2-4 px", "4-8 px") else 1.0), name


def test_film_layer_out_of_range_is_a_config_error(data_dir):
    config = _config(data_dir, "model.film_layers=[4]")  # the CNN has layers 0-3
    with pytest.raises(ConfigError, match="film_layers"):
        TASK.model_from_config(config)
