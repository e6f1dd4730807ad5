"""Trainer behaviour across runs: `train.keep_best` (the final model is the one from the validation evaluation
where the metric peaked) and resuming under a changed learning rate or schedule."""

import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, tiny_sort_of_clevr_overrides
from relation_networks import batch_norm, checkpointing, run_records, schedules, serving, tasks, training
from relation_networks import config as config_lib
from relation_networks.errors import UserError
from relation_networks.tasks import base

STEPS_PER_EPOCH = 48 * 20 // 32


def _config(tmp_path, *extra):
    overrides = tiny_sort_of_clevr_overrides(str(tmp_path / "data"), str(tmp_path / "run")) + [
        "train.keep_checkpoints=20", f"train.checkpoint_every_steps={STEPS_PER_EPOCH}", *extra]
    return config_lib.load(os.path.join(ROOT, "configs/sort_of_clevr.yaml"), overrides)


def _scripted_validation(monkeypatch, values):
    """Replace the validation accuracy the trainer sees by `values`, one per evaluation, then leave it real (as the
    other splits are): the final report evaluates the validation split once more."""
    values = iter(values)
    evaluate = run_records._evaluate

    def scripted(task, predict, config, split):
        report = evaluate(task, predict, config, split)
        if split == "val":
            report.metrics["accuracy"] = next(values, report.metrics["accuracy"])
        return report

    monkeypatch.setattr(run_records, "_evaluate", scripted)


def _load_model(config):
    return serving.load_keras_predictor(config.run_dir)[1]


def _checkpoint_weights(config, step):
    model = _load_model(config)
    path = os.path.join(config.run_dir, "checkpoints", f"ckpt-{step}")
    checkpointing.make_checkpoint(model).read(path).assert_existing_objects_matched()
    return [v.numpy() for v in model.variables]


def _final_weights(config):
    return [v.numpy() for v in _load_model(config).variables]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_final_model_is_the_best_epoch_and_survives_a_resume(tmp_path, monkeypatch):
    config = _config(tmp_path, "train.epochs=3", "train.keep_best=accuracy")
    _scripted_validation(monkeypatch, [0.3, 0.7, 0.5])
    metrics = training.train(config, log=lambda *a: None)
    assert metrics["best"] == {"metric": "accuracy", "value": 0.7, "epoch": 2, "step": 2 * STEPS_PER_EPOCH,
                               "checkpoint": f"ckpt-{2 * STEPS_PER_EPOCH}"}
    best_weights = _checkpoint_weights(config, 2 * STEPS_PER_EPOCH)
    assert _same(_final_weights(config), best_weights)
    assert not _same(best_weights, _checkpoint_weights(config, 3 * STEPS_PER_EPOCH))  # the epochs differ
    # The test evaluation in metrics.json is of the best model.
    _, _, predict = serving.load_keras_predictor(config.run_dir)
    report = run_records._evaluate(tasks.get("sort_of_clevr"), predict, config, "test")
    assert report.metrics["accuracy"] == pytest.approx(metrics["evaluation"]["test"]["metrics"]["accuracy"])

    # Resumed for a fourth, worse epoch: training continues from the last checkpoint, the best stays epoch 2.
    config = _config(tmp_path, "train.epochs=4", "train.keep_best=accuracy")
    _scripted_validation(monkeypatch, [0.6])
    metrics = training.train(config, log=lambda *a: None)
    assert metrics["step"] == 4 * STEPS_PER_EPOCH
    assert metrics["best"]["epoch"] == 2
    assert _same(_final_weights(config), best_weights)


def test_best_json_and_the_checkpoint_it_names_stay_a_pair(tmp_path, monkeypatch):
    config = _config(tmp_path, "train.epochs=2", "train.keep_best=accuracy")
    _scripted_validation(monkeypatch, [0.9, 0.1])
    training.train(config, log=lambda *a: None)
    # A kill after a newer best checkpoint was written but before best.json named it:
    model = _load_model(config)
    keeper = checkpointing.BestModel("accuracy", model, os.path.join(config.run_dir, checkpointing.BEST_DIR))
    for variable in model.trainable_variables:
        variable.assign(np.zeros(variable.shape, variable.dtype))
    keeper.manager.save(checkpoint_number=999)

    config = _config(tmp_path, "train.epochs=3", "train.keep_best=accuracy")
    _scripted_validation(monkeypatch, [0.2])
    metrics = training.train(config, log=lambda *a: None)
    assert metrics["best"]["step"] == STEPS_PER_EPOCH
    assert _same(_final_weights(config), _checkpoint_weights(config, STEPS_PER_EPOCH))


def test_a_run_stopped_inside_an_epoch_offers_its_last_model(tmp_path, monkeypatch):
    stop = 2 * STEPS_PER_EPOCH - 5
    config = _config(tmp_path, "train.epochs=3", "train.keep_best=accuracy", f"train.max_steps={stop}")
    _scripted_validation(monkeypatch, [0.4, 0.9])  # epoch 1, then the model at the stop
    metrics = training.train(config, log=lambda *a: None)
    assert metrics["best"]["step"] == stop and metrics["best"]["value"] == 0.9
    assert _same(_final_weights(config), _checkpoint_weights(config, stop))


def test_unknown_metric_is_one_clear_error_that_keeps_the_checkpoint(tmp_path):
    with pytest.raises(config_lib.ConfigError, match=r"keep_best' \('acuracy'\) is not a validation metric"):
        _config(tmp_path, "train.epochs=2", "train.keep_best=acuracy")  # refused when the config loads
    assert not os.path.exists(tmp_path / "run")
    # A task that cannot name its metrics before an evaluation: the trainer refuses at the first validation.
    config = _config(tmp_path, "train.epochs=2", "train.keep_best=accuracy")
    config.train.keep_best = "acuracy"
    with pytest.raises(UserError, match=r"keep_best='acuracy' is not a validation metric.*accuracy"):
        training.train(config, log=lambda *a: None)
    assert tf.train.latest_checkpoint(os.path.join(config.run_dir, "checkpoints")).endswith(f"-{STEPS_PER_EPOCH}")
    assert not os.path.exists(os.path.join(config.run_dir, checkpointing.BEST_DIR, checkpointing.BEST_FILE))
    # Resuming the same run with the mistake still in it fails before any training.
    with pytest.raises(UserError, match="not a validation metric"):
        training.train(config, log=lambda *a: None)


def test_keep_best_needs_the_validation_split(tmp_path):
    with pytest.raises(config_lib.ConfigError, match=r"keep_best.*eval_splits"):
        _config(tmp_path, "train.keep_best=accuracy", "train.eval_splits=[test]")


def test_without_keep_best_the_final_model_is_the_last(tmp_path):
    config = _config(tmp_path, "train.epochs=1")
    metrics = training.train(config, log=lambda *a: None)
    assert "best" not in metrics
    assert not os.path.exists(os.path.join(config.run_dir, checkpointing.BEST_DIR))
    assert _same(_final_weights(config), _checkpoint_weights(config, STEPS_PER_EPOCH))
    with open(os.path.join(config.run_dir, run_records.METRICS_FILE)) as f:
        assert "best" not in json.load(f)


def _logged_rates(lines):
    return {int(m.group(1)): float(m.group(2))
            for m in (re.search(r"^step (\d+)/\d+ .*\blr ([0-9.e-]+)", line) for line in lines) if m}


def test_a_resumed_run_follows_a_changed_learning_rate_and_schedule(tmp_path):
    """The optimizer state is checkpointed by name without the rate, so lowering the rate (or switching to a
    schedule) when resuming is honoured, and the Adam moments and step counter carry over."""
    config = _config(tmp_path, "train.epochs=1", "train.learning_rate=1e-3", "train.warmup_steps=0")
    training.train(config, log=lambda *a: None)

    lines = []
    config = _config(tmp_path, "train.epochs=2", "train.learning_rate=2e-4", "train.warmup_steps=0",
                     "train.lr_schedule=cosine", "train.lr_decay_fraction=1.0", "train.log_every_steps=1")
    metrics = training.train(config, log=lines.append)
    assert any(f"at step {STEPS_PER_EPOCH} " in line for line in lines if line.startswith("Resumed from"))
    assert metrics["step"] == 2 * STEPS_PER_EPOCH
    rates = _logged_rates(lines)
    assert min(rates) == STEPS_PER_EPOCH + 1
    total = 2 * STEPS_PER_EPOCH
    for step, rate in rates.items():  # Keras logs the rate of the next step (the optimizer's iteration count)
        assert rate == pytest.approx(2e-4 * 0.5 * (1 + math.cos(math.pi * step / total)), rel=1e-3, abs=1e-9)

    lines = []
    config = _config(tmp_path, "train.epochs=3", "train.learning_rate=5e-5", "train.warmup_steps=0",
                     "train.lr_schedule=constant", "train.log_every_steps=1")
    training.train(config, log=lines.append)
    assert set(_logged_rates(lines).values()) == {5e-5}  # back to a constant rate: the config's, not a saved one


def test_the_cosine_decay_can_hold_the_rate_first_and_end_at_a_chosen_step():
    """`lr_decay_fraction` holds the peak rate after the warm-up and decays over the last part of the schedule;
    `lr_schedule_steps` sets where the schedule ends (a time-limited run's last step), not epochs x steps."""
    train = config_lib.TrainConfig(learning_rate=1e-3, lr_schedule="cosine", warmup_steps=10, lr_decay_fraction=0.25,
                                   lr_schedule_steps=410, lr_min_fraction=0.1)
    schedule = schedules.make_learning_rate(train, steps_per_epoch=100, total_steps=1000)
    rate = lambda step: float(schedule(step))
    assert rate(0) == 0.0 and rate(5) == pytest.approx(5e-4)
    assert rate(10) == rate(200) == rate(310) == pytest.approx(1e-3)  # 400 steps after the warm-up: hold 300
    assert rate(360) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half-way through the decay
    assert rate(410) == rate(5000) == pytest.approx(1e-4)  # lr_min_fraction from the end of the schedule on
    keras_cosine = schedules.make_learning_rate(
        config_lib.TrainConfig(learning_rate=1e-3, lr_schedule="cosine", lr_schedule_steps=400), 100, 1000)
    assert float(keras_cosine(200)) == pytest.approx(5e-4)  # the whole-run decay also ends at lr_schedule_steps


@pytest.mark.parametrize("override, key", [("train.lr_decay_fraction=0", "lr_decay_fraction"),
                                           ("train.lr_decay_fraction=1.5", "lr_decay_fraction"),
                                           ("train.lr_schedule_steps=0", "lr_schedule_steps")])
def test_a_bad_schedule_length_is_a_config_error_before_anything_is_written(tmp_path, override, key):
    with pytest.raises(config_lib.ConfigError, match=key):
        _config(tmp_path, override)
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "data")


def test_a_checkpoint_in_the_old_optimizer_layout_gets_its_own_message(tmp_path):
    """Checkpoints that hold the whole optimizer object (before its state was saved by name) cannot be resumed: the
    error says why instead of the generic "could not be restored", and nothing in the run directory is touched."""
    config = _config(tmp_path, "train.epochs=1")
    training.train(config, log=lambda *a: None)
    directory = os.path.join(config.run_dir, "checkpoints")
    from relation_networks.optimizers import LayerwiseAdam

    model = _load_model(config)
    optimizer = LayerwiseAdam(1e-3)
    optimizer.build(model.trainable_variables)
    old = tf.train.Checkpoint(model_variables=checkpointing._by_name(model.variables, lambda v: v.path, "model"),
                              optimizer=optimizer, train_seconds=tf.Variable(1.0, dtype=tf.float64))
    shutil.rmtree(directory)  # as if every checkpoint had been written by the old version
    tf.train.CheckpointManager(old, directory, max_to_keep=20).save(checkpoint_number=10_000)
    before = sorted(os.listdir(config.run_dir)), sorted(os.listdir(directory))
    config = _config(tmp_path, "train.epochs=2")
    with pytest.raises(UserError, match="layout used before its state was saved by name"):
        training.train(config, log=lambda *a: None)
    assert (sorted(os.listdir(config.run_dir)), sorted(os.listdir(directory))) == before


def test_batch_norm_recalibration_sets_the_mean_of_the_batch_statistics():
    import keras

    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, kernel_initializer="ones")(inputs)
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.9)(hidden))
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=i, size=(8, 3)).astype("float32") for i in range(3)]
    dataset = [({"x": b}, None) for b in batches]
    count = batch_norm.recalibrate_batch_norm(model, lambda f, training: model(f["x"], training=training), dataset)
    (bn,) = batch_norm.batch_norm_layers(model)
    summed = [b.sum(axis=1, keepdims=True) * np.ones((1, 4)) for b in batches]  # the Dense layer's outputs
    assert count == 3 and bn.momentum == 0.9  # the layer's own momentum is back
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([h.mean(axis=0) for h in summed], axis=0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([h.var(axis=0) for h in summed], axis=0),
                               rtol=1e-4)


def test_recalibrated_statistics_are_evaluated_saved_and_reproduced_on_a_rerun(tmp_path):
    lines = []
    config = _config(tmp_path, "train.epochs=1", "train.bn_recalibration_batches=3")
    training.train(config, log=lines.append)
    assert any("re-estimated over 3 training batches" in str(line) for line in lines)
    saved = _final_weights(config)
    assert not _same(saved, _checkpoint_weights(config, STEPS_PER_EPOCH))  # the checkpoint keeps the moving averages
    training.train(config, log=lambda *a: None)  # a finished run: no training, the same statistics again
    assert _same(_final_weights(config), saved)
    with pytest.raises(config_lib.ConfigError, match="bn_recalibration_batches"):
        _config(tmp_path / "bad", "train.bn_recalibration_batches=-1")


def test_a_resumed_run_whose_time_budget_is_spent_trains_no_further_step(tmp_path):
    """Re-running a run stopped by train.time_limit_minutes re-evaluates it where it stopped: it does not train on
    until its next logging step."""
    config = _config(tmp_path, "train.epochs=3", "train.max_steps=5")
    training.train(config, log=lambda *a: None)
    lines = []
    metrics = training.train(_config(tmp_path, "train.epochs=3", "train.time_limit_minutes=1e-6"), log=lines.append)
    assert metrics["step"] == 5 and metrics["stopped"] == "time_limit" and "test" in metrics["evaluation"]
    assert any("Stopped at step 5" in line for line in lines)


def test_pipelines_iterated_from_python_run_without_autotuning(monkeypatch):
    """tf.data's autotuner sleeps up to 60 s between rounds and a dropped iterator waits for it: evaluation passes go
    through `prefetched`, which turns it off and changes no element and no order."""
    ds = tf.data.Dataset.range(10).map(lambda x: 2 * x, num_parallel_calls=tf.data.AUTOTUNE)
    assert ds.options().autotune.enabled is not False
    quiet = base.prefetched(ds)
    assert quiet.options().autotune.enabled is False
    assert list(quiet.as_numpy_iterator()) == list(range(0, 20, 2))

    original, iterated = base.prefetched, []
    monkeypatch.setattr(base, "prefetched", lambda d: iterated.append(original(d)) or iterated[-1])
    config = config_lib.load(os.path.join(ROOT, "configs/nth_farthest_lstm.yaml"), [
        "data.num_vectors=3", "data.vector_dim=2", "data.val_size=40", "model.lstm_units=4", "model.mlp_units=[4]"])
    task = tasks.get("nth_farthest")
    model = task.build_model(config)
    report = task.evaluate(lambda f: model(f, training=False), config, "val", batch_size=16)
    assert report.examples == 40 and len(iterated) == 1
    assert iterated[0].options().autotune.enabled is False
