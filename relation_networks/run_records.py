"""A run directory's records: its file names, the training log's progress lines, metrics.json (the history of
validation points and the final evaluation, with the machine and the command), and the evaluations logged to
TensorBoard (`Evaluator`)."""

import json
import os
import shlex
import sys
import time

import keras
import tensorflow as tf

from relation_networks.io import atomic_write_json
from relation_networks.machine import hardware, hardware_text  # noqa: F401  (hardware_text: for the tools)
from relation_networks.serving import MODEL_FILE  # noqa: F401  (a run's trained model, as the loaders name it)

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"


class Progress:
    """A Keras progress bar on a terminal; otherwise (a log file) one line per `log_every` steps, with the time
    elapsed in this process and the estimated time to the end."""

    def __init__(self, total, start, log, every):
        self.log, self.every, self.total = log, every, total
        self.start_step, self.start_time = start, time.perf_counter()
        self.bar = keras.utils.Progbar(total, stateful_metrics=["loss", "accuracy", "lr", "q/s"]) if sys.stdout.isatty() else None
        if self.bar is not None:
            self.bar.update(start)

    def update(self, step, values):
        if self.bar is not None:
            self.bar.update(step, list(values.items()))
        elif step % self.every == 0 or step == self.total:
            text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
            elapsed = time.perf_counter() - self.start_time
            done = step - self.start_step
            eta = f"  eta {duration(elapsed / done * (self.total - step))}" if done > 0 else ""
            self.log(f"step {step}/{self.total}  {text}  elapsed {duration(elapsed)}{eta}")


def duration(seconds):
    """`42s`, `12m05s`, `3h07m`: a duration for a log line."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def load_history(path, step):
    """The validation history of a previous (interrupted) run, cut back to the step the checkpoint has."""
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            history = json.load(f).get("history", [])
    except (OSError, ValueError):
        return []
    return [entry for entry in history if entry.get("step", 0) <= step]

def write_metrics(path, config, history, step, plan, train_seconds, complete, evaluation=None, stopped=None,
                   best=None):
    metrics = {
        "task": config.task,
        "model": getattr(config.model, "type", None),
        "seed": config.seed,
        "run_dir": config.run_dir,
        "complete": bool(complete),
        "stopped": stopped,
        "step": int(step),
        "total_steps": int(plan.total_steps),
        "epochs_completed": int(step // plan.steps_per_epoch),
        "train_seconds": round(float(train_seconds.numpy()), 1),
        "hardware": hardware(),
        "command": shlex.join(sys.argv) if sys.argv and sys.argv[0] else None,
        "history": history,
        "evaluation": evaluation or {},
    }
    if best:
        metrics["best"] = best  # the evaluated model is this one (train.keep_best)
    atomic_write_json(path, metrics)
    return metrics


def _evaluate(task, predict, config, split):
    return task.evaluate(predict, config, split, batch_size=config.train.eval_batch_size)


class Evaluator:
    """The task's evaluation of the model on a split, with its metrics logged to TensorBoard (`logs/<split>/`)."""

    def __init__(self, task, config, model, run_dir, is_chief):
        self.task, self.config = task, config
        # once per run: a new function per evaluation would retrace
        predict = tf.function(lambda features: model(features, training=False), reduce_retracing=True)
        self.predict = lambda features: predict(features).numpy()
        self.run_dir, self.is_chief = run_dir, is_chief
        self.writers = {}

    def writer(self, split):
        if split not in self.writers:
            self.writers[split] = (tf.summary.create_file_writer(os.path.join(self.run_dir, "logs", split))
                                   if self.is_chief else tf.summary.create_noop_writer())
        return self.writers[split]

    def __call__(self, split, step=None):
        """The split's `Report`; with `step`, its metrics are also written to TensorBoard at that step."""
        report = _evaluate(self.task, self.predict, self.config, split)
        if step is not None:
            with self.writer(split).as_default(step=step):
                for name, value in report.metrics.items():
                    tf.summary.scalar(name, value)
                if "loss" in report.extra:
                    tf.summary.scalar("loss", report.extra["loss"])
                for name, group in report.groups.items():  # the paper's breakdown: bAbI task, question kind, ...
                    tf.summary.scalar(f"accuracy_by_group/{name}", group["accuracy"])
        return report

    def close(self):
        for writer in self.writers.values():
            writer.close()
