"""Evaluate a trained model and print the paper's breakdown (accuracy per question subtype / category / task).

    python tools/evaluate.py --run runs/sort_of_clevr [--split test] [--json out.json] [--set data.dir=...]
    python tools/evaluate.py --model saved_models/sort_of_clevr/1 --split test
    python tools/evaluate.py --run runs/physics_count --symmetries   # averaged over the table's 8 symmetries

`--json` writes the report (keys: task, split, examples, metrics, groups, paper, extra).
"""

import json

import _common
from absl import app, flags

from relation_networks import serving, tasks
from relation_networks.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("run", None, "Run directory written by tools/train.py.")
flags.DEFINE_string("model", None, "A .keras file, an exported SavedModel directory or a .tflite file.")
flags.DEFINE_string("split", "test", "Split to evaluate.")
flags.DEFINE_string("json", None, "Also write the report as JSON to this path.")
flags.DEFINE_multi_string("set", [], "Override a config value, e.g. --set data.dir=/path (repeatable).")
flags.DEFINE_integer("batch_size", 256, "Evaluation batch size.")
flags.DEFINE_boolean("symmetries", False, "Average each prediction over the task's label-preserving symmetries "
                     "(physics: the 8 reflections and rotations of the table) instead of a single pass.")


@_common.main_wrapper
def main(argv):
    del argv
    if bool(FLAGS.run) == bool(FLAGS.model):
        raise UserError("Pass exactly one of --run DIR or --model PATH.")
    config, predict = serving.load_predictor(FLAGS.run or FLAGS.model, FLAGS.set)
    task = tasks.get(config.task)
    task.prepare(config)
    if FLAGS.symmetries:
        predict = task.symmetric_predictor(predict, config)
    report = task.evaluate(predict, config, FLAGS.split, batch_size=FLAGS.batch_size)
    if FLAGS.symmetries:
        report.extra["averaged_over_symmetries"] = len(task.symmetries(config))
    print(report.table())
    if FLAGS.json:
        _common.write_output(FLAGS.json, json.dumps(report.to_json(), indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)
