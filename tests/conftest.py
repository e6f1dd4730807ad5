import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from tool_runner import run_tool  # noqa: E402,F401  (the tests' way to run a tool as its own process)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))  # the tools' helpers and `reproduce` for the tests
sys.path.insert(0, os.path.join(ROOT, "tools", "diagnostics"))  # the diagnostics' helpers (`_probes`)


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts and ends with the float32 policy and fixed seeds."""
    import keras

    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


def tiny_sort_of_clevr_overrides(data_dir, run_dir=None, model_type="rn"):
    """`--set` overrides that shrink the Sort-of-CLEVR config to a few seconds of work."""
    overrides = [
        f"data.dir={data_dir}",
        "data.train_images=48",
        "data.val_images=8",
        "data.test_images=8",
        f"model.type={model_type}",
        "model.conv_filters=[4,4,4,4]",
        "model.g_units=[8,8]",
        "model.f_units=[8]",
        "train.epochs=2",
        "train.batch_size=32",
        "train.warmup_steps=2",
        "train.log_every_steps=5",
        "train.checkpoint_every_steps=10",
        "train.precision=float32",
        "train.bn_recalibration_batches=0",  # the final model is the last checkpoint's; tests of it turn it on
    ]
    if run_dir:
        overrides.append(f"run_dir={run_dir}")
    return overrides
