"""Synchronous multi-worker training on loopback, kill -9 resume, corrupt checkpoints, bad TF_CONFIG."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_tool, tiny_sort_of_clevr_overrides
from relation_networks.distribute import ClusterConfigError, parse_tf_config

STEPS = 6


def _args(data_dir, run_dir, *extra):
    args = ["--config", "configs/sort_of_clevr.yaml"]
    for o in tiny_sort_of_clevr_overrides(data_dir, run_dir) + list(extra):
        args += ["--set", o]
    return args


def _step_losses(stdout):
    return [float(x) for x in re.findall(r"step \d+/\d+ .*?loss ([0-9.]+)", stdout)]


def test_two_workers_hold_identical_weights_and_match_one_worker(tmp_path):
    data, common = str(tmp_path / "data"), [
        f"train.max_steps={STEPS}", "train.log_every_steps=1", "train.shuffle=false", "train.eval_splits=[]",
        "train.lr_schedule=constant", "train.learning_rate=2e-4", "train.lr_multipliers={}",  # set the bound below
        "train.warmup_steps=0", "model.synchronized_bn=true",
        "train.bn_recalibration_batches=2",  # run by every worker on its share of the same batches
    ]
    two = run_tool("launch_local", "--workers", "2", "--", sys.executable, "tools/train.py",
                   *_args(data, str(tmp_path / "two"), "train.batch_size=8", "train.distribute.strategy=multi_worker",
                          *common))
    assert two.returncode == 0, two.stdout[-3000:]
    digests = dict(re.findall(r"\[worker \d\] worker (\d): step \d+, weights sha256 ([0-9a-f]{64})", two.stdout))
    assert set(digests) == {"0", "1"}, two.stdout[-3000:]
    assert digests["0"] == digests["1"]  # bit-identical after every synchronous step

    one = run_tool("train", *_args(data, str(tmp_path / "one"), "train.batch_size=16", *common))
    assert one.returncode == 0, one.stderr[-3000:]
    chief_lines = "\n".join(l for l in two.stdout.splitlines() if l.startswith("[worker 0]"))
    # Same global batch (2 x 8 vs 1 x 16, in groups of 4 questions per image) over the same examples: the same losses step by step ...
    np.testing.assert_allclose(_step_losses(chief_lines), _step_losses(one.stdout), rtol=1e-3)
    assert len(_step_losses(one.stdout)) == STEPS

    import keras

    import relation_networks  # noqa: F401

    two_model = keras.models.load_model(str(tmp_path / "two" / "model.keras"))
    one_model = keras.models.load_model(str(tmp_path / "one" / "model.keras"))
    a = [v.numpy() for v in two_model.trainable_weights]
    b = [v.numpy() for v in one_model.trainable_weights]
    diff = np.concatenate([np.abs(x - y).ravel() for x, y in zip(a, b)])
    # ... and the same weights up to float summation order, which Adam can amplify on near-zero gradients
    # (m / sqrt(v) is +-1 whatever the gradient's size): stated tolerance 98% of the ~1,000 parameters within 1e-4,
    # none further apart than the most Adam can move them in the run (learning rate x steps).
    assert np.mean(diff <= 1e-4) >= 0.98, np.sort(diff)[-10:]
    assert diff.max() <= 2e-4 * STEPS
    # The batch-norm statistics, re-estimated on the same global batches, follow those weights closely.
    for x, y in zip(two_model.non_trainable_weights, one_model.non_trainable_weights, strict=True):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=5e-3, atol=1e-3, err_msg=x.path)


def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    data, run_dir = str(tmp_path / "data"), tmp_path / "run"
    args = _args(data, str(run_dir), "data.train_images=80", "model.g_units=[32,32]", "train.batch_size=8",
                 "train.checkpoint_every_steps=20", "train.eval_splits=[]")
    command = [sys.executable, os.path.join(ROOT, "tools", "train.py"), *args]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    checkpoint_state = run_dir / "checkpoints" / "checkpoint"
    while time.time() < deadline and process.poll() is None:
        if checkpoint_state.exists() and "ckpt-" in checkpoint_state.read_text():
            break
        time.sleep(0.05)
    assert process.poll() is None, "training finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "model.keras").exists()

    result = run_tool("train", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed_at = int(re.search(r"Resumed from .*ckpt-(\d+) at step (\d+)", result.stdout).group(2))
    steps_per_epoch = 80 * 20 // 8
    assert 0 < resumed_at < 2 * steps_per_epoch
    first_logged = int(re.search(r"step (\d+)/", result.stdout).group(1))
    assert first_logged > resumed_at  # the step counter continues, it does not restart at 0
    with open(run_dir / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["complete"] and metrics["epochs_completed"] == 2
    assert metrics["step"] == 2 * steps_per_epoch
    assert [e["epoch"] for e in metrics["history"]] == [1, 2]


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path):
    data, run_dir = str(tmp_path / "data"), tmp_path / "run"
    args = _args(data, str(run_dir), "train.checkpoint_every_steps=10", "train.eval_splits=[]", "train.epochs=1")
    assert run_tool("train", *args).returncode == 0
    steps = 48 * 20 // 32
    newest = run_dir / "checkpoints" / f"ckpt-{steps}.data-00000-of-00001"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a crash mid-write on a bad filesystem
    result = run_tool("train", *_args(data, str(run_dir), "train.checkpoint_every_steps=10",
                                      "train.eval_splits=[]", "train.epochs=2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"checkpoint {run_dir}/checkpoints/ckpt-{steps} could not be restored" in result.stdout
    assert re.search(r"Resumed from .*ckpt-(\d+) at step (\d+)", result.stdout).group(2) == str(steps - 10)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "TF_CONFIG is not set"),
        ("{not json", "not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "no 'cluster'"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "no valid 'task'"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}', "out of range"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}', "not a job"),
        ('{"cluster": {"worker": "127.0.0.1:1"}, "task": {"type": "worker", "index": 0}}', "list of 'host:port'"),
    ],
)
def test_bad_tf_config_messages(text, message):
    with pytest.raises(ClusterConfigError, match=message):
        parse_tf_config(text)


def test_bad_tf_config_is_one_clear_error_from_the_tool(tmp_path):
    result = run_tool("train", *_args(str(tmp_path / "d"), str(tmp_path / "r"), "train.distribute.strategy=multi_worker"),
                      env={"TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}'})
    assert result.returncode == 2
    assert "task.index 3 is out of range" in result.stderr and "Traceback" not in result.stderr


def test_launcher_fails_when_a_worker_fails():
    result = run_tool("launch_local", "--workers", "2", "--", sys.executable, "-c",
                      "import json, os, sys; i = json.loads(os.environ['TF_CONFIG'])['task']['index']; "
                      "print('hello'); sys.exit(3 if i == 1 else 0)")
    assert result.returncode == 3
    assert "[worker 0] hello" in result.stdout and "[worker 1] hello" in result.stdout


def test_checkpoint_holds_every_model_variable(tmp_path):
    """All variables, batch-norm moving statistics included, come back from the last checkpoint."""
    import keras
    import tensorflow as tf

    import relation_networks  # noqa: F401
    from relation_networks import config as config_lib
    from relation_networks import tasks
    from relation_networks.checkpointing import make_checkpoint

    data, run_dir = str(tmp_path / "data"), tmp_path / "run"
    args = _args(data, str(run_dir), "train.eval_splits=[]", "train.epochs=1")
    assert run_tool("train", *args).returncode == 0
    trained = keras.models.load_model(str(run_dir / "model.keras"))
    config = config_lib.load(str(run_dir / "config.yaml"))
    fresh = tasks.get(config.task).build_model(config)
    checkpoint = make_checkpoint(fresh)
    checkpoint.read(tf.train.latest_checkpoint(str(run_dir / "checkpoints"))).expect_partial()
    moving = [v.path for v in trained.non_trainable_variables]
    assert any("moving_variance" in p for p in moving)
    for a, b in zip(trained.variables, fresh.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_two_workers_keep_the_best_model_on_the_chief(tmp_path):
    """`train.keep_best` evaluates and saves on the chief only; the workers must not wait on it (no deadlock)."""
    run_dir = tmp_path / "run"
    result = run_tool("launch_local", "--workers", "2", "--", sys.executable, "tools/train.py",
                      *_args(str(tmp_path / "data"), str(run_dir), "train.batch_size=8", f"train.max_steps={STEPS}",
                             "train.distribute.strategy=multi_worker", "train.keep_best=accuracy",
                             "train.eval_splits=[val]", "model.synchronized_bn=true"))
    assert result.returncode == 0, result.stdout[-3000:]
    digests = set(re.findall(r"weights sha256 ([0-9a-f]{64})", result.stdout))
    assert len(digests) == 1, result.stdout[-3000:]
    with open(run_dir / "best" / "best.json") as f:
        best = json.load(f)
    assert best["step"] == STEPS and best["metric"] == "accuracy"
    with open(run_dir / "metrics.json") as f:
        assert json.load(f)["best"] == best


def test_launcher_kills_a_worker_that_ignores_sigterm():
    # Worker 0 stands for one blocked in a collective operation (it cannot act on SIGTERM) when worker 1 fails.
    start = time.monotonic()
    result = run_tool("launch_local", "--workers", "2", "--grace_seconds", "1", "--", sys.executable, "-c",
                      "import json, os, signal, sys, time; i = json.loads(os.environ['TF_CONFIG'])['task']['index']; "
                      "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                      "time.sleep(1) if i else time.sleep(90); sys.exit(3)", timeout=120)
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    assert "worker 1 exited with status 3" in result.stdout
    assert time.monotonic() - start < 45  # not the 90 s worker 0 would sleep


def test_a_cluster_that_lost_a_worker_resumes_from_the_chiefs_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path):
    """kill -9 one of two workers mid-run: the launcher stops the other; the restarted cluster resumes from the
    chief's newest checkpoint and ends with the weights of a run that was never interrupted."""
    steps = 24
    data = str(tmp_path / "data")

    def command(run_dir):
        return [sys.executable, os.path.join(ROOT, "tools", "launch_local.py"), "--workers", "2", "--grace_seconds", "3",
                "--", sys.executable, "tools/train.py",
                *_args(data, str(run_dir), "train.batch_size=8", "train.distribute.strategy=multi_worker",
                       f"train.max_steps={steps}", "train.epochs=1", "data.train_images=240", "train.eval_splits=[]",
                       "train.checkpoint_every_steps=4", "train.log_every_steps=1", "train.shuffle=false",
                       "train.lr_schedule=constant", "train.warmup_steps=0", "model.synchronized_bn=true")]

    def weights(run_dir):
        import keras

        import relation_networks  # noqa: F401

        return [v.numpy() for v in keras.models.load_model(str(run_dir / "model.keras")).variables]

    whole = subprocess.run(command(tmp_path / "whole"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stdout[-3000:]

    run_dir = tmp_path / "cut"
    cluster = subprocess.Popen(command(run_dir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, pids = [], {}
    for line in cluster.stdout:
        lines.append(line)
        match = re.match(r"\[launcher\] worker (\d): pid (\d+)", line)
        if match:
            pids[match.group(1)] = int(match.group(2))
        match = re.match(r"\[worker 0\] step (\d+)/", line)
        if match and int(match.group(1)) >= 10:  # the chief has checkpoints at steps 4 and 8
            break
    os.kill(pids["1"], signal.SIGKILL)
    output = "".join(lines) + cluster.stdout.read()
    assert cluster.wait(timeout=120) != 0, output[-3000:]
    assert "worker 1 exited with status -9" in output and not (run_dir / "model.keras").exists()

    again = subprocess.run(command(run_dir), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:]
    resumed = {int(s) for s in re.findall(r"\[worker \d\] Resumed from .*ckpt-\d+ at step (\d+)", again.stdout)}
    assert len(resumed) == 1 and 8 <= resumed.pop() < steps, again.stdout[-3000:]
    digests = set(re.findall(r"worker \d: step \d+, weights sha256 ([0-9a-f]{64})", again.stdout))
    assert len(digests) == 1  # both workers again hold identical weights
    # Stated tolerance: the same steps on the same batches, up to float summation order in the all-reduce.
    for a, b in zip(weights(run_dir), weights(tmp_path / "whole"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
