"""tools/reproduce.py: experiments are data (every shipped experiment loads, each stage's config with its overrides),
their runs are trained stage by stage, and the report comes from metrics.json (the run's, else its archive's)."""

import glob
import json
import os
import shutil
import sys

import pytest

from conftest import ROOT, run_tool, tiny_sort_of_clevr_overrides

sys.path.insert(0, os.path.join(ROOT, "tools"))
import reproduce  # noqa: E402

EXPERIMENTS = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.yaml")))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_every_experiment_loads_each_stage_of_each_run(path):
    experiment = reproduce.load(path)
    assert experiment["runs"] and experiment["split"] in ("val", "test")
    for run in experiment["runs"]:
        assert run["run_dir"].startswith("runs/")
        assert not run.get("archive") or os.path.isdir(os.path.join(ROOT, run["archive"])) or "shipped" in run["name"]


def test_every_task_has_an_experiment_and_a_page():
    names = {os.path.splitext(os.path.basename(p))[0] for p in EXPERIMENTS}
    assert {"sort_of_clevr", "babi", "physics_connections", "physics_count", "nth_farthest"} <= names
    pages = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))}
    for name in names:  # experiments/physics_count.yaml -> docs/physics.md, babi_qa16.yaml -> babi.md
        page = max((p for p in pages if name.startswith(p)), key=len)
        with open(os.path.join(ROOT, "docs", f"{page}.md")) as f:
            assert f"experiments/{name}.yaml" in f.read()


@pytest.mark.parametrize("text, message", [
    ("runs: []\n", "non-empty list 'runs'"),
    ("title: x\nruns: [{name: a, config: configs/sort_of_clevr.yaml}]\n", "needs 'name', 'config' and 'run_dir'"),
    ("runs: [{name: a, config: configs/sort_of_clevr.yaml, run_dir: runs/a, stage: []}]\n", "unknown key 'stage'"),
    ("runs: [{name: a, config: configs/sort_of_clevr.yaml, run_dir: runs/a, stages: [[train.epoch=3]]}]\n",
     "unknown key 'train.epoch'"),
    ("runs: [{name: a, config: configs/sort_of_clevr.yaml, run_dir: runs/a}]\nextra: 1\n", "unknown key 'extra'"),
])
def test_a_malformed_experiment_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run_tool("reproduce", str(path), "--dry_run")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_train_runs_the_stages_in_order_and_the_report_reads_the_run_then_its_archive(tmp_path):
    overrides = tiny_sort_of_clevr_overrides(str(tmp_path / "data")) + ["train.eval_splits=[val, test]"]
    run_dir = str(tmp_path / "runs" / "demo")
    experiment = {"title": "demo", "split": "test", "runs": [
        {"name": "tiny RN", "config": "configs/sort_of_clevr.yaml", "run_dir": run_dir,
         "stages": [overrides + ["train.epochs=1"], overrides + ["train.epochs=2"]],
         "archive": str(tmp_path / "archive" / "demo"), "launch": "one core"}]}
    path = tmp_path / "demo.yaml"
    import yaml

    path.write_text(yaml.safe_dump(experiment))
    dry = run_tool("reproduce", str(path), "--dry_run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    lines = dry.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].endswith("--set train.epochs=1") and lines[1].endswith("--set train.epochs=2")

    trained = run_tool("reproduce", str(path), "--train", "--archive")
    assert trained.returncode == 0, trained.stderr[-3000:]
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["epochs_completed"] == 2 and metrics["complete"]  # the second stage resumed the first
    accuracy = metrics["evaluation"]["test"]["metrics"]["accuracy"]
    assert f"| tiny RN | accuracy {100 * accuracy:.1f}%" in trained.stdout and "one core |" in trained.stdout
    assert sorted(os.listdir(tmp_path / "archive" / "demo")) == ["config.yaml", "metrics.json"]

    shutil.rmtree(run_dir)  # runs/ is not versioned: the report comes from the archive
    again = run_tool("reproduce", str(path))
    assert again.returncode == 0 and f"accuracy {100 * accuracy:.1f}%" in again.stdout
    assert f"archived in {tmp_path / 'archive' / 'demo'}" in again.stdout


def test_a_run_archived_with_its_checkpoint_resumes_where_it_stopped_on_another_machine(tmp_path):
    overrides = tiny_sort_of_clevr_overrides(str(tmp_path / "data")) + ["train.eval_splits=[val]"]
    run_dir = str(tmp_path / "runs" / "long")
    experiment = {"title": "long", "split": "val", "runs": [
        {"name": "tiny RN", "config": "configs/sort_of_clevr.yaml", "run_dir": run_dir,
         "stages": [overrides + ["train.epochs=2", "train.max_steps=30"]],
         "archive": str(tmp_path / "archive" / "long")}]}
    path = tmp_path / "long.yaml"
    import yaml

    path.write_text(yaml.safe_dump(experiment))
    first = run_tool("reproduce", str(path), "--train", "--archive_checkpoint")
    assert first.returncode == 0, first.stderr[-3000:]
    resume = tmp_path / "archive" / "long" / "resume"
    assert sorted(os.listdir(resume / "checkpoints")) == ["ckpt-30.data-00000-of-00001", "ckpt-30.index"]
    assert (resume / "metrics.json").exists()
    shutil.rmtree(run_dir)  # another machine: the run directory is gone, its archive came with the repository

    experiment["runs"][0]["stages"] = [overrides + ["train.epochs=2"]]  # now to the end
    path.write_text(yaml.safe_dump(experiment))
    second = run_tool("reproduce", str(path), "--train")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "the run resumes there" in second.stdout
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["complete"] and metrics["step"] == 2 * (48 * 20 // 32)
    # resumed at step 30, not trained again from step 0: the first epoch's validation is the archived one
    with open(resume / "metrics.json") as f:
        archived = json.load(f)["history"]
    assert metrics["history"][0] == archived[0] and len(metrics["history"]) == 2
