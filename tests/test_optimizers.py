import keras
import numpy as np
import pytest

from relation_networks.config import ConfigError
from relation_networks.optimizers import LayerwiseAdam, multiplier_for


def test_multiplier_for_matches_whole_names_and_prefers_the_longest_key():
    rules = {"cnn": 0.5, "relation_module": 2.0, "relation_module/g_theta_0": 0.0}
    assert multiplier_for("cnn/conv_0/kernel", rules) == 0.5
    assert multiplier_for("cnn2/conv_0/kernel", rules) == 1.0
    assert multiplier_for("relation_module/g_theta_1/kernel", rules) == 2.0
    assert multiplier_for("relation_module/g_theta_0/kernel", rules) == 0.0
    assert multiplier_for("logits/kernel", {}) == 1.0


def _two_layer_model():
    keras.utils.set_random_seed(0)
    x = keras.Input((4,))
    y = keras.layers.Dense(3, name="slow")(keras.layers.Dense(5, name="fast")(x))
    return keras.Model(x, y)


def _first_step(multipliers):
    """Absolute change of every variable after one Adam step on a fixed batch."""
    model = _two_layer_model()
    optimizer = LayerwiseAdam(1e-2, lr_multipliers=multipliers)
    before = [v.numpy().copy() for v in model.trainable_variables]
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(x) ** 2)
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    return {v.path: np.abs(v.numpy() - b) for v, b in zip(model.trainable_variables, before)}


def test_each_layer_steps_at_its_own_rate():
    plain = _first_step({})
    scaled = _first_step({"slow": 0.25, "fast": 0.0})
    for path, change in scaled.items():
        if path.startswith("fast/"):
            assert np.all(change == 0.0), path  # frozen
        else:
            moved = plain[path] > 1e-6
            np.testing.assert_allclose(change[moved], 0.25 * plain[path][moved], rtol=1e-3, err_msg=path)


def test_a_key_that_matches_no_layer_is_an_error():
    model = _two_layer_model()
    with pytest.raises(ConfigError, match=r"no trainable variable under 'snow'.*fast, slow"):
        LayerwiseAdam(1e-3, lr_multipliers={"snow": 0.5}).build(model.trainable_variables)
    with pytest.raises(ConfigError, match=">= 0"):
        LayerwiseAdam(1e-3, lr_multipliers={"slow": -1.0})


def test_config_round_trip():
    optimizer = LayerwiseAdam(3e-4, lr_multipliers={"cnn": 0.2})
    clone = LayerwiseAdam.from_config(optimizer.get_config())
    assert clone.lr_multipliers == {"cnn": 0.2}
    assert float(clone.learning_rate) == pytest.approx(3e-4)
