"""Train, evaluate and save a model from a YAML config.

    python tools/train.py --config configs/sort_of_clevr.yaml [--set train.epochs=3 ...] [--run_dir DIR]

Generates or preprocesses the task's data if needed, trains (resuming from the run directory's last checkpoint
if there is one), evaluates on the config's `train.eval_splits` and prints the breakdown.
"""

import _common  # noqa: F401  (must come first: quiet TensorFlow logs, import path)
from absl import app, flags

from relation_networks import config as config_lib
from relation_networks import training

FLAGS = flags.FLAGS
_common.define_config_flags()
flags.mark_flag_as_required("config")


@_common.main_wrapper
def main(argv):
    del argv
    config = config_lib.load(FLAGS.config, FLAGS.set)
    if FLAGS.run_dir:
        config.run_dir = FLAGS.run_dir
    training.train(config)


if __name__ == "__main__":
    app.run(main)
