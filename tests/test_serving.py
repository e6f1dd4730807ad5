"""Requests and responses in TF Serving's REST format (relation_networks.serving, tools/predict.py): every bad
request is one clear error, responses have TF Serving's shape, large requests run in batches, and exported files
are readable by other accounts."""

import json
import os
import stat

import numpy as np
import pytest

from conftest import ROOT, run_tool
from relation_networks import serving
from relation_networks.io import atomic_directory, atomic_write_text

SPECS = {"context": {"shape": [None, 2, 3], "dtype": "int32"}, "scale": {"shape": [None, 2], "dtype": "float32"}}
BOUNDS = {"context": (0, 9)}
GOOD = {"context": [[1, 2, 3], [4, 5, 6]], "scale": [0.5, 1.5]}


def _instances(*examples):
    return {"instances": [dict(GOOD, **e) for e in examples]}


def test_row_and_columnar_requests_give_the_same_batched_features():
    rows, form = serving.parse_request(_instances({}, {"scale": [2.0, 3.0]}), SPECS, BOUNDS)
    assert form == "row" and rows["context"].dtype == np.int32 and rows["context"].shape == (2, 2, 3)
    columns, form = serving.parse_request(
        {"inputs": {"context": [GOOD["context"]] * 2, "scale": [[0.5, 1.5], [2.0, 3.0]]}}, SPECS, BOUNDS)
    assert form == "columnar"
    for name in SPECS:
        np.testing.assert_array_equal(rows[name], columns[name])


@pytest.mark.parametrize("request_body, message", [
    (_instances({"scale": [float("nan"), 1.0]}), "'scale': example 0 holds NaN or infinite values"),
    (_instances({}, {"scale": [1.0, float("inf")]}), "'scale': example 1 holds NaN or infinite values"),
    (_instances({}, {"context": [[1, 2, 3], [4, -5, 6]]}), "'context': example 1 has token ids outside [0, 9]"),
    (_instances({"context": [[1, 2, 3], [4, 10, 6]]}), "'context': example 0 has token ids outside [0, 9] (e.g. 10)"),
    ({"inputs": {"context": [GOOD["context"]] * 2, "scale": [GOOD["scale"]] * 3}}, "different numbers of examples"),
    ({"instances": [GOOD], "inputs": {}}, 'both "instances" and "inputs"'),
    ({"instances": [GOOD], "signature_name": "other"}, "Unknown signature_name 'other'"),
    (_instances({"context": [[1, 2], [3, 4, 5]]}), "ragged or malformed"),
])
def test_bad_requests_are_one_clear_error(request_body, message):
    with pytest.raises(serving.RequestError) as error:
        serving.parse_request(request_body, SPECS, BOUNDS)
    assert message in str(error.value)


def test_responses_have_tf_servings_shape():
    outputs = {"answer": np.array([b"square", b"circle"], dtype=object), "answer_id": np.array([0, 1], np.int32),
               "probabilities": np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)}
    rows = serving.make_response(outputs, "row")
    assert rows == {"predictions": [
        {"answer": "square", "answer_id": 0, "probabilities": [pytest.approx(0.9), pytest.approx(0.1)]},
        {"answer": "circle", "answer_id": 1, "probabilities": [pytest.approx(0.2), pytest.approx(0.8)]}]}
    columns = serving.make_response(outputs, "columnar")
    assert columns["outputs"]["answer"] == ["square", "circle"] and columns["outputs"]["answer_id"] == [0, 1]
    # A model with one output: the bare values, as TF Serving answers.
    assert serving.make_response({"y": np.array([1.0, 2.0])}, "row") == {"predictions": [1.0, 2.0]}
    assert serving.make_response({"y": np.array([1.0, 2.0])}, "columnar") == {"outputs": [1.0, 2.0]}


def test_large_requests_run_in_batches_of_the_given_size():
    seen = []

    def runner(features):
        seen.append(len(features["x"]))
        return {"y": features["x"] * 2}

    out = serving.run_in_batches(runner, {"x": np.arange(1000)}, batch_size=256)
    assert seen == [256, 256, 256, 232]
    np.testing.assert_array_equal(out["y"], np.arange(1000) * 2)


BABI = os.path.join(ROOT, "saved_models", "babi", "3")


def _babi_request(tmp_path, edit=None, key="instances"):
    with open(os.path.join(BABI, "example_request.json")) as f:
        request = json.load(f)
    if edit:
        edit(request["instances"][0])
    if key == "inputs":
        request = {"inputs": {k: [i[k] for i in request["instances"]] for k in request["instances"][0]}}
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    return str(path)


def test_predict_answers_a_shipped_babi_model_in_tf_servings_format(tmp_path):
    result = run_tool("predict", "--model", BABI, "--input", _babi_request(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    prediction = json.loads(result.stdout)["predictions"][0]
    assert set(prediction) >= {"answer", "answer_id", "logits", "probabilities"}
    with open(os.path.join(BABI, "vocab.json")) as f:
        assert prediction["answer"] == json.load(f)["answers"][prediction["answer_id"]]
    result = run_tool("predict", "--model", BABI, "--input", _babi_request(tmp_path, key="inputs"),
                      "--out", str(tmp_path / "response.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    columns = json.loads((tmp_path / "response.json").read_text())["outputs"]
    assert columns["answer_id"] == [prediction["answer_id"]] and columns["answer"] == [prediction["answer"]]


def _set_first_token(value):
    def edit(instance):
        instance["question"][-1] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set_first_token(-1), "'question': example 0 has token ids outside [0, "),
    (_set_first_token(100_000), "'question': example 0 has token ids outside [0, "),
])
def test_predict_refuses_token_ids_outside_the_vocabulary(tmp_path, edit, message):
    for model in (BABI, os.path.join(BABI, "model.tflite")):
        result = run_tool("predict", "--model", model, "--input", _babi_request(tmp_path, edit))
        assert result.returncode == 2, result.stdout[-1000:]
        assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flags, message", [
    (["--batch_size", "0"], "--batch_size must be a positive number"),
    (["--out", "/proc/no-such-dir/response.json"], "Cannot write /proc/no-such-dir/response.json"),
])
def test_predict_flags_are_checked(tmp_path, flags, message):
    result = run_tool("predict", "--model", BABI, "--input", _babi_request(tmp_path), *flags)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_outputs_renamed_into_place_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_text(str(tmp_path / "file.txt"), "x")
        with atomic_directory(str(tmp_path / "export")) as tmp:
            os.makedirs(os.path.join(tmp, "variables"))
            atomic_write_text(os.path.join(tmp, "variables", "data"), "y")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "file.txt").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "export").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "export" / "variables").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "export" / "variables" / "data").st_mode) == 0o644
