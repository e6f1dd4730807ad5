"""Throughput and scaling of the Relation Network on this machine.

    python tools/benchmark.py --config configs/sort_of_clevr.yaml --out docs/benchmark.json

1. Training throughput (questions/s) of the trainer's own step (`relation_networks.training.make_train_step`:
   forward, backward and the trainer's Adam, under its distribution strategy) on a real training batch of the
   config's model, for every combination of: naive vs factorized first layer of g, float32 vs mixed bfloat16,
   with and without XLA (`jit_compile`), and one question per CNN pass vs the config's `data.group_questions`.
   Median over `--repeats` timings of `--steps` steps each, the ratio to the slowest variant, and the share of the
   ceiling measured in the same run: the GFLOP/s of one matmul at the relation MLP's shape (40,000 x 256 @ 256 x
   256) in each precision, divided into g's FLOPs per question over all pairs.
2. Scaling: time and peak memory (process max RSS, each size in a fresh process) of one RelationModule
   forward + backward at batch 64, g 4 x 256, as the number of objects grows, with and without pair chunking
   (a size that would not fit in memory unchunked is skipped and marked so).

Prints tables and writes everything to `--out` (JSON) with the hardware description.
"""

import json
import os
import shlex
import statistics
import subprocess
import sys
import time

import _common  # noqa: F401
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/sort_of_clevr.yaml", "Model whose training throughput is measured.")
flags.DEFINE_multi_string("set", [], "Config overrides, as for tools/train.py.")
flags.DEFINE_integer("batch_size", 64, "Batch size (questions per step).")
flags.DEFINE_integer("repeats", 5, "Timings per variant (the median is reported).")
flags.DEFINE_integer("steps", 10, "Steps per timing.")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Precision policies of the throughput table.")
flags.DEFINE_list("jit", ["off", "on"], "XLA settings of the throughput table (off, on).")
flags.register_validator("precisions", lambda v: set(v) <= {"float32", "mixed_bfloat16"},
                         "--precisions: float32 and/or mixed_bfloat16")
flags.register_validator("jit", lambda v: set(v) <= {"off", "on"}, "--jit: off and/or on")
flags.DEFINE_list("sizes", ["25", "64", "100", "256", "400"], "Object counts for the scaling curve.")
flags.DEFINE_integer("scaling_repeats", 3, "Timings per size (1 for sizes above 100).")
flags.DEFINE_integer("chunk_pairs", 4096, "Chunked runs process about this many pairs per block.")
flags.DEFINE_float("memory_budget_gb", 16.0, "Skip unchunked sizes whose activations would exceed this.")
flags.DEFINE_string("out", None, "Write the results as JSON here.")
flags.DEFINE_bool("skip_throughput", False, "Only the scaling curve.")
flags.DEFINE_bool("skip_scaling", False, "Only the throughput table.")
flags.DEFINE_string("scaling_worker", None, "Internal: 'N,chunk' measured in this process.")
flags.DEFINE_string("results", None, "Also write the tables into this Markdown file's benchmark section.")
flags.DEFINE_string("section", None, "Name of the --results section to write (default: benchmark_<parts>), e.g. "
                    "to keep the measurements of another machine beside the existing ones.")
flags.DEFINE_bool("report_only", False, "Measure nothing: write --results from the JSON at --out.")

G_WIDTH, G_LAYERS, OBJECT_DIM, QUESTION_DIM = 256, 4, 26, 11


def _median_rate(step, batch, repeats, steps):
    for _ in range(3):
        step()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            out = step()
        float(out)
        timings.append((time.perf_counter() - start) / steps)
    return batch / statistics.median(timings), [batch / t for t in timings]


def matmul_ceiling(precision, rows=40_000, width=G_WIDTH, repeats=5):
    """GFLOP/s of one `[rows, width] @ [width, width]` matmul (the relation MLP's shape at batch 64 with 25
    objects) in the compute dtype of `precision`: the ceiling the RN's step is measured against. Median of
    `repeats` timings of 10 matmuls each."""
    import tensorflow as tf

    dtype = tf.bfloat16 if precision == "mixed_bfloat16" else tf.float32
    a = tf.cast(tf.random.stateless_normal((rows, width), seed=(1, 2)), dtype)
    b = tf.cast(tf.random.stateless_normal((width, width), seed=(3, 4)), dtype)
    matmul = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    rate, _ = _median_rate(matmul, 1, repeats, 10)
    return 2.0 * rows * width * width * rate / 1e9


def pair_flops_per_question(config):
    """FLOPs per question of g_theta's layers after the first (which is factorized per object) over every pair,
    forward + backward (3x the forward): the bulk of an RN's step, the numerator of the ceiling."""
    import numpy as np

    from relation_networks import tasks

    task = tasks.get(config.task)
    model = task.model_from_config(config)
    objects = [v for v in model.variables if "g_theta_0" in v.path and v.path.endswith("kernel")]
    if not objects or not hasattr(config.model, "g_units"):
        return None
    n = _objects_per_question(task, config)
    widths = list(config.model.g_units)
    return 3 * 2 * n * n * float(np.sum([a * b for a, b in zip(widths[:-1], widths[1:])]))


def _objects_per_question(task, config):
    """The number of objects the RN pairs (the CNN's cells for Sort-of-CLEVR)."""
    features, _ = next(iter(task.dataset(config, "val").batch(1)))
    model = task.model_from_config(config)
    cnn = [layer for layer in model.layers if layer.name == "cnn"]
    if cnn:
        return int(cnn[0].compute_output_shape((1,) + tuple(features["image"].shape[1:]))[1])
    raise ValueError("only CNN+RN configs have a pair count here")


def throughput(config_path):
    """Training throughput of the trainer's own step (`training.make_train_step`, with the trainer's optimiser and
    distribution strategy) on a real training batch, per variant; beside it the share of the matmul ceiling
    measured in the same run."""
    import keras
    import tensorflow as tf

    from relation_networks import config as config_lib
    from relation_networks import tasks, training
    from relation_networks.optimizers import LayerwiseAdam
    from relation_networks.schedules import make_learning_rate

    results = []
    config = config_lib.load(config_path, FLAGS.set)
    config.train.batch_size = FLAGS.batch_size
    task = tasks.get(config.task)
    task.prepare(config)
    strategy = tf.distribute.get_strategy()
    ceilings = {precision: matmul_ceiling(precision) for precision in FLAGS.precisions}
    for precision, rate in ceilings.items():
        print(f"  matmul ceiling {precision:<15} {rate:8.1f} GFLOP/s", flush=True)
    default_group = task.training_group_size(config)
    for group in sorted({1, default_group}):
        if hasattr(config.data, "group_questions"):
            config.data.group_questions = group
        elements = tf.data.Dataset.from_tensors(
            next(iter(task.training_dataset(config, seed=0).batch(FLAGS.batch_size // group)))).repeat()
        for precision in FLAGS.precisions:
            for factorized in (False, True) if hasattr(config.model, "factorized") else (None,):
                for jit in [setting == "on" for setting in FLAGS.jit]:
                    if factorized is not None:
                        config.model.factorized = factorized
                    config.train.jit_compile = jit
                    keras.config.set_dtype_policy(precision)
                    keras.utils.set_random_seed(0)
                    model = task.model_from_config(config)
                    optimizer = LayerwiseAdam(make_learning_rate(config.train, 1000, 1000),
                                              lr_multipliers=config.train.lr_multipliers)
                    optimizer.build(model.trainable_variables)
                    train_step = training.make_train_step(task, config, model, optimizer, strategy, FLAGS.batch_size)
                    keras.config.set_dtype_policy("float32")
                    iterator = iter(elements)
                    stop = tf.constant(False)
                    rate, rates = _median_rate(lambda: train_step(iterator, stop)[0], FLAGS.batch_size,
                                               FLAGS.repeats, FLAGS.steps)
                    flops = pair_flops_per_question(config)
                    best_ceiling = max(ceilings.values())
                    row = {"precision": precision, "first_layer": "factorized" if factorized else "naive",
                           "jit_compile": jit, "questions_per_image": group, "questions_per_second": rate,
                           "all": rates, "pair_gflop_per_question": flops and flops / 1e9,
                           "ceiling_questions_per_second": flops and best_ceiling * 1e9 / flops,
                           "share_of_ceiling": flops and rate * flops / (best_ceiling * 1e9),
                           "share_of_own_precision_ceiling": flops and rate * flops / (ceilings[precision] * 1e9)}
                    results.append(row)
                    share = f"  {100 * row['share_of_ceiling']:5.1f}% of the best ceiling" if flops else ""
                    print(f"  {precision:<15} {row['first_layer']:<11} jit={str(jit):<5} questions/image={group:<3} "
                          f"{rate:8.1f} q/s{share}", flush=True)
    slowest = min(r["questions_per_second"] for r in results)
    for r in results:
        r["speedup_vs_slowest"] = r["questions_per_second"] / slowest
    return results, ceilings


def scaling_worker(n, chunk):
    """One forward + backward of a RelationModule on N objects; prints JSON (time, peak RSS)."""
    import resource

    import numpy as np
    import tensorflow as tf

    from relation_networks import RelationModule

    layer = RelationModule([G_WIDTH] * G_LAYERS, [G_WIDTH, 10], pair_chunk_size=chunk or None)
    objects = tf.constant(np.random.default_rng(0).normal(size=(64, n, OBJECT_DIM)), tf.float32)
    question = tf.constant(np.random.default_rng(1).normal(size=(64, QUESTION_DIM)), tf.float32)
    layer(objects, question=question)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(objects, question=question) ** 2)
        return loss, tape.gradient(loss, layer.trainable_variables)

    repeats = FLAGS.scaling_repeats if n <= 100 else 1
    step()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss, _ = step()
        float(loss)
        timings.append(time.perf_counter() - start)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"objects": n, "pair_chunk_size": chunk or None, "seconds": statistics.median(timings),
                      "peak_rss_gb": peak_kb / 1e6, "repeats": repeats}))


def _failure(done):
    """A one-line reason for a failed worker: the last line that is not TensorFlow's C++ logging, or the signal."""
    if done.returncode < 0:
        import signal

        name = signal.Signals(-done.returncode).name
        hint = " (killed: out of memory?)" if name == "SIGKILL" else ""
        return f"{name}{hint}"
    python_lines = [line for line in done.stderr.splitlines() if line.strip() and not _is_tf_log(line)]
    return (python_lines or [f"exit status {done.returncode}"])[-1].strip()


def _is_tf_log(line):
    """TensorFlow/absl C++ log lines look like `I0000 00:00:...` or `W1122 06:51:58...`."""
    return (len(line) > 5 and line[0] in "IWEF" and line[1:5].isdigit()) or line.startswith("WARNING: All log messages")


def scaling(on_row=lambda rows: None):
    """The scaling rows; `on_row(rows)` is called after every row so partial results survive an interruption."""
    rows = []

    def add(row, text):
        rows.append(row)
        print(f"  N={row['objects']:<4} {text}", flush=True)
        on_row(rows)

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    for n in (int(s) for s in FLAGS.sizes):
        # float32 activations kept for the backward pass: ~2 tensors per g layer of [64, N*N, 256]
        estimate_gb = 64 * n * n * G_WIDTH * 4 * 2 * G_LAYERS / 1e9
        chunk_rows = max(1, FLAGS.chunk_pairs // n)
        for chunk in (0, chunk_rows) if chunk_rows < n else (0,):
            if chunk == 0 and estimate_gb > FLAGS.memory_budget_gb:
                add({"objects": n, "pair_chunk_size": None, "skipped": f"~{estimate_gb:.0f} GB of activations"},
                    f"unchunked: skipped (~{estimate_gb:.0f} GB of activations)")
                continue
            command = [sys.executable, os.path.abspath(__file__), f"--scaling_worker={n},{chunk}",
                       f"--scaling_repeats={FLAGS.scaling_repeats}"]
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                reason = _failure(done)
                add({"objects": n, "pair_chunk_size": chunk or None, "failed": reason}, f"chunk={chunk}: FAILED: {reason}")
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            add(row, f"chunk={str(chunk or '-'):<5} {row['seconds']:8.3f} s  peak RSS {row['peak_rss_gb']:.2f} GB")
    return rows


@_common.main_wrapper
def main(argv):
    del argv
    if FLAGS.scaling_worker:
        n, chunk = (int(x) for x in FLAGS.scaling_worker.split(","))
        scaling_worker(n, chunk)
        return
    from relation_networks.io import atomic_write_json
    from relation_networks.machine import hardware

    if FLAGS.report_only:
        with open(FLAGS.out) as f:
            _write_section(json.load(f))
        return

    result = {"hardware": hardware(), "batch_size": FLAGS.batch_size, "command": shlex.join(sys.argv),
              "config": FLAGS.config, "repeats": FLAGS.repeats, "steps": FLAGS.steps,
              "cpu_affinity": sorted(os.sched_getaffinity(0))}
    if not FLAGS.skip_throughput:
        print(f"Training throughput of {FLAGS.config} (median of {FLAGS.repeats} x {FLAGS.steps} steps):", flush=True)
        result["throughput"], result["matmul_gflops"] = throughput(FLAGS.config)
    if not FLAGS.skip_scaling:
        print(f"RelationModule forward+backward, batch 64, g {G_LAYERS} x {G_WIDTH}:", flush=True)

        def save_partial(rows):
            if FLAGS.out:
                atomic_write_json(FLAGS.out, dict(result, scaling=rows, partial=True))

        result["scaling"] = scaling(save_partial)
    if FLAGS.out:
        atomic_write_json(FLAGS.out, result)
    if FLAGS.results:
        _write_section(result)


def _write_section(result):
    from relation_networks.io import write_markdown_section

    parts = [p for p in ("throughput", "scaling") if p in result]
    title = {"throughput": "Training throughput", "scaling": "Scaling with the number of objects"}
    from relation_networks.machine import bfloat16_text

    heading = " and ".join(title[p] for p in parts)
    if FLAGS.section:  # another machine's measurements: say which, in the heading
        heading += f" ({', '.join(filter(None, [result['hardware']['cpu'], bfloat16_text(result['hardware'])]))})"
    write_markdown_section(FLAGS.results, FLAGS.section or "benchmark_" + "_".join(parts), heading, markdown(result))


def markdown(result):
    """The benchmark's tables as Markdown."""
    from relation_networks.machine import hardware_text

    hw = result["hardware"]
    lines = [f"Hardware: {hardware_text(hw)} (this process pinned to CPU(s) {result['cpu_affinity']}). "
             f"Command: `{result['command']}`.", ""]
    if "throughput" in result:
        lines += [f"Training throughput of `{result.get('config')}` (batch {result['batch_size']}, forward + backward + "
                  f"Adam; median of {result.get('repeats')} x {result.get('steps')} steps):", "",
                  "| precision | first layer of g | XLA | questions per CNN pass | questions/s | x slowest | "
                  "share of the ceiling |",
                  "|---|---|---|---|---|---|---|"]
        for r in sorted(result["throughput"], key=lambda r: -r["questions_per_second"]):
            share = f"{100 * r['share_of_ceiling']:.0f}%" if r.get("share_of_ceiling") else "-"
            lines.append(f"| {r['precision']} | {r['first_layer']} | {'on' if r['jit_compile'] else 'off'} | "
                         f"{r.get('questions_per_image', 1)} | {r['questions_per_second']:.0f} | "
                         f"{r['speedup_vs_slowest']:.2f} | {share} |")
        if result.get("matmul_gflops"):
            lines += ["", "Ceiling, measured in the same run: one 40,000 x 256 @ 256 x 256 matmul at "
                      + ", ".join(f"{v:.0f} GFLOP/s in {k}" for k, v in result["matmul_gflops"].items())
                      + "; the share is g's FLOPs per question (all pairs, forward + backward) x questions/s over "
                        "the fastest precision's rate."]
        lines.append("")
    if "scaling" in result:
        lines += [f"One RelationModule forward + backward, batch 64, g {G_LAYERS} x {G_WIDTH}, objects of {OBJECT_DIM} "
                  "dims (peak = the process's max RSS, fresh process per row):", "",
                  "| objects | pairs | pair chunk (rows) | seconds | peak memory |", "|---|---|---|---|---|"]
        for r in result["scaling"]:
            chunk = r.get("pair_chunk_size") or "none"
            if "seconds" in r:
                lines.append(f"| {r['objects']} | {r['objects'] ** 2:,} | {chunk} | {r['seconds']:.2f} | {r['peak_rss_gb']:.2f} GB |")
            else:
                lines.append(f"| {r['objects']} | {r['objects'] ** 2:,} | {chunk} | {'skipped: ' + r['skipped'] if r.get('skipped') else 'FAILED: ' + str(r.get('failed'))} | - |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    app.run(main)
