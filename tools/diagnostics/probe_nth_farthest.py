"""Which part of the Nth-farthest task a recurrent model can learn: sub-tasks on the same inputs.

    python tools/diagnostics/probe_nth_farthest.py --config configs/nth_farthest.yaml --target reference_sign \
        --set data.num_vectors=4 --set data.vector_dim=2 --set train.learning_rate=1e-3 --steps 1500

Trains the config's model (RMC, LSTM or RN; same layers and optimizer as `tools/train.py` builds) on the task's
inputs -- one `[vector, one-hot id, one-hot m, one-hot (n - 1)]` row per time step, in random order -- but with
the answer replaced by a sub-task that needs one piece of the full skill:

    largest_x       the id of the vector with the largest first coordinate (store what was seen and compare
                    across steps; the question plays no part)
    largest_norm    the id of the vector farthest from the origin (as largest_x, with a non-linear feature of
                    each vector: its length)
    reference_sign  whether the first coordinate of vector m is positive, as class 0/1 (retrieve the vector the
                    question names by its id)
    farthest        the id of the vector farthest from vector m: the full task with the rank fixed to 1 (retrieve
                    m and compare distances)
    full            the Nth-farthest answer itself

Fresh samples for every `--eval_every_steps` steps (seeded); prints validation accuracy against the accuracy of
guessing (the most frequent answer), and writes the rows to `--json`.

`--length_rule` trains nothing: it scores, on the validation and test samples `tools/train.py` evaluates for the
config, a rule that never looks at the reference vector -- answer the n-th longest of the other vectors -- per
rank: the accuracy a model reaches from each vector's length alone, without relating any two vectors. With
`--model` (a run directory, SavedModel or `.tflite`; its own config then names the instance, `--set` still
applies) it also reports how often that model's answers agree with the rule's, overall and on the samples where
the rule is wrong -- where a model that relates the vectors would leave it:

    python tools/diagnostics/probe_nth_farthest.py --length_rule --model runs/nf16x4_rmc120

`--input_dependence` trains nothing: it reports how much the untrained recurrent core's final output (the RMC's
flattened memory, the LSTM's last hidden state) depends on the input -- the share of its variance that is
across samples, per unit, rather than shared by all samples (the initial memory carried forward, biases).
"""

import time

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))  # tools/: _common
import _common
import _probes
from absl import app, flags

FLAGS = flags.FLAGS
# Each training chunk's samples are seeded by the probe's seed and the steps done: seed * this prime + steps, so that
# no two (seed, steps) pairs share samples over any probe length used.
SAMPLE_SEED_STRIDE = 1_000_003
_common.define_config_flags()
flags.DEFINE_enum("target", "full", ["largest_x", "largest_norm", "reference_sign", "farthest", "full"],
                  "The sub-task to learn (see the module docstring).")
flags.DEFINE_integer("steps", 1500, "Training steps.")
flags.DEFINE_integer("eval_every_steps", 500, "Score the validation samples every this many steps.")
flags.DEFINE_integer("val_samples", 5000, "Validation samples (a fixed, separately seeded set).")
flags.DEFINE_integer("seed", 0, "Initialisation and sampling seed.")
flags.DEFINE_string("json", None, "Also write the rows here.")
flags.DEFINE_bool("input_dependence", False, "Only report the input-dependent share of the untrained core's output "
                  "variance on the validation inputs (see the module docstring), then exit.")
flags.DEFINE_bool("length_rule", False, "Only score the rule that ranks the vectors by length instead of by distance "
                  "from vector m on the config's validation and test samples (see the module docstring), then exit.")
flags.DEFINE_string("model", None, "With --length_rule: a trained model (run directory, SavedModel or .tflite) whose "
                    "answers are compared with the rule's; its config replaces --config.")


@_common.main_wrapper
def main(argv):
    del argv
    import keras
    import numpy as np

    from relation_networks import config as config_lib
    from relation_networks import precision, tasks, training
    from relation_networks.errors import UserError
    from _probes import input_dependent_share
    from relation_networks.tasks.nth_farthest import build_model, id_width, vector_width

    predict = None
    if FLAGS.model:
        if not FLAGS.length_rule:
            raise UserError("--model is for --length_rule.")
        from relation_networks import serving

        config, predict = serving.load_predictor(FLAGS.model, FLAGS.set)
    else:
        config = config_lib.load(FLAGS.config or "configs/nth_farthest.yaml", FLAGS.set)
    if config.task != "nth_farthest":
        raise UserError(f"{FLAGS.model or FLAGS.config} is not an nth_farthest {'model' if FLAGS.model else 'config'}.")
    if FLAGS.steps < 1 or FLAGS.eval_every_steps < 1:
        raise UserError("--steps and --eval_every_steps must be positive.")
    if FLAGS.input_dependence and config.model.type == "rn":
        raise UserError("--input_dependence is for the recurrent models (rmc, lstm).")
    d = config.data
    if FLAGS.length_rule:
        _score_length_rule(config, predict)
        return
    policy = precision.resolve(config.train.precision)
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(FLAGS.seed)
    model = build_model(config.model, d)
    fit = training.array_trainer(tasks.get("nth_farthest"), config, model, config.train.batch_size,
                                 total_steps=FLAGS.steps)
    val_x, val_y = _probes.sub_task(FLAGS.target, FLAGS.val_samples, d.val_seed, d.num_vectors, d.vector_dim,
                               id_width(d), vector_width(d))
    if FLAGS.input_dependence:
        core = keras.Model(model.inputs, model.get_layer(config.model.type).output)
        share = input_dependent_share(core.predict({"sequence": val_x}, batch_size=1024, verbose=0))
        print(f"{config.model.type}: input-dependent share of the untrained core's output variance: {100 * share:.1f}% "
              f"({FLAGS.val_samples} validation inputs, seed {FLAGS.seed})")
        if FLAGS.json:
            _common.write_json(FLAGS.json, {"model": config.model.type, "input_dependent_share": share,
                                           "seed": FLAGS.seed, "overrides": FLAGS.set})
        return
    guess = np.bincount(val_y).max() / len(val_y)
    print(f"{config.model.type} on {FLAGS.target} ({d.num_vectors} vectors of {d.vector_dim} dims, Adam "
          f"{config.train.learning_rate:g}, batch {config.train.batch_size}); guessing scores {100 * guess:.1f}%")
    rows, done, start = [], 0, time.time()
    while done < FLAGS.steps:
        steps = min(FLAGS.eval_every_steps, FLAGS.steps - done)
        x, y = _probes.sub_task(FLAGS.target, steps * config.train.batch_size, FLAGS.seed * SAMPLE_SEED_STRIDE + done,
                           d.num_vectors, d.vector_dim, id_width(d), vector_width(d))
        loss = fit({"sequence": x}, y, seed=done)
        done += steps
        accuracy = float(np.mean(model.predict(val_x, batch_size=1024, verbose=0).argmax(-1) == val_y))
        rows.append({"step": done, "seconds": round(time.time() - start, 1),
                     "loss": round(loss, 4), "val_accuracy": accuracy})
        print(f"step {done:>6}  {rows[-1]['seconds']:>7.0f} s  loss {rows[-1]['loss']:.3f}  "
              f"validation {100 * accuracy:.1f}%", flush=True)
    if FLAGS.json:
        _common.write_json(FLAGS.json, {"model": config.model.type, "target": FLAGS.target, "guess": guess,
                                       "seed": FLAGS.seed, "overrides": FLAGS.set,
                                       "precision": policy, "rows": rows})


def _score_length_rule(config, predict=None):
    """Print (and with --json write) the length rule's accuracy, overall and per rank, on the val and test splits;
    with `predict`, also the model's accuracy and its agreement with the rule."""
    from relation_networks import tasks
    from relation_networks.evaluation import grouped_accuracy
    d, task = config.data, tasks.get(config.task)
    report = {"rule": "length", "num_vectors": d.num_vectors, "vector_dim": d.vector_dim, "model": FLAGS.model,
              "overrides": FLAGS.set}
    for split in ("val", "test"):
        data = task.samples(config, split)  # the samples tools/train.py evaluates
        rule, truth, size = _probes.by_length(data), data["answers"], len(data["answers"])
        groups = grouped_accuracy(rule == truth, data["rank"] - 1, [f"rank_{n}" for n in range(1, d.num_vectors)])
        scores = report[split] = {"examples": size, "accuracy": float((rule == truth).mean()), "groups": groups}
        ranks = "  ".join(f"{name} {100 * g['accuracy']:.1f}%" for name, g in groups.items())
        print(f"length rule on {split} ({size:,} samples of {d.num_vectors} vectors x {d.vector_dim} dims): "
              f"{100 * scores['accuracy']:.2f}%  ({ranks}; chance {100 / (d.num_vectors - 1):.1f}%)")
        if predict is not None:
            _, labels, logits = task.predictions(predict, config, split, batch_size=1024)
            assert (labels == truth).all(), "the task's samples are the generator's"
            answers, wrong = logits.argmax(-1), rule != truth
            scores["model"] = {"accuracy": float((answers == truth).mean()),
                               "agrees_with_rule": float((answers == rule).mean()),
                               "agrees_with_rule_where_it_is_wrong": float((answers == rule)[wrong].mean())}
            print(f"  the model: {100 * scores['model']['accuracy']:.2f}% right; gives the rule's answer on "
                  f"{100 * scores['model']['agrees_with_rule']:.1f}% of the samples, and on "
                  f"{100 * scores['model']['agrees_with_rule_where_it_is_wrong']:.1f}% of the {wrong.sum():,} "
                  f"where the rule is wrong")
    if FLAGS.json:
        _common.write_json(FLAGS.json, report)


if __name__ == "__main__":
    app.run(main)
