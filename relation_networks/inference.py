"""Load a trained model for prediction from a run directory, a `.keras` file, or an exported model.

Every form gives the same thing: the experiment config and a `predict_fn(features: dict of NumPy) -> logits`.
"""

import os

from relation_networks import config as config_lib
from relation_networks.errors import UserError


def _config_next_to(path, overrides):
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    candidates = [os.path.join(directory, "config.yaml"), os.path.join(os.path.dirname(directory), "config.yaml")]
    for candidate in candidates:
        if os.path.isfile(candidate):
            config = config_lib.load(candidate, overrides)
            config.run_dir = os.path.dirname(candidate)  # files saved with the model (e.g. a vocabulary) live here
            return config
    raise UserError(f"No config.yaml found next to {path}: expected a run directory or an exported model.")


def load_keras_predictor(path, overrides=()):
    """(config, predict_fn) for a run directory or a `.keras` file inside one."""
    import keras
    import tensorflow as tf

    from relation_networks import training  # noqa: F401  registers custom objects

    model_path = os.path.join(path, training.MODEL_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(model_path):
        raise UserError(
            f"No trained model at {model_path}. Train first (tools/train.py), or pass a run directory that finished."
        )
    config = _config_next_to(model_path, overrides)
    model = keras.models.load_model(model_path)
    predict = tf.function(lambda features: model(features, training=False), reduce_retracing=True)
    return config, model, (lambda features: predict(features).numpy())


def load_predictor(path, overrides=()):
    """(config, predict_fn) for a run directory, a `.keras` file, a SavedModel directory or a `.tflite` file."""
    if not os.path.exists(path):
        raise UserError(f"Model path not found: {path}")
    from relation_networks import export  # SavedModel / TFLite readers live with the exporter

    if path.endswith(".tflite") or os.path.isfile(os.path.join(path, "saved_model.pb")):
        return export.load_predictor(path, overrides)
    config, _, predict = load_keras_predictor(path, overrides)
    return config, predict
