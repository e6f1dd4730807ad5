"""RelationalMemory cell and the Nth-farthest task."""

import os

import numpy as np
import pytest
import keras

import _probes
from conftest import ROOT, run_tool
from relation_networks import RelationalMemory, tasks
from relation_networks.layers.relational_memory import FanInTruncatedNormal
from relation_networks import config as config_lib
from relation_networks.data import nth_farthest as nf
from relation_networks.tasks.nth_farthest import NthFarthestData


def _run(cell, x, return_sequences=False):
    return keras.layers.RNN(cell, return_sequences=return_sequences)(x)


@pytest.mark.parametrize("gate_style", ["unit", "memory", None])
@pytest.mark.parametrize("num_heads, num_blocks", [(1, 1), (2, 2)])
def test_shapes_in_rnn(gate_style, num_heads, num_blocks):
    cell = RelationalMemory(mem_slots=3, head_size=4, num_heads=num_heads, num_blocks=num_blocks, gate_style=gate_style)
    x = np.random.default_rng(0).normal(size=(2, 5, 7)).astype("float32")
    width = 3 * 4 * num_heads
    assert _run(cell, x).shape == (2, width)
    assert _run(cell, x, return_sequences=True).shape == (2, 5, width)
    out, state = keras.layers.RNN(cell, return_state=True)(x)
    np.testing.assert_allclose(out.numpy(), state.numpy())  # the output is the flattened memory


def test_initial_state_is_identity_padded_or_truncated():
    padded = RelationalMemory(mem_slots=2, head_size=3).get_initial_state(batch_size=1)[0].numpy()
    np.testing.assert_array_equal(padded.reshape(2, 3), [[1, 0, 0], [0, 1, 0]])
    truncated = RelationalMemory(mem_slots=4, head_size=2).get_initial_state(batch_size=2)[0].numpy()
    np.testing.assert_array_equal(truncated[1].reshape(4, 2), [[1, 0], [0, 1], [0, 0], [0, 0]])


def test_gating_forget_bias_keeps_memory():
    # With a huge forget bias and a hugely negative input bias the gates are ~(0, 1): memory is carried over.
    cell = RelationalMemory(mem_slots=2, head_size=3, forget_bias=50.0, input_bias=-50.0)
    x = np.random.default_rng(1).normal(size=(1, 4, 5)).astype("float32")
    out = _run(cell, x).numpy()
    np.testing.assert_allclose(out, cell.get_initial_state(1)[0].numpy(), atol=1e-5)
    # With gate_style=None the memory is replaced by the attended memory.
    ungated = RelationalMemory(mem_slots=2, head_size=3, gate_style=None)
    assert not np.allclose(_run(ungated, x).numpy(), ungated.get_initial_state(1)[0].numpy(), atol=1e-2)


def test_memory_rows_interact():
    # A change in the input of one time step changes every slot of the final memory (attention mixes rows).
    cell = RelationalMemory(mem_slots=4, head_size=8, num_heads=2)
    rnn = keras.layers.RNN(cell)
    x = np.random.default_rng(2).normal(size=(1, 6, 5)).astype("float32")
    y = x.copy()
    y[0, 2] += 1.0
    a = rnn(x).numpy().reshape(4, 16)
    b = rnn(y).numpy().reshape(4, 16)
    assert np.all(np.abs(a - b).max(axis=1) > 1e-4)


def _layer_norm(x, layer):
    gamma, beta = layer.get_weights()
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + layer.epsilon) * gamma + beta


def _dense(x, layer):
    kernel, bias = layer.get_weights()
    return x @ kernel + bias


@pytest.mark.parametrize("gate_style", ["unit", "memory"])
def test_one_step_matches_an_independent_numpy_computation(gate_style):
    """One step against NumPy: [memory; input] rows, per head queries | keys | values (keys 3 wide, values 4) and a
    softmax over the rows, residual + layer norm, MLP + residual + layer norm, the input row dropped, gates."""
    slots, heads, key, value = 3, 2, 3, 4
    cell = RelationalMemory(slots, value, num_heads=heads, key_size=key, gate_style=gate_style, input_bias=0.5,
                            qkv_norm=False)
    rng = np.random.default_rng(5)
    x, state = rng.normal(size=(2, 5)).astype("float32"), rng.normal(size=(2, slots * heads * value)).astype("float32")
    out, _ = cell(x, [state])
    memory = state.reshape(2, slots, heads * value)
    projected = _dense(x, cell.input_projection)[:, None]
    rows = np.concatenate([memory, projected], axis=1)
    block = cell.blocks[0]
    qkv = _dense(rows, block["qkv"]).reshape(2, slots + 1, heads, 2 * key + value)
    q, k, v = qkv[..., :key] / np.sqrt(key), qkv[..., key:2 * key], qkv[..., 2 * key:]
    logits = np.einsum("brhk,bshk->bhrs", q, k)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    attended = np.einsum("bhrs,bshv->brhv", weights, v).reshape(2, slots + 1, heads * value)
    rows = _layer_norm(rows + attended, block["attention_norm"])
    hidden = _dense(np.maximum(_dense(rows, block["mlp"][0]), 0), block["mlp"][1])
    rows = _layer_norm(rows + hidden, block["mlp_norm"])[:, :slots]
    gates = _dense(np.tanh(memory), cell.memory_gates) + _dense(projected, cell.input_gates)
    input_gate, forget_gate = np.split(gates, 2, axis=-1)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    expected = sigmoid(input_gate + 0.5) * np.tanh(rows) + sigmoid(forget_gate + 1.0) * memory
    np.testing.assert_allclose(out.numpy(), expected.reshape(2, -1), rtol=1e-4, atol=1e-5)


def test_sonnet_settings_one_two_block_step_in_numpy():
    """Sonnet's choices: q/k/v layer norm, one attention MLP for both blocks, layer-norm epsilon 1e-5 -- one step
    of two blocks against NumPy, the same MLP weights applied in each block."""
    slots, heads, size = 2, 2, 3
    cell = RelationalMemory(slots, size, num_heads=heads, num_blocks=2, qkv_norm=True, shared_attention_mlp=True,
                            layer_norm_epsilon=1e-5, kernel_initializer="sonnet", gate_style=None)
    rng = np.random.default_rng(7)
    x, state = rng.normal(size=(2, 4)).astype("float32"), rng.normal(size=(2, slots * heads * size)).astype("float32")
    out, _ = cell(x, [state])
    assert cell.blocks[0]["mlp"] is cell.blocks[1]["mlp"]
    assert len([w for w in cell.weights if "mlp_0" in w.path]) == 2  # one kernel and one bias, not one per block
    rows = np.concatenate([state.reshape(2, slots, heads * size), _dense(x, cell.input_projection)[:, None]], axis=1)
    for block in cell.blocks:
        qkv = _layer_norm(_dense(rows, block["qkv"]), block["qkv_norm"]).reshape(2, slots + 1, heads, 3 * size)
        q, k, v = qkv[..., :size] / np.sqrt(size), qkv[..., size:2 * size], qkv[..., 2 * size:]
        logits = np.einsum("brhk,bshk->bhrs", q, k)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        attended = np.einsum("bhrs,bshv->brhv", weights, v).reshape(2, slots + 1, heads * size)
        assert block["attention_norm"].epsilon == 1e-5
        rows = _layer_norm(rows + attended, block["attention_norm"])
        rows = _layer_norm(rows + _dense(np.maximum(_dense(rows, block["mlp"][0]), 0), block["mlp"][1]),
                           block["mlp_norm"])
    np.testing.assert_allclose(out.numpy(), rows[:, :slots].reshape(2, -1), rtol=1e-4, atol=1e-5)


def test_sonnet_initializer_is_a_truncated_normal_of_std_one_over_sqrt_fan_in():
    values = FanInTruncatedNormal(seed=1)((400, 300)).numpy()
    assert np.abs(values).max() <= 2 / np.sqrt(400) + 1e-6
    # a normal truncated at two standard deviations keeps 0.88 of its standard deviation
    assert values.std() == pytest.approx(0.8796 / np.sqrt(400), rel=0.02)


def test_config_round_trip_and_saving(tmp_path):
    cell = RelationalMemory(mem_slots=2, head_size=4, num_heads=2, num_blocks=2, gate_style="memory",
                            attention_mlp_layers=3, key_size=5, forget_bias=0.5, input_bias=0.1,
                            shared_attention_mlp=True, layer_norm_epsilon=1e-5, kernel_initializer="sonnet")
    clone = RelationalMemory.from_config(cell.get_config())
    assert clone.get_config() == cell.get_config()
    inputs = keras.Input((3, 6))
    model = keras.Model(inputs, keras.layers.RNN(cell)(inputs))
    path = str(tmp_path / "rmc.keras")
    model.save(path)
    x = np.random.default_rng(3).normal(size=(2, 3, 6)).astype("float32")
    np.testing.assert_allclose(keras.models.load_model(path)(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("qkv_norm", [True, False])
def test_qkv_norm_makes_attention_independent_of_the_projections_scale(qkv_norm):
    # Sonnet layer-normalises the projected queries, keys and values: scaling the projection then changes nothing.
    cell = RelationalMemory(mem_slots=3, head_size=4, num_heads=2, qkv_norm=qkv_norm)
    rnn = keras.layers.RNN(cell)
    x = np.random.default_rng(4).normal(size=(2, 5, 6)).astype("float32")
    before = rnn(x).numpy()
    qkv = cell.blocks[0]["qkv"]
    qkv.kernel.assign(qkv.kernel * 7.0)
    qkv.bias.assign(qkv.bias * 7.0)
    change = np.abs(rnn(x).numpy() - before).max()
    assert change < 1e-3 if qkv_norm else change > 0.05
    assert any("qkv_norm" in w.path for w in cell.weights) == qkv_norm


def test_a_layer_saved_before_qkv_norm_loads_without_it():
    config = RelationalMemory(mem_slots=2, head_size=4).get_config()
    assert config["qkv_norm"] is True  # Sonnet's behaviour is the default
    del config["qkv_norm"]
    assert RelationalMemory.from_config(config).qkv_norm is False
    assert RelationalMemory.from_config({**config, "qkv_norm": True}).qkv_norm is True


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(mem_slots=0, head_size=4), "mem_slots"), (dict(mem_slots=2, head_size=4, gate_style="slot"), "gate_style"),
     (dict(mem_slots=2, head_size=4, num_heads=0), "num_heads"), (dict(mem_slots=2, head_size=4, key_size=0), "key_size"),
     (dict(mem_slots=2.0, head_size=4), "mem_slots"), (dict(mem_slots=2, head_size=4, key_size=True), "key_size"),
     (dict(mem_slots=2, head_size=4, qkv_norm="yes"), "qkv_norm")],
)
def test_argument_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RelationalMemory(**kwargs)


def test_numpy_integer_arguments_give_a_plain_config():
    """Sizes computed with NumPy (e.g. from a data set's shape) are accepted and stored as plain ints."""
    cell = RelationalMemory(mem_slots=np.int64(2), head_size=np.int32(3), num_heads=np.int64(2))
    config = cell.get_config()
    assert (config["mem_slots"], config["head_size"], config["key_size"]) == (2, 3, 3)
    assert all(type(config[k]) is int for k in ("mem_slots", "head_size", "num_heads", "key_size"))
    assert cell.state_size == cell.output_size == 12


def test_sonnets_ranking_counts_from_the_nearest_with_the_reference_first():
    """`ranking="nearest_with_reference"`, recomputed sample by sample: rank 0 asks for m itself, rank k for the
    k-th nearest other vector; the rank one-hot is k."""
    from relation_networks.data import nth_farthest as nf

    data = nf.generate(400, 3, num_vectors=5, vector_dim=3, ranking="nearest_with_reference")
    assert set(data["rank"]) == {0, 1, 2, 3, 4}
    for s in range(400):
        m, k = data["reference"][s], data["rank"][s]
        distances = [float(np.sqrt(np.sum((data["vectors"][s, j] - data["vectors"][s, m]) ** 2))) for j in range(5)]
        others = sorted((d, j) for j, d in enumerate(distances) if j != m)
        expected = m if k == 0 else others[k - 1][1]
        assert data["answers"][s] == data["ids"][s, expected]
        assert data["inputs"][s, 0, 3 + 2 * 5 + k] == 1.0  # [vector (3), id one-hot, m one-hot, rank one-hot]
    default = nf.generate(400, 3, num_vectors=5, vector_dim=3)
    assert set(default["rank"]) == {1, 2, 3, 4}
    with pytest.raises(ValueError, match="ranking must be one of"):
        nf.generate(1, 0, ranking="closest")


@pytest.mark.parametrize("max_vectors", [None, 11])
def test_nth_farthest_answers_by_independent_computation(max_vectors):
    """Answers and inputs recomputed one sample at a time; with `max_vectors` larger than the number of vectors the
    ids are distinct, drawn from the wider range, and cover all of it over the samples."""
    width = max_vectors or 6
    data = nf.generate(300, seed=5, num_vectors=6, vector_dim=3, max_vectors=max_vectors)
    assert data["inputs"].shape == (300, 6, nf.input_dim(6, 3, max_vectors)) == (300, 6, 3 + 3 * width)
    for i in range(300):
        ids, m, n = data["ids"][i], data["reference"][i], data["rank"][i]
        assert len(set(ids)) == 6 and set(ids) <= set(range(width))
        ranked = sorted((k for k in range(6) if k != m), key=lambda k: -np.linalg.norm(data["vectors"][i, k] -
                                                                                        data["vectors"][i, m]))
        assert data["answers"][i] == ids[ranked[n - 1]]
        for t, row in enumerate(data["inputs"][i]):
            k = data["order"][i, t]
            np.testing.assert_array_equal(row[:3], data["vectors"][i, k])
            one_hots = row[3:].reshape(3, width)
            np.testing.assert_array_equal(one_hots.sum(-1), [1, 1, 1])
            assert one_hots[0, ids[k]] == 1 and one_hots[1, ids[m]] == 1 and one_hots[2, n - 1] == 1
    assert all(sorted(order) == list(range(6)) for order in data["order"])  # every vector shown once
    if max_vectors is None:
        np.testing.assert_array_equal(data["ids"], np.broadcast_to(np.arange(6), (300, 6)))
    else:
        assert set(data["ids"].ravel()) == set(range(width))
        same = nf.generate(300, seed=5, num_vectors=6, vector_dim=3)  # the same scenes, only the ids differ
        np.testing.assert_array_equal(same["vectors"], data["vectors"])
        np.testing.assert_array_equal(same["rank"], data["rank"])
    again = nf.generate(300, seed=5, num_vectors=6, vector_dim=3, max_vectors=max_vectors)  # seeded: the same
    np.testing.assert_array_equal(again["inputs"], data["inputs"])
    np.testing.assert_array_equal(again["answers"], data["answers"])
    assert nf.generate(2, seed=0)["inputs"].shape == (2, 8, 16 + 3 * 8)  # the paper's instance by default
    with pytest.raises(ValueError, match="max_vectors"):
        nf.generate(2, seed=0, num_vectors=6, max_vectors=5)


def test_nth_farthest_max_dim_pads_the_vectors_with_zeros_and_keeps_every_answer():
    plain = nf.generate(200, seed=5, num_vectors=6, vector_dim=3)
    padded = nf.generate(200, seed=5, num_vectors=6, vector_dim=3, max_dim=7)
    assert padded["inputs"].shape == (200, 6, nf.input_dim(6, 3, None, 7)) == (200, 6, 7 + 3 * 6)
    for key in ("answers", "vectors", "ids", "reference", "rank", "order"):
        np.testing.assert_array_equal(padded[key], plain[key])
    np.testing.assert_array_equal(padded["inputs"][..., :3], plain["inputs"][..., :3])
    np.testing.assert_array_equal(padded["inputs"][..., 3:7], 0.0)
    np.testing.assert_array_equal(padded["inputs"][..., 7:], plain["inputs"][..., 3:])
    for i in range(200):  # the answer recomputed from what the model is shown: the padded rows and their one-hots
        rows = padded["inputs"][i]
        shown_ids, m, n = rows[:, 7:13].argmax(-1), rows[0, 13:19].argmax(), rows[0, 19:25].argmax() + 1
        vector = {k: row[:7] for k, row in zip(shown_ids, rows)}
        ranked = sorted((k for k in shown_ids if k != m), key=lambda k: -np.linalg.norm(vector[k] - vector[m]))
        assert padded["answers"][i] == ranked[n - 1]
    inputs, labels = _probes.sub_task("farthest", 50, 7, 6, 3, None, 7)
    np.testing.assert_array_equal(inputs[..., 7 + 2 * 6:], np.eye(6)[np.zeros(50 * 6, int)].reshape(50, 6, 6))
    np.testing.assert_array_equal(labels, _probes.sub_task("farthest", 50, 7, 6, 3)[1])
    with pytest.raises(ValueError, match="max_dim"):
        nf.generate(2, seed=0, vector_dim=4, max_dim=3)


def _tiny_rmc_args(run_dir, *instance):
    """`tools/train.py` arguments for a tiny nth-farthest RMC run: `instance` (`key=value` overrides of the data
    instance) on top of small data sets and a small core, so runs resume in the same `run_dir`."""
    sets = [*instance, "data.train_size=128", "data.val_size=32", "data.test_size=32", "model.mem_slots=2",
            "model.head_size=4", "model.num_heads=2", "model.mlp_units=[8]", "train.batch_size=32", f"run_dir={run_dir}"]
    return ["--config", "configs/nth_farthest.yaml"] + [a for s in sets for a in ("--set", s)]


def test_nth_farthest_curriculum_resumes_on_more_dimensions(tmp_path):
    """Trained on 2 of up to 4 dims, a run resumes on 4: same weights, the input as wide; 5 dims are refused."""
    run_dir = str(tmp_path / "run")
    args = _tiny_rmc_args(run_dir, "data.num_vectors=3", "data.max_dim=4")
    first = run_tool("train", *args, "--set", "data.vector_dim=2", "--set", "train.epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_tool("train", *args, "--set", "data.vector_dim=4", "--set", "train.epochs=2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resumed from" in second.stdout + second.stderr
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    assert model.input_shape == (None, 3, 4 + 9) and model.output_shape == (None, 3)
    refused = run_tool("train", *args, "--set", "data.vector_dim=5", "--set", "train.epochs=3")
    assert refused.returncode != 0 and "data.max_dim (4) must be at least data.vector_dim (5)" in refused.stderr
    assert config_lib.load(os.path.join(run_dir, "config.yaml")).data.vector_dim == 4  # the run is left as it was
    from relation_networks.tasks.nth_farthest import build_model

    config = config_lib.load("configs/nth_farthest.yaml", ["data.max_dim=20", "model.type=rn", "model.g_units=[8]"])
    assert build_model(config.model, config.data).input_shape == (None, 8, 20 + 3 * 8)


def test_nth_farthest_curriculum_resumes_on_more_vectors(tmp_path):
    """Trained on 3 of up to 5 ids, a run resumes on 5 vectors: same weights, longer sequences, every rank scored."""
    run_dir = str(tmp_path / "run")
    args = _tiny_rmc_args(run_dir, "data.max_vectors=5", "data.vector_dim=2")
    first = run_tool("train", *args, "--set", "data.num_vectors=3", "--set", "train.epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "rank_2" in first.stdout and "rank_3" not in first.stdout
    second = run_tool("train", *args, "--set", "data.num_vectors=5", "--set", "train.epochs=2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resumed from" in second.stdout + second.stderr and "rank_4" in second.stdout
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    assert model.input_shape == (None, 5, 2 + 15) and model.output_shape == (None, 5)
    refused = run_tool("train", *args, "--set", "data.num_vectors=6", "--set", "train.epochs=3")
    assert refused.returncode != 0 and "data.max_vectors (5) must be at least data.num_vectors (6)" in refused.stderr
    assert config_lib.load(os.path.join(run_dir, "config.yaml")).data.num_vectors == 5  # the run is left as it was
    from relation_networks.config import ConfigError

    with pytest.raises(ConfigError, match="max_vectors"):  # refused when the config loads
        config_lib.load("configs/nth_farthest.yaml", ["data.max_vectors=0"])


@pytest.mark.parametrize("config, extra", [("nth_farthest", ["model.input_mlp_units=[16]", "model.input_norm=true",
                                                             "model.qkv_norm=true"]),
                                           ("nth_farthest_lstm", []),
                                           ("nth_farthest", ["model.type=rn", "model.g_units=[16,16]"])])
def test_few_training_steps_and_export(config, extra, tmp_path):
    run_dir = str(tmp_path / "run")
    sets = extra + ["data.train_size=256", "data.val_size=64", "data.test_size=64", "model.mem_slots=2", "model.head_size=8",
            "model.num_heads=2", "model.lstm_units=16", "model.mlp_units=[16]", "train.epochs=2",
            "train.batch_size=32", f"run_dir={run_dir}"]
    result = run_tool("train", "--config", f"configs/{config}.yaml", *[a for s in sets for a in ("--set", s)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank_1" in result.stdout
    out = run_tool("export", "--run", run_dir, "--out", str(tmp_path / "sm"), "--serving_doc", str(tmp_path / "S.md"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "model.tflite" in out.stdout and "FAILED" not in out.stdout


def test_input_mlp_feeds_the_recurrent_core_and_is_refused_for_the_rn():  # and so does input_norm
    from relation_networks.config import ConfigError
    from relation_networks.tasks.nth_farthest import build_model

    config = config_lib.load("configs/nth_farthest.yaml", ["model.input_mlp_units=[12,10]", "model.mem_slots=2",
                                                           "model.head_size=4", "model.num_heads=2"])
    model = build_model(config.model, config.data)
    assert [model.get_layer(f"input_mlp_{k}").units for k in range(2)] == [12, 10]
    assert model.get_layer("rmc").cell.input_projection.kernel.shape[0] == 10
    config = config_lib.load("configs/nth_farthest.yaml", ["model.type=rn", "model.input_mlp_units=[12]"])
    with pytest.raises(ConfigError, match="input_mlp_units"):
        build_model(config.model, config.data)
    config = config_lib.load("configs/nth_farthest.yaml", ["model.type=rn", "model.input_norm=true"])
    with pytest.raises(ConfigError, match="input_norm"):
        build_model(config.model, config.data)
    # Normalised: every step's input to the core has zero mean and unit variance over its units.
    config = config_lib.load("configs/nth_farthest.yaml", ["model.input_mlp_units=[12]", "model.input_norm=true",
                                                           "model.mem_slots=2", "model.head_size=4", "model.num_heads=2"])
    model = build_model(config.model, config.data)
    shape = (3, config.data.num_vectors, nf.input_dim(config.data.num_vectors, config.data.vector_dim))
    x = np.random.default_rng(0).normal(size=shape).astype("float32") * 5.0
    steps = keras.Model(model.inputs, model.get_layer("input_norm").output)({"sequence": x}).numpy()
    np.testing.assert_allclose(steps.mean(-1), 0.0, atol=1e-4)
    np.testing.assert_allclose(steps.std(-1), 1.0, atol=2e-2)
    assert model.get_layer("rmc").input.shape[-1] == 12


def test_nth_farthest_rn_ignores_the_order_of_the_vectors():
    from relation_networks.tasks.nth_farthest import build_model

    config = config_lib.load("configs/nth_farthest.yaml", ["model.type=rn", "model.g_units=[16,16]",
                                                           "model.mlp_units=[8]"])
    model = build_model(config.model, config.data)
    inputs = nf.generate(4, seed=3)["inputs"]
    shuffled = inputs[:, np.random.default_rng(0).permutation(8)]
    out = keras.ops.convert_to_numpy(model({"sequence": inputs}))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model({"sequence": shuffled})), out, rtol=1e-5, atol=1e-5)
    changed = inputs.copy()
    changed[:, :, -8:] = np.roll(changed[:, :, -8:], 1, axis=-1)  # another rank asked: the question is read
    assert np.abs(keras.ops.convert_to_numpy(model({"sequence": changed})) - out).max() > 1e-6


@pytest.mark.parametrize("max_vectors", [None, 7])
@pytest.mark.parametrize("target", _probes.SUB_TASKS)
def test_probe_sub_task_labels_by_independent_computation(target, max_vectors):
    """The probe's sub-task labels, recomputed here one sample at a time from the inputs the model sees."""
    num_vectors, dim = 5, 3
    width = max_vectors or num_vectors
    inputs, labels = _probes.sub_task(target, 60, 7, num_vectors, dim, max_vectors)
    assert inputs.shape == (60, num_vectors, nf.input_dim(num_vectors, dim, max_vectors))
    for x, label in zip(inputs, labels):
        ids = x[:, dim : dim + width].argmax(-1)
        vectors = {int(i): row[:dim] for i, row in zip(ids, x)}
        m = int(x[0, dim + width : dim + 2 * width].argmax())
        rank = int(x[0, dim + 2 * width :].argmax()) + 1
        if target == "largest_x":
            expected = max(vectors, key=lambda i: vectors[i][0])
        elif target == "largest_norm":
            expected = max(vectors, key=lambda i: float(np.sum(vectors[i] ** 2)))
        elif target == "reference_sign":
            expected = int(vectors[m][0] > 0)
        else:
            if target == "farthest":
                assert rank == 1 and x[0, dim + 2 * width :].sum() == 1
            others = sorted((i for i in vectors if i != m), key=lambda i: -np.linalg.norm(vectors[i] - vectors[m]))
            expected = others[rank - 1]
        assert label == expected


def _length_rule_by_hand(x, dim, width):
    """The n-th longest vector other than m, read from one sample's model inputs."""
    ids = [int(i) for i in x[:, dim : dim + width].argmax(-1)]
    m = int(x[0, dim + width : dim + 2 * width].argmax())
    rank = int(x[0, dim + 2 * width :].argmax()) + 1
    others = sorted((i for i in ids if i != m), key=lambda i: -float(np.sum(x[ids.index(i), :dim] ** 2)))
    return others[rank - 1]


@pytest.mark.parametrize("max_vectors", [None, 7])
def test_length_rule_answers_by_independent_computation(max_vectors):
    num_vectors, dim = 5, 3
    data = nf.generate(60, 11, num_vectors, dim, max_vectors)
    rule = _probes.by_length(data)
    np.testing.assert_array_equal(rule, [_length_rule_by_hand(x, dim, max_vectors or num_vectors)
                                         for x in data["inputs"]])
    assert 0 < np.mean(rule == data["answers"]) < 1  # a rule, not the answer


def test_probe_tool_runs_and_rejects_other_tasks(tmp_path):
    out = tmp_path / "probe.json"
    sets = ["--set", "data.num_vectors=3", "--set", "data.vector_dim=2", "--set", "model.mem_slots=2",
            "--set", "model.head_size=4", "--set", "model.num_heads=2", "--set", "model.mlp_units=[8]"]
    result = run_tool("probe_nth_farthest", *sets, "--target", "reference_sign", "--steps", "4",
                      "--eval_every_steps", "2", "--val_samples", "50", "--json", str(out))
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads(out.read_text())
    assert [row["step"] for row in report["rows"]] == [2, 4] and report["target"] == "reference_sign"
    assert 0.5 <= report["guess"] <= 1.0
    with pytest.raises(ValueError, match="Unknown sub-task"):
        _probes.sub_task("nearest", 4, 0)
    share = run_tool("probe_nth_farthest", *sets, "--input_dependence", "--val_samples", "50")
    assert share.returncode == 0, share.stderr
    assert "input-dependent share" in share.stdout and "step" not in share.stdout  # reports, trains nothing
    from _probes import input_dependent_share

    shared = np.ones((20, 3, 4)) * np.arange(12).reshape(1, 3, 4)  # the same for every sample
    noise = np.random.default_rng(0).normal(size=(20, 3, 4))
    noise -= noise.mean(axis=0)  # every entry's mean over samples is 0: all the variance is across samples
    assert input_dependent_share(shared) == 0.0
    assert input_dependent_share(noise) == pytest.approx(1.0)
    assert 0.0 < input_dependent_share(shared + noise) < 0.5
    rule_json = tmp_path / "rule.json"
    rule = run_tool("probe_nth_farthest", *sets, "--set", "data.val_size=40", "--set", "data.test_size=30",
                    "--length_rule", "--json", str(rule_json))
    assert rule.returncode == 0, rule.stderr
    assert "length rule on test (30 samples" in rule.stdout and "step" not in rule.stdout  # scores, trains nothing
    rule_report = json.loads(rule_json.read_text())
    test = nf.generate(30, NthFarthestData().test_seed, 3, 2)
    by_hand = [_length_rule_by_hand(x, 2, 3) == y for x, y in zip(test["inputs"], test["answers"])]
    assert rule_report["test"]["accuracy"] == pytest.approx(np.mean(by_hand))
    assert rule_report["val"]["examples"] == 40
    assert sum(group["count"] for group in rule_report["test"]["groups"].values()) == 30
    bad = run_tool("probe_nth_farthest", "--config", "configs/babi.yaml")
    assert bad.returncode == 2 and "not an nth_farthest config" in bad.stderr


def test_probe_compares_a_trained_models_answers_with_the_length_rule(tmp_path):
    """--length_rule --model: the model's accuracy and agreement with the rule, recomputed here from its logits."""
    from relation_networks.tasks.nth_farthest import build_model

    config = config_lib.load("configs/nth_farthest_lstm.yaml", [
        "data.num_vectors=4", "data.vector_dim=3", "data.val_size=20", "data.test_size=64", "model.lstm_units=8",
        "model.mlp_units=[8]"])
    keras.utils.set_random_seed(3)
    model = build_model(config.model, config.data)
    run = tmp_path / "run"
    run.mkdir()
    config_lib.save(config, str(run / "config.yaml"))
    model.save(run / "model.keras")
    out = tmp_path / "rule.json"
    result = run_tool("probe_nth_farthest", "--length_rule", "--model", str(run), "--json", str(out))
    assert result.returncode == 0, result.stderr
    import json

    scores = json.loads(out.read_text())["test"]["model"]
    test = nf.generate(64, NthFarthestData().test_seed, 4, 3)
    answers = model.predict({"sequence": test["inputs"]}, verbose=0).argmax(-1)
    rule = [_length_rule_by_hand(x, 3, 4) for x in test["inputs"]]
    wrong = [r != y for r, y in zip(rule, test["answers"])]
    assert scores["accuracy"] == pytest.approx(np.mean(answers == test["answers"]))
    assert scores["agrees_with_rule"] == pytest.approx(np.mean(answers == rule))
    assert scores["agrees_with_rule_where_it_is_wrong"] == pytest.approx(np.mean((answers == rule)[wrong]))
    refused = run_tool("probe_nth_farthest", "--model", str(run))
    assert refused.returncode == 2 and "--model is for --length_rule" in refused.stderr


@pytest.mark.parametrize("config,setting,message", [
    ("configs/nth_farthest.yaml", "model.num_heads=0", "num_heads"),
])
def test_a_model_setting_a_layer_refuses_is_one_config_message(config, setting, message, tmp_path):
    run_dir = tmp_path / "run"
    result = run_tool("train", "--config", config, "--run_dir", str(run_dir), "--set", setting)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "model: " in result.stderr and message in result.stderr and "Traceback" not in result.stderr
    assert not run_dir.exists()  # refused before anything was written


def test_paper_reference_only_for_the_papers_instance():
    """The RRNN paper's 91% belongs beside the RMC on 8 vectors of 16 dims, not beside a smaller instance."""
    path = os.path.join(ROOT, "configs", "nth_farthest.yaml")
    task = tasks.get("nth_farthest")
    assert task.paper_results(config_lib.load(path)) == {"accuracy": 0.91}
    smaller = config_lib.load(path, ["data.num_vectors=4", "data.vector_dim=2"])
    assert task.paper_results(smaller) == {}
    assert task.paper_results(config_lib.load(path, ["model.type=lstm"])) == {}
