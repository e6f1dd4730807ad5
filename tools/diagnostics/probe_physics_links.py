"""Which balls a system counter believes are linked, though it was only ever shown the number of systems.

    python tools/diagnostics/probe_physics_links.py --model runs/physics_count_components_lr1e-3 --split test

A counter with the components read-out (`model.readout=components`) computes its count from one link probability
per pair (`relation_networks.layers.physics_readouts.SystemCount`). This tool reads those probabilities on a split's scenes
and scores them against the true connections the simulator recorded -- the labels of connection inference, which
the counter never saw: pair AUC, the mean probability of linked and unlinked pairs, and with links thresholded at
0.5 the pairs right, the scenes with every pair right (the paper's connection-inference metric) and the scenes
whose number of systems the thresholded links get right. `--model` is a run directory or its `.keras` file.
"""

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))  # tools/: _common
import _common
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A trained counter with the components read-out: run directory or .keras file.")
flags.DEFINE_multi_string("set", [], "Override a value of the run's config: --set data.dir=... (repeatable).")
flags.DEFINE_enum("split", "test", ["train", "val", "test"], "The scenes to score.")
flags.DEFINE_string("json", None, "Also write the numbers here.")
flags.mark_flag_as_required("model")


@_common.main_wrapper
def main(argv):
    del argv
    from relation_networks import serving, tasks
    from relation_networks.errors import UserError
    from _probes import implied_links, link_metrics

    config, model, _ = serving.load_keras_predictor(FLAGS.model, FLAGS.set)
    if config.task != "physics":
        raise UserError(f"{FLAGS.model} is a {config.task} model; this tool reads physics counters.")
    balls, connections, _ = tasks.get("physics").arrays(config, FLAGS.split)
    n = config.data.num_balls
    metrics = link_metrics(implied_links(model, balls), connections.reshape(-1, n, n))
    print(f"{FLAGS.model} on {FLAGS.split} ({len(balls):,} scenes): links as the counter's read-out sees them")
    print(f"  pair AUC {metrics['pair_auc']:.4f}; mean link probability {metrics['mean_p_linked']:.3f} for linked "
          f"pairs, {metrics['mean_p_unlinked']:.3f} for unlinked ones")
    print(f"  thresholded at 0.5: {100 * metrics['pair_accuracy']:.2f}% of pairs right, "
          f"{100 * metrics['scenes_all_correct']:.1f}% of scenes with every pair right, "
          f"{100 * metrics['count_from_links']:.1f}% with the number of systems right")
    if FLAGS.json:
        _common.write_json(FLAGS.json, {"model": FLAGS.model, "split": FLAGS.split, "scenes": len(balls), **metrics})


if __name__ == "__main__":
    from absl import app

    app.run(main)
