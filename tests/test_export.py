"""Export round trip (SavedModel + TFLite) for every task, signature names, request validation, atomicity."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_tool, tiny_sort_of_clevr_overrides


@pytest.fixture(scope="module")
def sort_of_clevr_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    run_dir = str(base / "run")
    # With the CNN conditioned on the question (model.film_layers), the export carries the question into the CNN.
    args = ["--config", "configs/sort_of_clevr.yaml", "--set", "train.epochs=1", "--set", "train.eval_splits=[]",
            "--set", "model.film_layers=[0]"]
    for o in tiny_sort_of_clevr_overrides(str(base / "data"), run_dir):
        args += ["--set", o]
    result = run_tool("train", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, base


@pytest.fixture(scope="module")
def exported(sort_of_clevr_run):
    run_dir, base = sort_of_clevr_run
    out = str(base / "saved_models")
    doc = str(base / "SERVING.md")
    result = run_tool("export", "--run", run_dir, "--out", out, "--version", "3", "--serving_doc", doc)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parity" in result.stdout
    return os.path.join(out, "sort_of_clevr", "3"), doc


def test_layout_and_signature_names(exported):
    path, doc = exported
    for name in ("saved_model.pb", "variables", "model.tflite", "model_quant.tflite", "config.yaml",
                 "signature.json", "example_request.json"):
        assert os.path.exists(os.path.join(path, name)), name
    with open(os.path.join(path, "signature.json")) as f:
        signature = json.load(f)
    assert signature["inputs"] == {"image": {"shape": [None, 75, 75, 3], "dtype": "uint8"},
                                   "question": {"shape": [None, 11], "dtype": "float32"}}
    assert signature["outputs"] == ["answer", "answer_id", "logits", "probabilities"]
    assert all(c["ok"] for c in signature["parity"]["checks"])
    with open(doc) as f:
        text = f.read()
    assert "sort_of_clevr" in text and '"instances"' in text and "tensorflow_model_server" in text


def test_saved_model_runs_without_project_code(exported):
    path, _ = exported
    code = (
        "import json, sys, numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({path!r})\n"
        "f = m.signatures['serving_default']\n"
        "assert 'relation_networks' not in sys.modules\n"
        f"req = json.load(open({os.path.join(path, 'example_request.json')!r}))['instances'][0]\n"
        "out = f(image=tf.constant([req['image']], tf.uint8), question=tf.constant([req['question']], tf.float32))\n"
        "print(sorted(out), out['probabilities'].shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "['answer', 'answer_id', 'logits', 'probabilities'] (1, 12)" in result.stdout


def test_saved_model_cli_lists_the_signature(exported):
    path, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(cli):
        pytest.skip("saved_model_cli not installed next to this Python")
    result = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("serving_default", "image", "question", "probabilities", "answer_id"):
        assert name in result.stdout


@pytest.mark.parametrize("model_file", ["", "model.tflite", "model_quant.tflite"])
def test_predict_tool_matches_keras(exported, sort_of_clevr_run, model_file, tmp_path):
    path, _ = exported
    import keras

    import relation_networks  # noqa: F401  (registers the custom layers for load_model)

    request_path = os.path.join(path, "example_request.json")
    result = run_tool("predict", "--model", os.path.join(path, model_file) if model_file else path,
                      "--input", request_path)
    assert result.returncode == 0, result.stderr[-2000:]
    prediction = json.loads(result.stdout)["predictions"][0]
    with open(request_path) as f:
        instance = json.load(f)["instances"][0]
    model = keras.models.load_model(os.path.join(sort_of_clevr_run[0], "model.keras"))
    logits = model({"image": np.array([instance["image"]], np.uint8),
                    "question": np.array([instance["question"]], np.float32)}).numpy()
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    tolerance = 0.1 if "quant" in model_file else 1e-4
    np.testing.assert_allclose(prediction["probabilities"], probabilities[0], atol=tolerance)
    assert prediction["answer"] in ("square", "circle", "left", "right", "top", "bottom", "1", "2", "3", "4", "5", "6")


@pytest.mark.parametrize(
    "request_body, message",
    [
        ({"instances": [{"image": [[0] * 3] * 75, "question": [0] * 11}]}, "'image': each example must have shape (75, 75, 3)"),
        ({"instances": [{"question": [0] * 11}]}, "missing ['image']"),
        ({"instances": [{"image": np.zeros((75, 75, 3)).tolist(), "question": ["a"] * 11}]}, "'question': expected numbers"),
        ({"instances": [{"image": np.full((75, 75, 3), 300).tolist(), "question": [0] * 11}]}, "outside [0, 255]"),
        ({"instances": [{"image": np.full((75, 75, 3), 0.5).tolist(), "question": [0] * 11}]}, "fractional"),
        ({"rows": []}, '"instances"'),
    ],
)
def test_predict_rejects_bad_requests(exported, request_body, message, tmp_path):
    path, _ = exported
    request = tmp_path / "bad.json"
    request.write_text(json.dumps(request_body))
    for model in (path, os.path.join(path, "model.tflite")):
        result = run_tool("predict", "--model", model, "--input", str(request))
        assert result.returncode == 2, result.stderr[-2000:]
        assert message in result.stderr and "Traceback" not in result.stderr


def test_failed_export_leaves_nothing(sort_of_clevr_run, tmp_path):
    from relation_networks import export

    run_dir, _ = sort_of_clevr_run
    out = tmp_path / "saved_models"
    with pytest.raises(export.ExportError, match="refused"):
        export.export(run_dir, str(out), version=1, parity_examples=8, float_tolerance=-1.0, log=lambda *_: None)
    assert not (out / "sort_of_clevr" / "1").exists()
    assert [p for p in (out / "sort_of_clevr").iterdir()] == []  # no temporary directory left behind


def test_existing_version_is_not_overwritten(exported, sort_of_clevr_run):
    path, _ = exported
    from relation_networks import export

    before = sorted(os.listdir(path))
    with pytest.raises(export.ExportError, match="already exists"):
        export.export(sort_of_clevr_run[0], os.path.dirname(os.path.dirname(path)), version=3)
    assert sorted(os.listdir(path)) == before


def test_tools_on_a_question_conditioned_cnn(sort_of_clevr_run, tmp_path):
    run_dir, _ = sort_of_clevr_run  # trained with model.film_layers=[0]
    result = run_tool("visualize", "--model", run_dir, "--num", "1", "--out", str(tmp_path / "vis"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert any(name.endswith(".png") for name in os.listdir(tmp_path / "vis"))
    result = run_tool("probe_objects", "--run", run_dir, "--images", "10")
    assert result.returncode == 2
    assert "conditioned on the question" in result.stderr and "Traceback" not in result.stderr


def test_a_quantised_model_that_changes_answers_is_left_out_and_the_float_export_kept(sort_of_clevr_run, tmp_path):
    from relation_networks import export

    run_dir, _ = sort_of_clevr_run
    lines = []
    path = export.export(run_dir, str(tmp_path / "out"), version=1, parity_examples=8,
                         quantized_min_agreement=1.01, log=lines.append)  # no quantised model can agree that well
    assert not os.path.exists(os.path.join(path, "model_quant.tflite"))
    for name in ("saved_model.pb", "model.tflite", "config.yaml", "signature.json"):
        assert os.path.exists(os.path.join(path, name)), name
    assert not os.path.exists(os.path.join(path, "MODEL_CARD.md"))  # the library writes no card unless asked
    assert any("model_quant.tflite left out" in line for line in lines)
    with open(os.path.join(path, "signature.json")) as f:
        signature = json.load(f)
    quantised = [c for c in signature["parity"]["checks"] if c["format"] == "model_quant.tflite"]
    assert len(quantised) == 1 and not quantised[0]["ok"] and "model_quant.tflite" not in signature["files"]


def test_noquantized_flag_skips_the_quantised_model(sort_of_clevr_run, tmp_path):
    run_dir, _ = sort_of_clevr_run
    result = run_tool("export", "--run", run_dir, "--out", str(tmp_path / "out"), "--version", "1",
                      "--noquantized", "--parity_examples", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    path = tmp_path / "out" / "sort_of_clevr" / "1"
    assert (path / "model.tflite").exists() and not (path / "model_quant.tflite").exists()


def test_the_shipped_config_holds_no_absolute_path_and_the_card_says_how_to_reproduce(exported):
    path, _ = exported
    with open(os.path.join(path, "config.yaml")) as f:
        text = f.read()
    assert "dir: /" not in text and "run_dir: null" in text
    with open(os.path.join(path, "MODEL_CARD.md")) as f:
        card = f.read()
    assert f"python tools/evaluate.py --model {os.path.dirname(os.path.dirname(os.path.dirname(path)))}" in card
    assert "minutes of training" in card and "Training command (its last stage): `" in card


def test_init_from_an_exported_model_or_a_run_sets_every_weight_and_a_mismatch_is_one_error(exported, sort_of_clevr_run):
    import keras

    from relation_networks import config as config_lib
    from relation_networks import checkpointing, tasks
    from relation_networks.errors import UserError

    path, _ = exported
    run_dir, _ = sort_of_clevr_run
    trained = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    config = config_lib.load(os.path.join(run_dir, "config.yaml"))
    task = tasks.get("sort_of_clevr")
    for source in (path, run_dir):  # an exported SavedModel, a run directory (its model.keras)
        keras.utils.set_random_seed(1)
        model = task.model_from_config(config)
        assert checkpointing.initialize_from(model, source) == len(model.variables)
        for mine, theirs in zip(model.variables, trained.variables):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)
    config.model.g_units = [12, 8]  # another model: nothing is set, one error names the variable
    other = task.model_from_config(config)
    before = [v.numpy().copy() for v in other.variables]
    with pytest.raises(UserError, match=r"does not hold this model's variables \(shape relation_module/g_theta_0"):
        checkpointing.initialize_from(other, path)
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, other.variables))
    with pytest.raises(UserError, match="neither an exported model directory"):
        checkpointing.initialize_from(other, os.path.dirname(path) + "/nothing-here")
