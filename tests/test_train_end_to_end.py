"""A tiny Sort-of-CLEVR run through the command-line tools, as a user runs them."""

import json
import os
import shlex

import pytest

from conftest import ROOT, run_tool, tiny_sort_of_clevr_overrides


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    run_dir = str(base / "run")
    args = ["--config", "configs/sort_of_clevr.yaml"]
    for o in tiny_sort_of_clevr_overrides(str(base / "data"), run_dir) + ["train.eval_splits=[val, test]"]:
        args += ["--set", o]
    result = run_tool("train", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(run_dir, "metrics.json")) as f:  # the recorded command, quoted for a shell
        assert shlex.split(json.load(f)["command"])[1:] == args
    return run_dir, str(base / "data"), result.stdout


def test_run_directory_contents(trained_run):
    run_dir, _, stdout = trained_run
    for name in ("config.yaml", "metrics.json", "model.keras", "checkpoints", "logs"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["complete"] and metrics["epochs_completed"] == 2
    assert metrics["step"] == metrics["total_steps"] == 2 * (48 * 20 // 32)
    assert set(metrics["evaluation"]) == {"val", "test"}
    test = metrics["evaluation"]["test"]
    assert test["examples"] == 8 * 20
    assert set(test["groups"]) == {"shape", "horizontal", "vertical", "closest", "furthest", "count"}
    assert {"accuracy", "relational", "non_relational"} <= set(test["metrics"])
    assert "relational" in stdout and "closest" in stdout  # the printed breakdown
    assert os.listdir(os.path.join(run_dir, "logs", "train"))  # TensorBoard events


def test_evaluate_tool_prints_table_and_writes_json(trained_run, tmp_path):
    run_dir, _, _ = trained_run
    out = str(tmp_path / "report.json")
    result = run_tool("evaluate", "--run", run_dir, "--split", "test", "--json", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "non_relational" in result.stdout
    with open(out) as f:
        report = json.load(f)
    assert set(report) == {"task", "split", "examples", "metrics", "groups", "paper", "extra"}
    with open(os.path.join(run_dir, "metrics.json")) as f:
        in_training = json.load(f)["evaluation"]["test"]
    assert report["metrics"]["accuracy"] == pytest.approx(in_training["metrics"]["accuracy"], abs=1e-6)


def test_rerun_of_a_finished_run_resumes_without_training(trained_run):
    run_dir, data_dir, _ = trained_run
    args = ["--config", "configs/sort_of_clevr.yaml"]
    for o in tiny_sort_of_clevr_overrides(data_dir, run_dir):
        args += ["--set", o]
    result = run_tool("train", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resumed from" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "configs/sort_of_clevr.yaml", "--set", "model.g_unit=[3]"], "unknown key 'model.g_unit'"),
        (["--config", "configs/sort_of_clevr.yaml", "--set", "train.epochs=x"], "'train.epochs' must be a int"),
        (["--config", "configs/missing.yaml"], "Config file not found"),
    ],
)
def test_bad_config_is_one_clear_error(args, message):
    result = run_tool("train", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_misspelt_lr_multiplier_layer_fails_before_writing_the_run(trained_run, tmp_path):
    _, data_dir, _ = trained_run
    run_dir = tmp_path / "run"
    args = ["--config", "configs/sort_of_clevr.yaml", "--set", "train.lr_multipliers.cnnn=0.5"]
    for o in tiny_sort_of_clevr_overrides(data_dir, str(run_dir)):
        args += ["--set", o]
    result = run_tool("train", *args)
    assert result.returncode == 2
    assert "no trainable variable under 'cnnn'" in result.stderr and "Traceback" not in result.stderr
    assert not run_dir.exists()


def test_evaluate_missing_run_is_one_clear_error(tmp_path):
    result = run_tool("evaluate", "--run", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "not found" in result.stderr and "Traceback" not in result.stderr


def test_visualize_draws_pngs(trained_run, tmp_path):
    run_dir, _, _ = trained_run
    result = run_tool("visualize", "--model", run_dir, "--num", "2", "--out", str(tmp_path / "vis"))
    assert result.returncode == 0, result.stderr[-3000:]
    from PIL import Image

    pngs = sorted((tmp_path / "vis").glob("*.png"))
    assert len(pngs) == 2
    width, height = Image.open(pngs[0]).size
    assert width > 300 * 2 and height >= 300


def test_benchmark_scaling_smoke(tmp_path):
    out = tmp_path / "bench.json"
    result = run_tool("benchmark", "--skip_throughput", "--sizes", "5,9", "--chunk_pairs", "36", "--scaling_repeats", "1",
                      "--out", str(out), "--results", str(tmp_path / "R.md"))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        rows = json.load(f)["scaling"]
    # N=9: also in blocks of 36 // 9 = 4 rows; N=5 (7 rows per block) fits in one block
    assert [(r["objects"], r["pair_chunk_size"]) for r in rows] == [(5, None), (9, None), (9, 4)]
    assert "| 9 | 81 | 4 |" in (tmp_path / "R.md").read_text()
    assert all(r["seconds"] > 0 and r["peak_rss_gb"] > 0 for r in rows)


def test_batch_must_hold_whole_question_groups(tmp_path):
    args = ["--config", "configs/sort_of_clevr.yaml"]
    for o in tiny_sort_of_clevr_overrides(str(tmp_path / "data"), str(tmp_path / "run")) + ["train.batch_size=30"]:
        args += ["--set", o]
    result = run_tool("train", *args)
    assert result.returncode == 2
    assert "must be a multiple of the 4 examples" in result.stderr
    assert "Traceback" not in result.stderr


def test_benchmark_throughput_smoke(tmp_path):
    out = tmp_path / "bench.json"
    # float32 without XLA: every first layer and question grouping (the full table adds bfloat16 and XLA)
    args = ["--skip_scaling", "--repeats", "1", "--steps", "1", "--batch_size", "8", "--precisions", "float32",
            "--jit", "off", "--out", str(out)]
    for o in tiny_sort_of_clevr_overrides(str(tmp_path / "data")):
        args += ["--set", o]
    result = run_tool("benchmark", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        rows = json.load(f)["throughput"]
    variants = {(r["precision"], r["first_layer"], r["jit_compile"], r["questions_per_image"]) for r in rows}
    assert len(variants) == len(rows) == 4
    assert {(r["first_layer"], r["questions_per_image"]) for r in rows} == {
        (layer, group) for layer in ("naive", "factorized") for group in (1, 4)}
    assert all(r["questions_per_second"] > 0 for r in rows)
    slowest = min(r["questions_per_second"] for r in rows)
    for r in rows:  # each ratio is the variant's measured rate over the slowest one's
        assert r["speedup_vs_slowest"] == pytest.approx(r["questions_per_second"] / slowest, rel=1e-6)
    # the ceiling: g's layers after the first (8 x 8) over the 5 x 5 cells' 625 pairs, forward + backward
    ceiling = json.load(open(out))["matmul_gflops"]["float32"]
    for r in rows:
        assert r["pair_gflop_per_question"] == pytest.approx(3 * 2 * 625 * 8 * 8 / 1e9)
        assert r["share_of_ceiling"] == pytest.approx(
            r["questions_per_second"] * r["pair_gflop_per_question"] / ceiling, rel=1e-6)


def test_the_benchmark_times_the_trainers_own_step():
    import ast

    with open(os.path.join(ROOT, "tools", "benchmark.py")) as f:  # read, not imported: its flags are global
        tree = ast.parse(f.read())
    throughput = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "throughput")
    calls = {node.func.attr for node in ast.walk(throughput)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert "make_train_step" in calls and "GradientTape" not in calls


def test_probe_objects_tool(trained_run, tmp_path):
    # probe_objects reads question-free cells: a run of the paper's (unconditioned) CNN, on the fixture's data
    _, data_dir, _ = trained_run
    run_dir = str(tmp_path / "plain_cnn")
    args = ["--config", "configs/sort_of_clevr.yaml"]
    for o in tiny_sort_of_clevr_overrides(data_dir, run_dir) + ["model.film_layers=[]", "train.lr_multipliers={}", "train.epochs=1"]:
        args += ["--set", o]
    trained = run_tool("train", *args)
    assert trained.returncode == 0, trained.stderr[-3000:]
    out = tmp_path / "probe.json"
    result = run_tool("probe_objects", "--run", run_dir, "--images", "30", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "colour (object cells)" in result.stdout
    with open(out) as f:
        scores = json.load(f)
    for name in ("trained", "initial"):
        assert set(scores[name]) == {"colour_accuracy_object_cells", "colour_accuracy_all_cells",
                                     "shape_accuracy_object_cells"}
        assert all(0.0 <= v <= 1.0 for v in scores[name].values())


def test_probe_state_tool(trained_run, tmp_path):
    _, data_dir, _ = trained_run
    out = tmp_path / "state.json"
    sets = [a for o in tiny_sort_of_clevr_overrides(data_dir) for a in ("--set", o)]
    result = run_tool("probe_state", *sets, "--set", "model.aggregation=sum", "--epochs", "2", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "aggregation=sum" in result.stdout and "epoch 2" in result.stdout
    with open(out) as f:
        report = json.load(f)
    assert [row["epoch"] for row in report["epochs"]] == [1, 2]
    assert all(0.0 <= row["shape"] <= 1.0 and 0.0 <= row["count"] <= 1.0 for row in report["epochs"])
    bad = run_tool("probe_state", "--config", "configs/babi.yaml")
    assert bad.returncode == 2 and "not a Sort-of-CLEVR" in bad.stderr


def test_probe_state_scores_within_epochs(trained_run, tmp_path):
    _, data_dir, _ = trained_run
    out = tmp_path / "steps.json"
    sets = [a for o in tiny_sort_of_clevr_overrides(data_dir) for a in ("--set", o)]
    result = run_tool("probe_state", *sets, "--epochs", "2", "--batch_size", "64", "--eval_every_steps", "4",
                      "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        report = json.load(f)
    rows, per_epoch = report["epochs"], -(-report["training_questions"] // 64)
    expected = sorted({s for s in range(4, 2 * per_epoch, 4) if s % per_epoch} | {per_epoch, 2 * per_epoch})
    assert [row["step"] for row in rows] == expected
    assert [row["epoch"] for row in rows] == [(s - 1) // per_epoch + 1 for s in expected]
    assert "step 4 (epoch 1)" in result.stdout and "epoch 2 (" in result.stdout


def test_probe_state_pixels_layout_keeps_only_the_chosen_questions(trained_run, tmp_path):
    _, data_dir, _ = trained_run
    out = tmp_path / "pixels.json"
    sets = [a for o in tiny_sort_of_clevr_overrides(data_dir) for a in ("--set", o)]
    result = run_tool("probe_state", *sets, "--layout", "pixels", "--colours", "red,blue", "--subtypes", "shape,count",
                      "--epochs", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        report = json.load(f)
    assert report["layout"] == "pixels" and report["model"] == "rn"
    assert set(report["epochs"][0]) - {"epoch", "step", "seconds"} <= {"shape", "count"}
    # 20 questions per image, 2 of 6 colours, 2 of 6 subtypes (each drawn uniformly): about 1/9 of them
    images = int(next(o for o in tiny_sort_of_clevr_overrides(data_dir) if o.startswith("data.train_images=")).split("=")[1])
    assert 0 < report["training_questions"] < 20 * images / 3
    bad = run_tool("probe_state", *sets, "--layout", "pixels", "--colours", "purple")
    assert bad.returncode == 2 and "Unknown --colours purple" in bad.stderr


def test_probe_state_grid_layout_places_each_object_in_its_cell(trained_run, tmp_path):
    import importlib
    import sys

    import numpy as np

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        probe_state = importlib.import_module("probe_state")
    finally:
        sys.path.remove(os.path.join(ROOT, "tools"))
    # colour, x (column), y (row), shape; 75 px / 5 cells = 15 px per cell
    table = np.array([[[0, 7, 7, 1], [1, 74, 0, 0], [2, 30, 44, 1], [3, 45, 15, 0], [4, 60, 61, 1], [5, 16, 70, 0]]],
                     np.float32)
    cells = probe_state.grid_objects(table, 5)
    assert cells.shape == (1, 25, 11)
    state = probe_state.state_objects(table)
    expected_cell = {0: 0 * 5 + 0, 1: 0 * 5 + 4, 2: 2 * 5 + 2, 3: 1 * 5 + 3, 4: 4 * 5 + 4, 5: 4 * 5 + 1}
    for k, cell in expected_cell.items():
        np.testing.assert_array_equal(cells[0, cell, 2:], state[0, k])
    empty = sorted(set(range(25)) - set(expected_cell.values()))
    assert not cells[0, empty, 2:].any()
    np.testing.assert_allclose(cells[0, 7, :2], [-0.5, 0.0])  # row 1, column 2 of 5 on [-1, 1]

    _, data_dir, _ = trained_run
    out = tmp_path / "grid.json"
    sets = [a for o in tiny_sort_of_clevr_overrides(data_dir) for a in ("--set", o)]
    result = run_tool("probe_state", *sets, "--layout", "grid", "--epochs", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        report = json.load(f)
    assert report["layout"] == "grid" and report["objects"] == 25
