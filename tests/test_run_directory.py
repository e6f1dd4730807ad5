"""A run directory is never lost or silently wrong: one training at a time, a refused training writes nothing,
a corrupt model file is reported as such, operating-system faults are one message."""

import errno
import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_tool, tiny_sort_of_clevr_overrides
from relation_networks.errors import UserError
from relation_networks.run_lock import LOCK_FILE, RunLock


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("rundir")
    run_dir = str(base / "run")
    args = ["--config", "configs/sort_of_clevr.yaml"]
    for o in tiny_sort_of_clevr_overrides(str(base / "data"), run_dir) + ["train.epochs=1", "train.eval_splits=[]"]:
        args += ["--set", o]
    result = run_tool("train", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Model saved to" in result.stdout and "tensorboard --logdir" in result.stdout
    return run_dir, args


def test_a_second_training_in_a_locked_run_directory_refuses(tmp_path):
    run_dir = str(tmp_path / "run")
    with RunLock(run_dir):
        with pytest.raises(UserError, match=r"Another training is running in .*process \d+ on "):
            with RunLock(run_dir):
                pass
        assert os.path.exists(os.path.join(run_dir, LOCK_FILE))
    assert not os.path.exists(run_dir)  # created for the lock only: removed with it
    with RunLock(run_dir):  # released: a new training may start
        pass


def test_the_train_tool_refuses_a_run_directory_another_training_holds(finished_run):
    run_dir, args = finished_run
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from relation_networks.run_lock import RunLock\n"
         f"with RunLock({run_dir!r}):\n    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {name: os.path.getmtime(os.path.join(run_dir, name)) for name in os.listdir(run_dir)}
        result = run_tool("train", *args)
        assert result.returncode == 2 and "Another training is running in" in result.stderr
        assert "Traceback" not in result.stderr
        after = {name: os.path.getmtime(os.path.join(run_dir, name)) for name in os.listdir(run_dir)}
        assert after == before
    finally:
        holder.kill()
        holder.wait()
    result = run_tool("train", *args)  # the holder died (kill -9 would do the same): the lock is gone with it
    assert result.returncode == 0 and "Resumed from" in result.stdout


def test_a_training_refused_for_another_model_leaves_config_and_results_untouched(finished_run):
    run_dir, args = finished_run
    with open(os.path.join(run_dir, "config.yaml")) as f:
        config_before = f.read()
    result = run_tool("train", *args, "--set", "model.g_units=[12,12]")
    assert result.returncode == 2 and "could be restored" in result.stderr and "Traceback" not in result.stderr
    with open(os.path.join(run_dir, "config.yaml")) as f:
        assert f.read() == config_before
    result = run_tool("evaluate", "--run", run_dir, "--split", "val")  # the finished run still evaluates
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_corrupt_keras_file_is_reported_as_corrupt_not_missing(finished_run, tmp_path):
    run_dir, _ = finished_run
    broken = tmp_path / "run"
    broken.mkdir()
    with open(os.path.join(run_dir, "config.yaml")) as f:
        (broken / "config.yaml").write_text(f.read())
    with open(os.path.join(run_dir, "model.keras"), "rb") as f:
        (broken / "model.keras").write_bytes(f.read()[:2000])  # cut short
    result = run_tool("evaluate", "--run", str(broken), "--split", "val")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a readable Keras model" in result.stderr and "not found" not in result.stderr.lower()


@pytest.mark.parametrize("fault, message", [
    (OSError(errno.ENOSPC, "No space left on device", "/runs/x/ckpt-3.data"), "the disk is full (/runs/x/ckpt-3.data)"),
    (OSError(errno.EROFS, "Read-only file system", "/runs/x"), "the file system is read-only (/runs/x)"),
    (PermissionError(errno.EACCES, "Permission denied", "/runs/x/config.yaml"), "permission denied"),
])
def test_operating_system_faults_are_one_message(fault, message, capsys):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import _common

    def main(argv):
        raise fault

    with pytest.raises(SystemExit) as exit_info:
        _common.main_wrapper(main)([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "re-run the same command" in err


def test_a_tool_started_afresh_prints_no_tensorflow_start_up_lines():
    """TF_CPP_MIN_LOG_LEVEL=2 (the tools' default) hides TensorFlow's native INFO/WARNING start-up lines, which
    its logging prints before it reads the level."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "evaluate.py"), "--model", "nowhere"],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 2
    assert result.stderr == "error: Model path not found: nowhere\n"


def test_a_damaged_record_read_by_tensorflow_is_one_message(capsys):
    import tensorflow as tf

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import _common

    def main(argv):
        raise tf.errors.DataLossError(None, None, "corrupted record at 12")

    with pytest.raises(SystemExit) as exit_info:
        _common.main_wrapper(main)([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "a data file is damaged (corrupted record at 12)" in err and "run the same command again" in err


@pytest.mark.parametrize("tool, flags, message", [
    ("evaluate", ["--split", "val", "--batch_size", "0"], "--batch_size must be a positive number, got 0"),
    ("evaluate", ["--split", "val", "--json", "/proc/nowhere/report.json"], "--json /proc/nowhere: cannot create it"),
    ("export", ["--parity_examples", "0"], "--parity_examples must be a positive number, got 0"),
    ("export", ["--out", "/proc/nowhere"], "--out /proc/nowhere: cannot create it"),
])
def test_bad_tool_flags_are_one_message_before_any_work(finished_run, tool, flags, message):
    run_dir, _ = finished_run
    result = run_tool(tool, "--run", run_dir, *flags)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
