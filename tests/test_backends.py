"""The layers under Keras's JAX backend: same outputs as under TensorFlow for the same weights, and the one
TensorFlow-only option (`RelationModule(pair_chunk_size=...)`) refused with a clear message.

Each backend runs in its own process (Keras picks its backend once, at import)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Builds every layer with fixed weights (seeded NumPy, set through set_weights) on fixed inputs; prints the outputs.
PROGRAM = r"""
import json, sys
import numpy as np
import keras
from relation_networks.layers import ConvObjectExtractor, RelationalMemory, RelationModule, SentenceObjects

rng = np.random.default_rng(0)
objects = rng.normal(size=(2, 5, 4)).astype("float32")
question = rng.normal(size=(2, 3)).astype("float32")
images = rng.uniform(size=(2, 16, 16, 3)).astype("float32")
sequence = rng.normal(size=(2, 4, 6)).astype("float32")
tokens = rng.integers(0, 10, size=(2, 3, 5)).astype("int32")

def seeded(layer, *inputs, **kwargs):
    layer(*inputs, **kwargs)
    layer.set_weights([rng.normal(scale=0.3, size=w.shape).astype("float32") for w in layer.get_weights()])
    return np.asarray(layer(*inputs, **kwargs), "float32").tolist()

out = {
    "relation_module": seeded(RelationModule([8, 8], [8, 3], aggregation="mean+max"), objects, question=question),
    "conv_objects": seeded(ConvObjectExtractor([4, 4], norm_order="relu_bn"), images, training=False),
    "relational_memory": seeded(keras.layers.RNN(RelationalMemory(mem_slots=2, head_size=4, num_heads=2)), sequence),
}
layer = SentenceObjects(10, 4, 6)
layer(tokens)
layer.set_weights([rng.normal(scale=0.3, size=w.shape).astype("float32") for w in layer.get_weights()])
out["sentence_objects"] = np.asarray(layer(tokens)[0], "float32").tolist()
try:
    RelationModule([8], [3], pair_chunk_size=2)
    out["chunk_error"] = None
except ValueError as e:
    out["chunk_error"] = str(e)
out["backend"] = keras.backend.backend()
print("RESULT " + json.dumps(out))
"""


def _run(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def outputs():
    return {backend: _run(backend) for backend in ("tensorflow", "jax")}


@pytest.mark.parametrize("layer", ["relation_module", "conv_objects", "relational_memory", "sentence_objects"])
def test_layer_gives_the_same_outputs_under_jax_as_under_tensorflow(outputs, layer):
    assert outputs["jax"]["backend"] == "jax"
    np.testing.assert_allclose(np.array(outputs["jax"][layer]), np.array(outputs["tensorflow"][layer]),
                               rtol=1e-4, atol=1e-4)


def test_pair_chunks_refused_clearly_under_jax_and_allowed_under_tensorflow(outputs):
    assert outputs["tensorflow"]["chunk_error"] is None
    message = outputs["jax"]["chunk_error"]
    assert "TensorFlow backend" in message and "'jax'" in message and "KERAS_BACKEND=tensorflow" in message
