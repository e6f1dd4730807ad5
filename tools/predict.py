"""Run an exported model (SavedModel directory or .tflite file) on a JSON request, as TF Serving would.

    python tools/predict.py --model saved_models/sort_of_clevr/1 --input example.json
    python tools/predict.py --model saved_models/sort_of_clevr/1/model.tflite --input example.json

The input is a TF Serving REST body: {"instances": [{"image": ..., "question": ...}, ...]} (or "inputs").
Prints {"predictions": [...]} with the answer id, its name where the task has one, and the probabilities.
Requests that do not match the signature (names, shapes, dtypes) get one clear error and exit status 2.
"""

import json
import os

import _common  # noqa: F401
from absl import app, flags

from relation_networks import export
from relation_networks.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "SavedModel directory or .tflite file.")
flags.DEFINE_string("input", None, "JSON request file ('-' for standard input).")
flags.mark_flags_as_required(["model", "input"])


@_common.main_wrapper
def main(argv):
    del argv
    import sys

    if not os.path.exists(FLAGS.model):
        raise UserError(f"Model not found: {FLAGS.model}")
    try:
        text = sys.stdin.read() if FLAGS.input == "-" else open(FLAGS.input).read()
    except OSError as e:
        raise UserError(f"Cannot read {FLAGS.input}: {e.strerror}") from None
    try:
        request = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{FLAGS.input}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno}).") from None
    is_tflite = FLAGS.model.endswith(".tflite")
    if not is_tflite and not os.path.isfile(os.path.join(FLAGS.model, "saved_model.pb")):
        raise UserError(f"{FLAGS.model} is neither a SavedModel directory nor a .tflite file.")
    run = export.load_tflite(FLAGS.model) if is_tflite else export.load_saved_model(FLAGS.model)
    features = export.validate_request(request, run.specs)
    directory = os.path.dirname(FLAGS.model) if is_tflite else FLAGS.model
    answers = None
    signature_path = os.path.join(directory, "signature.json")
    if os.path.isfile(signature_path):
        with open(signature_path) as f:
            answers = json.load(f).get("answers")
    batch = run.specs[next(iter(run.specs))]["shape"][0]
    outputs = export.run_in_batches(run, features, batch)
    predictions = []
    for i in range(len(outputs["answer_id"])):
        entry = {"answer_id": outputs["answer_id"][i].tolist(), "probabilities": outputs["probabilities"][i].tolist()}
        if answers and outputs["answer_id"].ndim == 1:
            entry["answer"] = answers[int(outputs["answer_id"][i])]
        predictions.append(entry)
    print(json.dumps({"predictions": predictions}, indent=1))


if __name__ == "__main__":
    app.run(main)
