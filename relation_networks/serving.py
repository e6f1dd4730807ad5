"""Loading trained models for prediction, and answering requests in TF Serving's REST format.

Every form of a trained model gives the same thing through `load_predictor`: the experiment config and a
`predict_fn(features: dict of NumPy) -> logits` -- a run directory or a `.keras` file (Keras), an exported
SavedModel directory, or a `.tflite` file (LiteRT). `load_saved_model` and `load_tflite` need only TensorFlow /
LiteRT, not the project's code.

Requests follow TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest):

    {"instances": [{"image": ..., "question": ...}, ...]}   ->  {"predictions": [{"answer": "square", ...}, ...]}
    {"inputs": {"image": [...], "question": [...]}}          ->  {"outputs": {"answer": ["square", ...], ...}}

Each prediction (row format) holds every output of the signature, keyed by name; the columnar format gives each
output batched. `parse_request` refuses, with one `RequestError` naming the input and the example, anything the
model would answer wrongly or not at all: wrong names, shapes or types, inputs of different batch sizes, NaN or
infinite values, integers outside an input's valid range (a token id outside the vocabulary, say).
"""

import os
import zipfile

import numpy as np

from relation_networks import config as config_lib
from relation_networks.errors import UserError

SIGNATURE = "serving_default"
ANSWER_OUTPUT = "answer"  # the answer in words (a string per example), in exports that have answer names
# Examples run through the model at once: a large request is answered in batches of this many, so its memory is
# bounded by the batch, not by the request.
DEFAULT_BATCH_SIZE = 256


class RequestError(UserError):
    """A prediction request does not match the model's signature or holds values the model cannot answer."""


# -- loading ------------------------------------------------------------------------------------------------------


def load_saved_model(path):
    """`fn(features dict of NumPy) -> outputs dict of NumPy` for a SavedModel's serving signature; `fn.specs` holds
    the inputs' shapes and dtypes and `fn.outputs` the output names."""
    import tensorflow as tf

    signature = tf.saved_model.load(path).signatures[SIGNATURE]
    _, specs = signature.structured_input_signature

    def run(features):
        inputs = {k: tf.convert_to_tensor(features[k], dtype=specs[k].dtype) for k in specs}
        return {k: v.numpy() for k, v in signature(**inputs).items()}

    run.specs = {k: {"shape": list(s.shape), "dtype": s.dtype.name} for k, s in specs.items()}
    run.outputs = sorted(signature.structured_outputs)
    return run


def load_tflite(path):
    """`fn(features dict of NumPy) -> outputs dict of NumPy` for a `.tflite` file, run with LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    runner = interpreter.get_signature_runner(SIGNATURE)
    details = runner.get_input_details()

    def run(features):
        return runner(**{k: np.asarray(features[k], dtype=d["dtype"]) for k, d in details.items()})

    run.specs = {k: {"shape": [None if s < 0 else int(s) for s in d["shape_signature"]],
                     "dtype": np.dtype(d["dtype"]).name} for k, d in details.items()}
    run.outputs = sorted(runner.get_output_details())
    return run


def load_exported(path):
    """The runner (`load_saved_model` / `load_tflite`) for an exported SavedModel directory or `.tflite` file, with
    a `UserError` for anything else."""
    if not os.path.exists(path):
        raise UserError(f"Model not found: {path}")
    if path.endswith(".tflite"):
        return load_tflite(path)
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise UserError(f"{path} is neither a SavedModel directory nor a .tflite file.")
    return load_saved_model(path)


def run_in_batches(runner, features, batch_size=DEFAULT_BATCH_SIZE):
    """`runner` over `features` in consecutive batches of at most `batch_size` examples; outputs concatenated."""
    n = len(next(iter(features.values())))
    parts = [runner({k: v[i : i + batch_size] for k, v in features.items()}) for i in range(0, max(n, 1), batch_size)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def to_instances(features):
    """Features dict of batched arrays -> TF Serving REST `instances` (a list of per-example dicts)."""
    n = len(next(iter(features.values())))
    return [{k: np.asarray(v[i]).tolist() for k, v in features.items()} for i in range(n)]


def config_next_to(path, overrides=()):
    """The experiment config saved beside a model (a run directory, an export, or the run holding a `.keras` file),
    with `run_dir` set to its directory (files saved with the model, e.g. a vocabulary, live there)."""
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    for candidate in (os.path.join(directory, "config.yaml"), os.path.join(os.path.dirname(directory), "config.yaml")):
        if os.path.isfile(candidate):
            config = config_lib.load(candidate, overrides)
            config.run_dir = os.path.dirname(candidate)
            return config
    raise UserError(f"No config.yaml found next to {path}: expected a run directory or an exported model.")


MODEL_FILE = "model.keras"  # the trained model in a run directory


def load_keras_predictor(path, overrides=()):
    """(config, model, predict_fn) for a run directory or a `.keras` file inside one."""
    import keras
    import tensorflow as tf

    import relation_networks  # noqa: F401  (registers the layers, which keras.models.load_model needs)

    model_path = os.path.join(path, MODEL_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(model_path):
        raise UserError(
            f"No trained model at {model_path}. Train first (tools/train.py), or pass a run directory that finished."
        )
    config = config_next_to(model_path, overrides)
    fix = ("re-run the training that wrote it (it resumes from the run's checkpoints and saves the model again), or "
           "use another copy.")
    if not zipfile.is_zipfile(model_path):  # Keras would report a truncated archive as "File not found"
        raise UserError(f"{model_path} is not a readable Keras model: not a complete .keras (zip) archive, it is "
                        f"truncated or corrupt; {fix}")
    try:
        model = keras.models.load_model(model_path)
    except Exception as e:  # a damaged or foreign archive: zipfile, h5py and Keras raise many types
        raise UserError(f"{model_path} is not a readable Keras model ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:200]}); {fix}") from None
    predict = tf.function(lambda features: model(features, training=False), reduce_retracing=True)
    return config, model, (lambda features: predict(features).numpy())


def load_predictor(path, overrides=()):
    """(config, predict_fn -> logits) for a run directory, a `.keras` file, a SavedModel directory or a `.tflite`
    file."""
    if not os.path.exists(path):
        raise UserError(f"Model path not found: {path}")
    if path.endswith(".tflite") or os.path.isfile(os.path.join(path, "saved_model.pb")):
        directory = os.path.dirname(path) if path.endswith(".tflite") else path
        if not os.path.isfile(os.path.join(directory, "config.yaml")):
            raise UserError(f"{directory} has no config.yaml: export with tools/export.py to get one.")
        config = config_next_to(directory, overrides)
        run = load_exported(path)
        from relation_networks import tasks  # here: the tasks import the layers, which loading a SavedModel needs not

        batch = tasks.get(config.task).tflite_batch_size(config) if path.endswith(".tflite") else None
        return config, lambda features: run_in_batches(run, features, batch or DEFAULT_BATCH_SIZE)["logits"]
    config, _, predict = load_keras_predictor(path, overrides)
    return config, predict


# -- requests and responses ---------------------------------------------------------------------------------------


def _columns(request, specs):
    """(columns dict name -> list or array, format "row" | "columnar") of a REST request body."""
    if not isinstance(request, dict) or not ({"instances", "inputs"} & set(request)):
        raise RequestError('The request must be a JSON object with "instances" (a list of examples) or "inputs".')
    if {"instances", "inputs"} <= set(request):
        raise RequestError('The request has both "instances" and "inputs": send one of them.')
    signature = request.get("signature_name", SIGNATURE)
    if signature != SIGNATURE:
        raise RequestError(f"Unknown signature_name {signature!r}: this model has {SIGNATURE!r}.")
    single = next(iter(specs)) if len(specs) == 1 else None
    if "instances" in request:
        instances = request["instances"]
        if not isinstance(instances, list) or not instances:
            raise RequestError('"instances" must be a non-empty list of examples.')
        if single and not all(isinstance(i, dict) for i in instances):  # a single-input model takes bare tensors
            instances = [i if isinstance(i, dict) else {single: i} for i in instances]
        for i, instance in enumerate(instances):
            if not isinstance(instance, dict):
                raise RequestError(f"instance {i} must be an object with keys {sorted(specs)}.")
            missing, extra = set(specs) - set(instance), set(instance) - set(specs)
            if missing or extra:
                raise RequestError(
                    f"instance {i}: expected inputs {sorted(specs)}"
                    + (f", missing {sorted(missing)}" if missing else "") + (f", unknown {sorted(extra)}" if extra else "")
                )
        return {k: [inst[k] for inst in instances] for k in specs}, "row"
    columns = request["inputs"]
    if single and not isinstance(columns, dict):
        columns = {single: columns}
    if not isinstance(columns, dict) or set(columns) != set(specs):
        raise RequestError(f'"inputs" must be an object with exactly the keys {sorted(specs)}.')
    return columns, "columnar"


def _example_index(array, bad):
    """The first example (row) of `array` where the boolean mask `bad` holds."""
    return int(np.argwhere(bad.reshape(len(array), -1).any(axis=1))[0, 0])


def parse_request(request, specs, bounds=None):
    """Check a REST request body against the model's input `specs` (`{name: {"shape": [None, ...], "dtype":
    ...}}`) and the valid value ranges `bounds` (`{name: (low, high)}`, e.g. token ids within the vocabulary);
    return `(features, format)`: the batched features (NumPy, in the specs' dtypes) and "row" (`instances`) or
    "columnar" (`inputs`). Raises `RequestError` with what is wrong, where, and what is expected."""
    columns, form = _columns(request, specs)
    bounds = bounds or {}
    features = {}
    for name, spec in specs.items():
        dtype = np.dtype(spec["dtype"])
        try:
            array = np.asarray(columns[name])
        except ValueError:
            raise RequestError(f"input {name!r}: ragged or malformed array (examples of different shapes).") from None
        if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise RequestError(f"input {name!r}: expected numbers of type {dtype.name}, got {array.dtype}.")
        expected = spec["shape"][1:]
        if array.ndim != len(expected) + 1 or any(e is not None and e != a for e, a in zip(expected, array.shape[1:])):
            raise RequestError(
                f"input {name!r}: each example must have shape {tuple(expected)}, got {tuple(array.shape[1:])}."
            )
        if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
            raise RequestError(
                f"input {name!r}: example {_example_index(array, ~np.isfinite(array))} holds NaN or infinite values; "
                "every value must be a finite number."
            )
        if np.issubdtype(dtype, np.integer):
            if not np.issubdtype(array.dtype, np.integer) and not np.all(np.mod(array, 1) == 0):
                raise RequestError(f"input {name!r}: expected integers ({dtype.name}), got fractional values.")
            info = np.iinfo(dtype)
            low, high = bounds.get(name, (info.min, info.max))
            outside = (array < low) | (array > high)
            if array.size and outside.any():
                what = "token ids" if name in bounds else f"values ({dtype.name})"
                raise RequestError(
                    f"input {name!r}: example {_example_index(array, outside)} has {what} outside [{low}, {high}] "
                    f"(e.g. {array[outside].flat[0]})."
                )
        features[name] = array.astype(dtype)
    sizes = {name: len(a) for name, a in features.items()}
    if len(set(sizes.values())) > 1:
        raise RequestError(f"The inputs hold different numbers of examples: {sizes}; every input needs one row per "
                           "example.")
    return features, form


def _json_value(value):
    value = value.tolist() if isinstance(value, np.ndarray) else value.item() if isinstance(value, np.generic) else value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def make_response(outputs, form):
    """TF Serving's REST response for `outputs` (dict name -> batched NumPy array): `{"predictions": [...]}` for a
    "row" request (each prediction a dict of every output; the bare value if the model has one output), or
    `{"outputs": {...}}` for a "columnar" one (the bare batched value if one output). Strings are decoded."""
    names = sorted(outputs)
    if form == "columnar":
        columns = {k: _json_value(outputs[k]) for k in names}
        return {"outputs": columns[names[0]] if len(names) == 1 else columns}
    n = len(outputs[names[0]])
    rows = [{k: _json_value(outputs[k][i]) for k in names} for i in range(n)]
    return {"predictions": [row[names[0]] for row in rows] if len(names) == 1 else rows}


def predict_request(path, request, batch_size=DEFAULT_BATCH_SIZE, bounds=None, answers=None):
    """Answer a REST `request` with the exported model at `path` (SavedModel directory or `.tflite` file), as TF
    Serving would: checked, run in batches of `batch_size`, and formatted by `make_response`. For a model exported
    before the signature had an `answer` output (or a TFLite file, which has none), the answer words are added from
    `answers` (the export's answer names)."""
    if batch_size < 1:
        raise UserError(f"The batch size must be a positive number of examples, got {batch_size}.")
    run = load_exported(path)
    features, form = parse_request(request, run.specs, bounds)
    outputs = run_in_batches(run, features, batch_size)
    if answers and ANSWER_OUTPUT not in outputs and outputs.get("answer_id") is not None \
            and outputs["answer_id"].ndim == 1:
        outputs[ANSWER_OUTPUT] = np.asarray(answers, dtype=object)[outputs["answer_id"]]
    return make_response(outputs, form)
