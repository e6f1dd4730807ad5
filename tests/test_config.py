import textwrap

import pytest

from relation_networks import config as config_lib
from relation_networks.config import ConfigError


def _write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_defaults_types_and_run_dir(tmp_path):
    path = _write(tmp_path, """
        task: sort_of_clevr
        model: {g_units: [8, 8], f_units: [4]}
        train: {learning_rate: 1e-3, epochs: 2}
    """)
    config = config_lib.load(path)
    assert config.model.g_units == [8, 8]
    assert config.train.learning_rate == 1e-3 and isinstance(config.train.learning_rate, float)
    assert config.train.distribute.strategy == "default"
    assert config.data.train_images == 9800
    assert config.run_dir == "runs/exp"


def test_overrides(tmp_path):
    path = _write(tmp_path, "task: sort_of_clevr\n")
    config = config_lib.load(path, ["train.epochs=3", "model.g_units=[4,4]", "train.learning_rate=2e-4",
                                    "train.distribute.strategy=mirrored", "run_dir=/tmp/x"])
    assert config.train.epochs == 3 and config.model.g_units == [4, 4]
    assert config.train.learning_rate == 2e-4 and config.train.distribute.strategy == "mirrored"
    assert config.run_dir == "/tmp/x"


def test_lr_multipliers_from_file_and_override(tmp_path):
    path = _write(tmp_path, "task: sort_of_clevr\ntrain: {lr_multipliers: {relation_module: 2}}\n")
    config = config_lib.load(path, ["train.lr_multipliers.cnn=0.2"])
    assert config.train.lr_multipliers == {"relation_module": 2.0, "cnn": 0.2}
    assert config_lib.load(_write(tmp_path, "task: sort_of_clevr\n", "b.yaml")).train.lr_multipliers == {}


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("task: sort_of_clevr\nmodel: {g_unit: [8]}\n", [], r"unknown key 'model.g_unit'"),
        ("task: sort_of_clevr\ntrain: {epochs: three}\n", [], r"'train.epochs' must be a int"),
        ("task: sort_of_clevr\ntrain: {epochs: 2.5}\n", [], r"'train.epochs' must be a int"),
        ("task: sort_of_clevr\nmodel: {g_units: 8}\n", [], r"'model.g_units' must be a list of int"),
        ("task: sort_of_clevr\nmodel: {type: cnn}\n", [], r"'model.type' must be one of \['rn', 'mlp'\]"),
        ("task: nope\n", [], r"unknown task 'nope'"),
        ("model: {}\n", [], r"required key 'task'"),
        ("task: sort_of_clevr\nextra: 1\n", [], r"unknown key 'extra'"),
        ("task: sort_of_clevr\n", ["train.epoch=3"], r"unknown key 'train.epoch'"),
        ("task: sort_of_clevr\n", ["train.epochs"], r"expected KEY=VALUE"),
        ("task: sort_of_clevr\ntrain: [1, 2]\n", [], r"'train' must be a mapping"),
        ("task: [sort_of_clevr\n", [], r"not valid YAML"),
        ("task: sort_of_clevr\ntrain: {lr_multipliers: 0.2}\n", [], r"'train.lr_multipliers' must be a mapping"),
        ("task: sort_of_clevr\n", ["train.lr_multipliers.cnn=fast"], r"'train.lr_multipliers.cnn' must be a float"),
    ],
)
def test_errors_name_the_key_and_file(tmp_path, text, overrides, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        config_lib.load(path, overrides)
    assert path in str(info.value) or "--set" in str(info.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        config_lib.load("/nonexistent/config.yaml")


def test_shipped_configs_load():
    import glob
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = glob.glob(os.path.join(root, "configs", "*.yaml"))
    assert paths
    for path in paths:
        config_lib.load(path)


def test_save_round_trip(tmp_path):
    config = config_lib.load(_write(tmp_path, "task: sort_of_clevr\nmodel: {g_units: [3]}\n"))
    config_lib.save(config, str(tmp_path / "copy.yaml"))
    again = config_lib.load(str(tmp_path / "copy.yaml"))
    assert config_lib.to_dict(again) == config_lib.to_dict(config)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=0", r"'train.batch_size' must be greater than 0, got 0"),
        ("train.epochs=-1", r"'train.epochs' must be greater than 0, got -1"),
        ("train.learning_rate=-1e-3", r"'train.learning_rate' must be greater than 0"),
        ("train.lr_min_fraction=1.5", r"'train.lr_min_fraction' must be at most 1.0"),
        ("train.eval_every_steps=0", r"'train.eval_every_steps' must be greater than 0"),
        ("train.time_limit_minutes=0", r"'train.time_limit_minutes' must be greater than 0"),
        ("model.g_units=[8, 0]", r"'model.g_units' must be greater than 0, got \[8, 0\]"),
        ("model.g_units=[]", r"'model.g_units' needs at least one value"),
        ("model.dropout=1.0", r"'model.dropout' must be less than 1.0"),
        ("data.train_images=0", r"'data.train_images' must be greater than 0"),
        ("seed=-1", r"'seed' must be at least 0"),
        ("seed=4294967296", r"'seed' must be at most 2147483647"),
        ("data.seed=-3", r"'data.seed' must be at least 0"),
        ("data.test_seed=0", r"'data.test_seed' must differ from 'data.seed' \(both 0\)"),
        ("data.min_distance_gap=30", r"'data.min_distance_gap' must be at most 6.0"),
        ("data.group_questions=3", r"'data.group_questions' must divide the 20 questions"),
        ("train.eval_splits=[val, tset]", r"'train.eval_splits' names \['tset'\], which task 'sort_of_clevr' does not"),
        ("train.keep_best=acuracy", r"'train.keep_best' \('acuracy'\) is not a validation metric of task "
                                    r"'sort_of_clevr' with this config; its metrics are: accuracy, non_relational"),
    ],
)
def test_out_of_range_values_are_refused_when_the_config_loads(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.load(_write(tmp_path, "task: sort_of_clevr\n"), [override])


@pytest.mark.parametrize("text, override, message", [
    ("task: nth_farthest\n", "data.test_seed=1000001", r"'data.val_seed' and 'data.test_seed' must differ"),
    ("task: babi\n", "data.split_seed=-1", r"'data.split_seed' must be at least 0"),
    ("task: physics\n", "data.seed=-1", r"'data.seed' must be at least 0"),
])
def test_seeds_of_every_task_are_checked_when_the_config_loads(tmp_path, text, override, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.load(_write(tmp_path, text), [override])


def test_an_unsatisfiable_distance_gap_fails_fast_instead_of_looping():
    import time

    from relation_networks.data import sort_of_clevr as soc

    start = time.perf_counter()
    with pytest.raises(ValueError, match="min_distance_gap=40 px: lower it"):
        soc.generate(1, seed=0, min_distance_gap=40)
    assert time.perf_counter() - start < 120


def test_unset_optional_bounded_values_pass(tmp_path):
    config = config_lib.load(_write(tmp_path, "task: sort_of_clevr\ntrain: {max_steps: null}\n"))
    assert config.train.max_steps is None and config.train.eval_every_steps is None


def test_config_module_does_not_import_the_tasks():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(config_lib))
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [name for name in imported if name and "tasks" in name]
    assert not [alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names if alias.name == "tasks"]


def test_train_tool_refuses_a_bad_value_before_any_data_is_made(tmp_path):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data_dir = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, os.path.join(root, "tools", "train.py"), "--config",
         os.path.join(root, "configs", "sort_of_clevr.yaml"), "--set", "train.batch_size=0",
         "--set", f"data.dir={data_dir}", "--run_dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "'train.batch_size' must be greater than 0" in result.stderr
    assert "Traceback" not in result.stderr
    assert not data_dir.exists() and not (tmp_path / "run").exists()
