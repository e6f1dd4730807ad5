"""What saved_models/ ships: for every model, the TF Serving layout, a model card that says how to reproduce its
number, and a config that loads anywhere (no absolute path)."""

import glob
import json
import os

import pytest

from conftest import ROOT
from relation_networks import config as config_lib

SHIPPED = sorted(glob.glob(os.path.join(ROOT, "saved_models", "*", "[0-9]*")))


def test_every_trainable_task_ships_a_model():
    tasks = set()
    for path in SHIPPED:
        with open(os.path.join(path, "signature.json")) as f:
            tasks.add(json.load(f)["task"])
    assert {"sort_of_clevr", "babi", "physics", "nth_farthest"} <= tasks


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: os.path.relpath(p, os.path.join(ROOT, "saved_models")))
def test_a_shipped_model_has_its_card_and_a_portable_config(path):
    for name in ("saved_model.pb", "model.tflite", "config.yaml", "signature.json", "example_request.json",
                 "MODEL_CARD.md"):
        assert os.path.exists(os.path.join(path, name)), name
    config = config_lib.load(os.path.join(path, "config.yaml"))
    assert config_lib.to_dict(config)["run_dir"] is None or not os.path.isabs(config.run_dir)
    assert not os.path.isabs(getattr(config.data, "dir", "") or "")
    with open(os.path.join(path, "MODEL_CARD.md")) as f:
        card = f.read()
    relative = os.path.relpath(path, ROOT)
    assert f"python tools/evaluate.py --model {relative}" in card
    assert "minutes of training" in card and ("| test" in card or "| val" in card)
