"""Answer a JSON request with an exported model (SavedModel directory or .tflite file), exactly as TF Serving would.

    python tools/predict.py --model saved_models/sort_of_clevr/1 --input request.json
    python tools/predict.py --model saved_models/sort_of_clevr/1/model.tflite --input request.json

The request and the response are TF Serving's REST bodies, so a client written for TF Serving works unchanged:
{"instances": [{"image": ..., "question": ...}, ...]} -> {"predictions": [{"answer": "square", "answer_id": 0,
"logits": [...], "probabilities": [...]}, ...]}, and {"inputs": {...}} -> {"outputs": {...}}. The examples run in
batches of --batch_size. A request the model cannot answer (names, shapes, types, NaN or infinite values, token ids
outside the vocabulary, inputs of different lengths) gets one clear error and exit status 2.
"""

import json
import os
import sys

import _common
from absl import app, flags

from relation_networks import serving, tasks
from relation_networks.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "SavedModel directory or .tflite file.")
flags.DEFINE_string("input", None, "JSON request file ('-' for standard input).")
flags.DEFINE_integer("batch_size", serving.DEFAULT_BATCH_SIZE, "Examples run through the model at once.")
flags.DEFINE_string("out", None, "Write the response to this file (default: standard output).")
flags.mark_flags_as_required(["model", "input"])


def _read_request(path):
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as e:
        raise UserError(f"Cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (a JSON request is UTF-8).") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno}).") from None


def _model_files(model):
    """(bounds on integer inputs, answer names) from the files exported beside the model (none when absent)."""
    directory = os.path.dirname(model) if model.endswith(".tflite") else model
    answers, bounds = None, None
    signature_path = os.path.join(directory, "signature.json")
    if os.path.isfile(signature_path):
        with open(signature_path) as f:
            signature = json.load(f)
        answers = signature.get("answers")
        bounds = {k: tuple(v) for k, v in signature["input_bounds"].items()} if "input_bounds" in signature else None
    if bounds is None and os.path.isfile(os.path.join(directory, "config.yaml")):  # exported before input_bounds
        config = serving.config_next_to(directory)
        bounds = tasks.get(config.task).input_bounds(config)
    return bounds, answers


@_common.main_wrapper
def main(argv):
    del argv
    if FLAGS.batch_size < 1:
        raise UserError(f"--batch_size must be a positive number of examples, got {FLAGS.batch_size}.")
    if not os.path.exists(FLAGS.model):
        raise UserError(f"Model not found: {FLAGS.model}")
    request = _read_request(FLAGS.input)
    bounds, answers = _model_files(FLAGS.model)
    response = serving.predict_request(FLAGS.model, request, FLAGS.batch_size, bounds=bounds, answers=answers)
    text = json.dumps(response, indent=1)
    if FLAGS.out:
        _common.write_output(FLAGS.out, text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    app.run(main)
