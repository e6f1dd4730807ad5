"""The trainer's parts, each alone, and the reliability they give a run: a stop request (SIGTERM / Ctrl-C) saves a
checkpoint, an unreadable checkpoint state file is rebuilt, validation every N steps, the time budget, and the
final evaluation in TensorBoard."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from conftest import ROOT, run_tool, tiny_sort_of_clevr_overrides
from relation_networks import checkpointing
from relation_networks import config as config_lib
from relation_networks import stopping, training


def _config(tmp_path, *extra):
    overrides = tiny_sort_of_clevr_overrides(str(tmp_path / "data"), str(tmp_path / "run")) + list(extra)
    return config_lib.load(os.path.join(ROOT, "configs/sort_of_clevr.yaml"), overrides)


def _checkpoint_steps(directory):
    return sorted(int(re.search(r"ckpt-(\d+)\.index$", p).group(1))
                  for p in glob.glob(os.path.join(directory, "ckpt-*.index")))


def test_checkpoints_save_every_n_steps_and_never_twice_for_one_step(tmp_path):
    variable = tf.Variable(1.0)
    directory = str(tmp_path / "checkpoints")
    checkpoints = checkpointing.Checkpoints(tf.train.Checkpoint(v=variable), directory, directory, keep=5, every=3)
    for step in range(1, 8):
        checkpoints.step_done(step)
    checkpoints.save(6)  # already saved at this step: no second file
    checkpoints.save(7)
    assert _checkpoint_steps(directory) == [3, 6, 7]
    variable.assign(5.0)
    assert checkpoints.restore().endswith("ckpt-7") and float(variable.numpy()) == 1.0


@pytest.mark.parametrize("state", [b"garbage {{{ \x00\x01", b"", None])
def test_an_unreadable_or_missing_state_file_is_rebuilt_from_the_checkpoint_files(tmp_path, state):
    variable = tf.Variable(0.0)
    directory = str(tmp_path / "checkpoints")
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=variable), directory, max_to_keep=5)
    for step in (10, 20):
        variable.assign(float(step))
        manager.save(checkpoint_number=step)
    state_path = os.path.join(directory, "checkpoint")
    if state is None:
        os.remove(state_path)
    else:
        with open(state_path, "wb") as f:
            f.write(state)
    logged = []
    checkpoints = checkpointing.Checkpoints(tf.train.Checkpoint(v=variable), directory, directory, keep=5, every=10,
                                       log=logged.append)
    assert any("rebuilt it from the checkpoints present (ckpt-10, ckpt-20)" in line for line in logged)
    variable.assign(-1.0)
    assert checkpoints.restore().endswith("ckpt-20") and float(variable.numpy()) == 20.0
    assert _checkpoint_steps(directory) == [10, 20]  # nothing was overwritten or deleted
    if state:
        with open(state_path + ".unreadable", "rb") as f:
            assert f.read() == state  # the bad file is kept for a look


def test_a_readable_state_file_is_left_alone(tmp_path):
    directory = str(tmp_path / "checkpoints")
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(0.0)), directory, max_to_keep=5)
    manager.save(checkpoint_number=4)
    before = open(os.path.join(directory, "checkpoint")).read()
    assert not checkpointing.repair_state_file(directory)
    assert open(os.path.join(directory, "checkpoint")).read() == before
    assert not checkpointing.repair_state_file(str(tmp_path / "none"))  # no directory: nothing to do


def test_time_budget_counts_the_seconds_it_is_given():
    budget = stopping.TimeBudget(tf.Variable(0.0, dtype=tf.float64), minutes=0.5)
    budget.add(29.0)
    assert not budget.spent()
    budget.add(1.0)
    assert budget.spent() and budget.used == 30.0
    assert not stopping.TimeBudget(tf.Variable(1e9, dtype=tf.float64), minutes=None).spent()
    votes = []
    voted = stopping.TimeBudget(tf.Variable(0.0, dtype=tf.float64), minutes=1, vote=lambda flag: votes.append(flag) or True)
    assert voted.spent() and votes == [False]  # another worker is over: this one stops too


def test_stop_request_notes_the_first_signal_and_a_second_interrupts():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with stopping.StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert stop.requested and stop.signal == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # handlers given back


def test_sigterm_saves_a_checkpoint_at_the_step_reached_and_the_run_resumes_there(tmp_path):
    run_dir = tmp_path / "run"
    overrides = tiny_sort_of_clevr_overrides(str(tmp_path / "data"), str(run_dir)) + [
        "data.train_images=400", "train.batch_size=8", "train.epochs=1", "train.checkpoint_every_steps=100000",
        "train.log_every_steps=1", "train.eval_splits=[]"]
    args = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "--config", "configs/sort_of_clevr.yaml"]
    for o in overrides:
        args += ["--set", o]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:  # wait until a few steps are trained
        lines.append(line)
        if re.match(r"step (\d+)/", line) and int(re.match(r"step (\d+)/", line).group(1)) >= 5:
            break
    process.send_signal(signal.SIGTERM)
    output = "".join(lines) + process.stdout.read()
    assert process.wait(timeout=120) == 130, output[-3000:]
    stopped_at = int(re.search(r"Stopped by SIGTERM at step (\d+): checkpoint saved", output).group(1))
    assert stopped_at >= 5
    assert _checkpoint_steps(str(run_dir / "checkpoints")) == [stopped_at]  # no step lost
    with open(run_dir / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["stopped"] == "signal (SIGTERM)" and not metrics["complete"] and metrics["step"] == stopped_at
    resumed = run_tool("train", "--config", "configs/sort_of_clevr.yaml", *sum((["--set", o] for o in overrides), []))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {stopped_at} " in resumed.stdout and "Resumed from" in resumed.stdout


def test_a_garbage_state_file_does_not_restart_a_run_from_step_zero(tmp_path):
    config = _config(tmp_path, "train.epochs=1", "train.eval_splits=[]")
    training.train(config, log=lambda *a: None)
    directory = os.path.join(config.run_dir, "checkpoints")
    saved = _checkpoint_steps(directory)
    with open(os.path.join(directory, "checkpoint"), "w") as f:
        f.write("not a checkpoint state\n")
    lines = []
    metrics = training.train(_config(tmp_path, "train.epochs=2", "train.eval_splits=[]"), log=lines.append)
    assert any(f"at step {saved[-1]} " in line for line in lines if line.startswith("Resumed from"))
    assert metrics["complete"] and metrics["step"] == 2 * saved[-1]


def test_validation_every_n_steps_and_the_final_evaluation_reach_tensorboard(tmp_path):
    steps_per_epoch = 48 * 20 // 32
    config = _config(tmp_path, "train.epochs=1", "train.eval_every_steps=10", "train.eval_splits=[val, test]",
                     "train.keep_best=accuracy")
    metrics = training.train(config, log=lambda *a: None)
    assert [entry["step"] for entry in metrics["history"]] == [10, 20, steps_per_epoch]
    assert all("val" in entry for entry in metrics["history"])
    assert metrics["epochs_completed"] == 1 and metrics["best"]["step"] in (10, 20, steps_per_epoch)

    def scalars(split):
        found = {}
        for path in glob.glob(os.path.join(config.run_dir, "logs", split, "events.*")):
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    found.setdefault(value.tag, []).append(event.step)
        return found

    assert scalars("val")["accuracy"] == [10, 20, steps_per_epoch, steps_per_epoch]  # + the final evaluation
    assert scalars("test")["accuracy"] == [steps_per_epoch]
    assert scalars("val")["loss"] == scalars("val")["accuracy"]  # the validation loss beside the accuracy
    by_group = [tag for tag in scalars("val") if tag.startswith("accuracy_by_group/")]
    assert by_group and all(scalars("val")[tag] == scalars("val")["accuracy"] for tag in by_group)


def test_a_state_file_without_timestamps_still_restores_its_checkpoint(tmp_path):
    """tf.train.CheckpointManager lists no checkpoint for a state file without timestamps (one written by hand or
    by another tool); the run must resume from the checkpoint it names, not start again from step 0."""
    variable = tf.Variable(3.0)
    checkpoint = tf.train.Checkpoint(v=variable)
    tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=2).save(checkpoint_number=7)
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-7"\nall_model_checkpoint_paths: "ckpt-7"\n')
    variable.assign(0.0)
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=2)
    assert manager.checkpoints == []  # the manager's own view
    assert checkpointing.restore_latest(checkpoint, manager, log=lambda *_: None).endswith("ckpt-7")
    assert float(variable.numpy()) == 3.0
