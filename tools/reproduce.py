"""Run an experiment described by a file in experiments/ and report its numbers from the runs' metrics.json.

    python tools/reproduce.py experiments/sort_of_clevr.yaml --train      # train every run (resuming), then report
    python tools/reproduce.py experiments/sort_of_clevr.yaml              # report from the runs (or their archive)
    python tools/reproduce.py experiments/sort_of_clevr.yaml --dry_run    # print the training commands only

An experiment file is data: a title, the split to report, and runs, each a config, a run directory and its
stages (the `--set` overrides of one `tools/train.py` call each, run in order, every one resuming the last):

    title: Sort-of-CLEVR, the paper's models
    split: test
    runs:
      - name: CNN+RN
        config: configs/sort_of_clevr.yaml
        run_dir: runs/sort_of_clevr
        stages: [[train.time_limit_minutes=60]]
        archive: docs/runs/sort_of_clevr     # optional: where the run's metrics.json and config.yaml are kept
        launch: both cores                   # optional: how it was run, for the reader

A run whose directory is gone (runs/ is not versioned) is reported from its archive; `--archive` copies each
finished run's metrics.json and config.yaml there. `--archive_checkpoint` also keeps what the run needs to go on
(its newest checkpoint, `best/` and metrics.json, in `<archive>/resume/`, for a run stopped by a signal or a time
limit too): `--train` on a machine without the run directory then resumes the run from there, so a training
longer than one machine's stay continues where it stopped. `--out FILE` writes the report into FILE between
`<!-- <experiment>:start -->` and `<!-- <experiment>:end -->` markers instead of printing it.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys

import _common  # noqa: F401
from absl import app, flags

from relation_networks import config as config_lib
from relation_networks.errors import UserError
from relation_networks.io import write_markdown_section
from relation_networks.machine import hardware_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_KEYS = {"name", "config", "run_dir", "stages", "archive", "launch"}

FLAGS = flags.FLAGS


class ExperimentError(UserError):
    """An experiment file is malformed."""


def load(path):
    """The experiment at `path`: a dict with title, split and runs, every run's stages checked to load."""
    experiment = config_lib.read_yaml(path, ExperimentError, "Experiment file")
    if not isinstance(experiment, dict) or not isinstance(experiment.get("runs"), list) or not experiment["runs"]:
        raise ExperimentError(f"{path}: expected a mapping with 'title', 'split' and a non-empty list 'runs'.")
    unknown = set(experiment) - {"title", "split", "runs"}
    if unknown:
        raise ExperimentError(f"{path}: unknown key '{sorted(unknown)[0]}' (known: title, split, runs).")
    experiment.setdefault("title", os.path.splitext(os.path.basename(path))[0])
    experiment.setdefault("split", "test")
    for i, run in enumerate(experiment["runs"]):
        where = f"{path}: runs[{i}]"
        if not isinstance(run, dict) or not {"name", "config", "run_dir"} <= set(run):
            raise ExperimentError(f"{where} needs 'name', 'config' and 'run_dir'.")
        if set(run) - RUN_KEYS:
            raise ExperimentError(f"{where}: unknown key '{sorted(set(run) - RUN_KEYS)[0]}' "
                                  f"(known: {', '.join(sorted(RUN_KEYS))}).")
        run.setdefault("stages", [[]])
        if not isinstance(run["stages"], list) or not all(isinstance(s, list) for s in run["stages"]):
            raise ExperimentError(f"{where}: 'stages' must be a list of lists of KEY=VALUE overrides.")
        for stage in run["stages"]:
            config_lib.load(os.path.join(ROOT, run["config"]), [str(o) for o in stage])
    return experiment


def commands(run, extra=()):
    """The `tools/train.py` command of each stage of `run`."""
    return [[sys.executable, "tools/train.py", "--config", run["config"], "--run_dir", run["run_dir"],
             *[a for o in list(stage) + list(extra) for a in ("--set", str(o))]] for stage in run["stages"]]


RESUME_DIR = "resume"  # in an archive: the state a run resumes from (see archive_checkpoint)


def restore_from_archive(run, log=print):
    """Copy an archived resume state into a run directory that has no checkpoint; True if it did."""
    source = run.get("archive") and os.path.join(ROOT, run["archive"], RESUME_DIR)
    target = os.path.join(ROOT, run["run_dir"])
    if not source or not os.path.isdir(source) or os.path.isdir(os.path.join(target, "checkpoints")):
        return False
    shutil.copytree(source, target, dirs_exist_ok=True)
    log(f"restored {run['run_dir']} from {os.path.join(run['archive'], RESUME_DIR)}: the run resumes there")
    return True


def archive_checkpoint(run):
    """Keep the run's newest checkpoint, `best/` and metrics.json in `<archive>/resume/`, replacing an older one,
    for a run that has not finished its schedule; True if it kept one."""
    import tensorflow as tf

    directory = os.path.join(ROOT, run["run_dir"])
    latest = tf.train.latest_checkpoint(os.path.join(directory, "checkpoints"))
    metrics, _ = metrics_of(run)
    if not run.get("archive") or latest is None or (metrics and metrics["step"] >= metrics["total_steps"]):
        return False  # nothing to keep, or the schedule is done: nothing left to train
    target = os.path.join(ROOT, run["archive"], RESUME_DIR)
    staging = target + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(os.path.join(staging, "checkpoints"))
    name = os.path.basename(latest)
    for file in os.listdir(os.path.dirname(latest)):
        if file.startswith(name + "."):
            shutil.copyfile(os.path.join(os.path.dirname(latest), file), os.path.join(staging, "checkpoints", file))
    # no state file: the trainer rebuilds it from the checkpoint files present (checkpointing.repair_state_file)
    if os.path.isdir(os.path.join(directory, "best")):
        shutil.copytree(os.path.join(directory, "best"), os.path.join(staging, "best"))
    shutil.copyfile(os.path.join(directory, "metrics.json"), os.path.join(staging, "metrics.json"))
    shutil.rmtree(target, ignore_errors=True)
    os.rename(staging, target)
    return True


def train(experiment, extra=(), log=print):
    for run in experiment["runs"]:
        restore_from_archive(run, log=log)
        for command in commands(run, extra):
            log("$ " + shlex.join(command[1:]))
            if subprocess.run(command, cwd=ROOT).returncode != 0:
                raise UserError(f"Training {run['name']!r} failed: {shlex.join(command[1:])}")


def metrics_of(run):
    """(metrics.json of the run, where it was read) from the run directory, else the archive; (None, None)."""
    for directory in (run["run_dir"], run.get("archive")):
        path = directory and os.path.join(ROOT, directory, "metrics.json")
        if path and os.path.isfile(path):
            with open(path) as f:
                return json.load(f), directory
    return None, None


def archive(run):
    metrics, source = metrics_of(run)
    finished = metrics and (metrics.get("complete") or metrics.get("stopped") == "time_limit")
    if not run.get("archive") or source != run["run_dir"] or not finished:
        return False
    target = os.path.join(ROOT, run["archive"])
    os.makedirs(target, exist_ok=True)
    for name in ("metrics.json", "config.yaml"):
        shutil.copyfile(os.path.join(ROOT, run["run_dir"], name), os.path.join(target, name))
    return True


def _percent(value):
    return f"{100 * value:.1f}%"


def draw_figures(experiment, directory):
    """The learning curve of every run whose directory (with its logs) is here: `<directory>/<run name>.png`."""
    from relation_networks import plots

    for run in experiment["runs"]:
        metrics, source = metrics_of(run)
        if metrics is not None and source == run["run_dir"]:
            name = os.path.basename(run["run_dir"].rstrip("/"))
            plots.learning_curve(os.path.join(ROOT, run["run_dir"]), os.path.join(directory, f"{name}.png"),
                                 metrics["history"], run["name"])


def _figure(run, figures, out):
    if not figures:
        return ""
    path = os.path.join(figures, os.path.basename(run["run_dir"].rstrip("/")) + ".png")
    if not os.path.isfile(path):
        return ""
    return f" [learning curve]({os.path.relpath(path, os.path.dirname(os.path.abspath(out)) if out else '.')})"


def report(experiment, figures=None, out=None):
    """A Markdown table (one row per run: the split's headline metrics beside the paper's, training time, steps,
    seed, hardware), then each run's commands (and learning curve, if drawn in `figures`)."""
    split = experiment["split"]
    rows, notes = [], []
    for run in experiment["runs"]:
        metrics, source = metrics_of(run)
        if metrics is None or split not in metrics.get("evaluation", {}):
            rows.append(f"| {run['name']} | not trained yet | | | | |")
            continue
        evaluation = metrics["evaluation"][split]
        paper = evaluation.get("paper", {})
        shown = "; ".join(f"{name} {_percent(value)}" + (f" (paper {_percent(paper[name])})" if name in paper else "")
                          for name, value in evaluation["metrics"].items())
        extra = evaluation.get("extra", {})
        shown += "".join(f"; {name} {value}" + (f" (paper {extra['paper_' + name]})" if "paper_" + name in extra else "")
                         for name, value in extra.items()
                         if isinstance(value, int) and not isinstance(value, bool) and not name.startswith("paper_"))
        shown += "".join(f"; {name.replace('_', ' ')}: {', '.join(value) or 'none'}" for name, value in extra.items()
                         if isinstance(value, list) and not name.startswith("paper_"))
        stopped = " (time limit)" if metrics.get("stopped") == "time_limit" else ""
        best = metrics.get("best")
        kept = f", best of epoch {best['epoch']}" if best else ""
        rows.append(f"| {run['name']} | {shown} | {metrics['train_seconds'] / 60:.0f}{stopped} | "
                    f"{metrics['step']:,} ({metrics['epochs_completed']} epochs{kept}) | {metrics['seed']} | "
                    f"{hardware_text(metrics['hardware'])}{', ' + run['launch'] if run.get('launch') else ''} |")
        stages = commands(run)
        text = "; then ".join(f"`python {shlex.join(c[1:])}`" for c in stages)
        notes.append(f"- {run['name']} ({'archived in ' + source if source != run['run_dir'] else source}): {text}"
                     + _figure(run, figures, out))
    header = (f"{experiment['title']} ({split} split)\n\n"
              "| run | metrics | minutes | steps | seed | hardware |\n|---|---|---|---|---|---|\n")
    return header + "\n".join(rows) + "\n\nCommands:\n\n" + "\n".join(notes) + "\n"


@_common.main_wrapper
def main(argv):
    if len(argv) != 2:
        raise UserError("Give one experiment file, e.g. python tools/reproduce.py experiments/sort_of_clevr.yaml")
    path = argv[1]
    experiment = load(path)
    if FLAGS.dry_run:
        for run in experiment["runs"]:
            for command in commands(run, FLAGS.set):
                print("python " + shlex.join(command[1:]))
        return
    if FLAGS.train:
        train(experiment, FLAGS.set)
    if FLAGS.archive or FLAGS.archive_checkpoint:
        for run in experiment["runs"]:
            if FLAGS.archive and archive(run):
                print(f"archived {run['run_dir']} in {run['archive']}")
            if FLAGS.archive_checkpoint and archive_checkpoint(run):
                print(f"kept the resume state of {run['run_dir']} in {run['archive']}/{RESUME_DIR}")
    if FLAGS.figures:
        draw_figures(experiment, FLAGS.figures)
    text = report(experiment, FLAGS.figures, FLAGS.out)
    if FLAGS.out:
        key = os.path.splitext(os.path.basename(path))[0]
        write_markdown_section(FLAGS.out, key, experiment["title"], text)
        print(f"wrote the {key} section of {FLAGS.out}")
    else:
        print(text)


def define_flags():
    """The tool's flags; defined when it runs (not on import), so tests and other tools may import this module."""
    flags.DEFINE_bool("train", False, "Train every run's stages first (each resumes from its run directory).")
    flags.DEFINE_bool("dry_run", False, "Print the training commands and stop.")
    flags.DEFINE_bool("archive", False, "Copy each finished run's metrics.json and config.yaml to its archive.")
    flags.DEFINE_bool("archive_checkpoint", False, "Also keep each run's newest checkpoint, best/ and metrics.json in "
                      "<archive>/resume/, from which --train resumes a run whose directory is gone.")
    flags.DEFINE_string("out", None, "Write the report into this Markdown file (its section for the experiment).")
    flags.DEFINE_multi_string("set", [], "Extra --set overrides appended to every stage (e.g. a smaller budget).")
    flags.DEFINE_string("figures", None, "Draw each run's learning curve from its TensorBoard logs into this directory "
                        "(<run name>.png) and link it from the report.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
