"""Export a trained run to SavedModel (TF Serving layout) and TFLite, after checking parity on real inputs.

    python tools/export.py --run runs/<run> [--version 1] [--out saved_models] [--name NAME] [--noquantized]

Writes `<out>/<task>/<version>/` atomically (nothing is written if a check fails), with a MODEL_CARD.md from
the run's metrics.json, and regenerates docs/SERVING.md when exporting into the repository's saved_models/.
"""

import os

import _common
import _documents
from absl import app, flags

from relation_networks import export

FLAGS = flags.FLAGS
flags.DEFINE_string("run", None, "Run directory written by tools/train.py.")
flags.DEFINE_integer("version", None, "Model version (default: one more than the newest).")
flags.DEFINE_string("out", "saved_models", "Root of the TF Serving layout.")
flags.DEFINE_string("name", None, "The model's name (its directory under --out, TF Serving's model name); default: "
                    "the task's name.")
flags.DEFINE_multi_string("set", [], "Override a config value, e.g. --set data.dir=/path (repeatable).")
flags.DEFINE_integer("parity_examples", 64, "Real examples used for the parity checks.")
flags.DEFINE_boolean("quantized", True, "Also export the dynamic-range quantised model_quant.tflite (--noquantized: "
                     "skip it). It is left out anyway, with a warning, if its answers agree with the Keras model's on "
                     "fewer than 90% of the check's inputs.")
flags.DEFINE_string("serving_doc", None, "Regenerate this SERVING.md (default: docs/SERVING.md when --out is "
                    "the repository's saved_models).")
flags.mark_flag_as_required("run")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@_common.main_wrapper
def main(argv):
    del argv
    _common.check_writable_directory(FLAGS.out, "--out")
    doc = FLAGS.serving_doc
    if doc is None and os.path.abspath(FLAGS.out) == os.path.join(ROOT, "saved_models"):
        doc = os.path.join(ROOT, "docs", "SERVING.md")
    if doc:
        _common.check_output_file(doc, "--serving_doc")

    def documents(config, task, target, checks):
        return {export.MODEL_CARD: _documents.model_card(FLAGS.run, config, task, target, checks)}

    export.export(FLAGS.run, FLAGS.out, FLAGS.version, FLAGS.parity_examples, quantized=FLAGS.quantized,
                  overrides=FLAGS.set, name=FLAGS.name, documents=documents)
    if doc:
        _documents.write_serving_doc(FLAGS.out, doc)


if __name__ == "__main__":
    app.run(main)
