import numpy as np
import pytest
import keras
import tensorflow as tf

from relation_networks import RelationModule


def _inputs(batch=3, n=5, d=4, q=6, seed=0):
    rng = np.random.default_rng(seed)
    objects = rng.normal(size=(batch, n, d)).astype("float32")
    question = rng.normal(size=(batch, q)).astype("float32")
    return objects, question


def _layer(**kwargs):
    kwargs.setdefault("g_units", [16, 16, 8])
    kwargs.setdefault("f_units", [16, 3])
    return RelationModule(**kwargs)


def test_hand_computed_values():
    # g: one linear unit + ReLU, f: one linear output. RN = w_f * sum_ij relu(a.o_i + b.o_j + c.q) + b_f.
    objects = np.array([[[1.0], [2.0]]], "float32")
    question = np.array([[0.5]], "float32")
    layer = RelationModule([1], [1])
    layer(objects, question=question)
    layer.set_weights([
        np.array([[1.0], [-1.0], [2.0]], "float32"),  # g first layer kernel over [o_i; o_j; q]
        np.array([0.5], "float32"),  # g first layer bias
        np.array([[3.0]], "float32"),  # f kernel
        np.array([1.0], "float32"),  # f bias
    ])
    relations = [max(0.0, oi - oj + 2 * 0.5 + 0.5) for oi in (1.0, 2.0) for oj in (1.0, 2.0)]
    expected = 3.0 * sum(relations) + 1.0
    np.testing.assert_allclose(layer(objects, question=question).numpy(), [[expected]], rtol=1e-6)


def test_factorized_equals_naive_pairing():
    objects, question = _inputs()
    mask = np.array([[1, 1, 1, 0, 0], [1] * 5, [1, 0, 1, 1, 1]], "float32")
    layer = _layer()
    factorized = layer(objects, question=question, object_mask=mask).numpy()
    layer.factorized = False
    naive = layer(objects, question=question, object_mask=mask).numpy()
    np.testing.assert_allclose(factorized, naive, rtol=1e-5, atol=1e-5)
    assert np.abs(factorized).max() > 1e-3  # not trivially zero


def test_factorized_equals_naive_without_question():
    objects, _ = _inputs()
    layer = _layer()
    factorized = layer(objects).numpy()
    layer.factorized = False
    np.testing.assert_allclose(factorized, layer(objects).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aggregation", ["sum", "mean", "max", "mean+max"])
def test_permutation_invariance(aggregation):
    objects, question = _inputs(n=7)
    mask = np.ones((3, 7), "float32")
    mask[0, 5:] = 0
    layer = _layer(aggregation=aggregation)
    expected = layer(objects, question=question, object_mask=mask).numpy()
    perm = np.random.default_rng(1).permutation(7)
    permuted = layer(objects[:, perm], question=question, object_mask=mask[:, perm]).numpy()
    np.testing.assert_allclose(permuted, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aggregation", ["sum", "mean", "max", "sum+max"])
def test_padded_objects_contribute_nothing(aggregation):
    objects, question = _inputs(n=4)
    layer = _layer(aggregation=aggregation)
    unpadded = layer(objects, question=question).numpy()
    garbage = np.random.default_rng(2).normal(size=(3, 3, 4)).astype("float32") * 100
    padded = np.concatenate([objects, garbage], axis=1)
    mask = np.concatenate([np.ones((3, 4)), np.zeros((3, 3))], axis=1).astype("float32")
    np.testing.assert_allclose(layer(padded, question=question, object_mask=mask).numpy(), unpadded, rtol=1e-5, atol=1e-5)


def test_pair_mask_selects_pairs():
    objects, question = _inputs(batch=1, n=4)
    layer = _layer(return_relations=True)
    _, relations = layer(objects, question=question)
    pair_mask = np.zeros((1, 4, 4), "float32")
    pair_mask[0, 1, 2] = pair_mask[0, 3, 0] = 1.0
    output, masked = layer(objects, question=question, pair_mask=pair_mask)
    np.testing.assert_allclose(masked.numpy()[0][pair_mask[0] == 0], 0.0)
    np.testing.assert_allclose(masked.numpy()[0, 1, 2], relations.numpy()[0, 1, 2], rtol=1e-6)
    # f_phi of the sum of the two selected relations:
    h = relations.numpy()[0, 1, 2] + relations.numpy()[0, 3, 0]
    for dense in layer.f_phi:
        h = dense(h[None])[0].numpy()
    np.testing.assert_allclose(output.numpy()[0], h, rtol=1e-5, atol=1e-6)


def test_relations_sum_to_the_aggregate():
    objects, question = _inputs()
    layer = _layer(return_relations=True)
    output, relations = layer(objects, question=question)
    assert relations.shape == (3, 5, 5, 8)
    h = keras.ops.sum(relations, axis=(1, 2))
    for dense in layer.f_phi:
        h = dense(h)
    np.testing.assert_allclose(output.numpy(), h.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aggregation", ["max", "sum+max", "mean+max"])
def test_max_aggregation_reads_the_largest_relation_of_the_included_pairs(aggregation):
    objects, question = _inputs()
    mask = np.array([[1, 1, 1, 0, 0], [1] * 5, [1, 0, 1, 1, 1]], "float32")
    layer = _layer(g_units=[16, 8], activation="tanh", aggregation=aggregation, return_relations=True)
    output, relations = layer(objects, question=question, object_mask=mask)
    valid = (mask[:, :, None] * mask[:, None, :]) > 0
    r = relations.numpy()
    largest = np.stack([r[b][valid[b]].max(axis=0) for b in range(3)])  # independently, per example
    assert (largest < 0).any()  # tanh relations: a masked pair's zero would win if it were not left out
    parts = {"max": [largest], "sum+max": [r.sum(axis=(1, 2)), largest],
             "mean+max": [r.sum(axis=(1, 2)) / valid.sum(axis=(1, 2))[:, None], largest]}[aggregation]
    h = np.concatenate(parts, axis=-1)
    for dense in layer.f_phi:
        h = dense(h).numpy()
    np.testing.assert_allclose(output.numpy(), h, rtol=1e-5, atol=1e-5)
    # No included pair at all: the maximum is zero, not -inf.
    empty = layer(objects, question=question, pair_mask=np.zeros((3, 5, 5), "float32"))[0].numpy()
    assert np.isfinite(empty).all()
    restored = RelationModule.from_config(layer.get_config())
    restored(objects, question=question)
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(restored(objects, question=question, object_mask=mask)[0].numpy(), output.numpy(),
                               rtol=1e-6)


def test_max_aggregation_passes_gradients_to_the_largest_pair_only():
    objects, question = _inputs(batch=1, n=3)
    layer = _layer(g_units=[4], f_units=[1], aggregation="max", return_relations=True)
    layer(objects, question=question)
    layer.set_weights([np.zeros((14, 4), "float32"), np.zeros(4, "float32"), np.ones((4, 1), "float32"),
                       np.zeros(1, "float32")])
    kernel = np.zeros((14, 4), "float32")
    kernel[0, 0] = 1.0  # relation unit 0 = relu(first feature of o_i): largest for the object with the largest one
    layer.g_kernel.assign(kernel)
    x = tf.constant(objects)
    with tf.GradientTape() as tape:
        tape.watch(x)
        output, _ = layer(x, question=question)
    grad = tape.gradient(output, x).numpy()[0, :, 0]
    winner = int(np.argmax(objects[0, :, 0]))
    assert objects[0, winner, 0] > 0
    # The maximum over the 3 pairs (winner, j) ties; TensorFlow spreads the gradient over the tied pairs, which
    # all sit on the winner's row: the other objects' first features receive nothing.
    assert grad[winner] != 0 and np.count_nonzero(grad) == 1


@pytest.mark.parametrize("aggregation", ["sum", "mean", "max", "mean+max", "none"])
def test_read_out_of_the_relations_is_the_layer_output(aggregation):
    objects, question = _inputs()
    mask = np.array([[1, 1, 1, 0, 0], [1] * 5, [1, 0, 1, 1, 1]], "float32")
    layer = _layer(aggregation=aggregation)
    output, relations = layer(objects, question=question, object_mask=mask, return_relations=True)
    again = layer.read_out(relations, object_mask=mask)
    np.testing.assert_allclose(again.numpy(), output.numpy(), rtol=1e-6, atol=1e-6)
    # Relations of masked pairs are left out by the mask, whatever they hold.
    noisy = relations.numpy() + 100.0 * (1 - mask[:, :, None, None] * mask[:, None, :, None])
    np.testing.assert_allclose(layer.read_out(noisy, object_mask=mask).numpy(), output.numpy(), rtol=1e-6, atol=1e-6)


def test_no_aggregation_applies_f_phi_to_every_pair():
    objects, question = _inputs()
    mask = np.array([[1, 1, 1, 0, 0], [1] * 5, [1, 0, 1, 1, 1]], "float32")
    layer = _layer(aggregation="none", return_relations=True)
    output, relations = layer(objects, question=question, object_mask=mask)
    assert output.shape == (3, 5, 5, 3) and layer.compute_output_shape((3, 5, 4), (3, 6))[0] == (3, 5, 5, 3)
    expected = relations.numpy()
    for dense in layer.f_phi:
        expected = dense(expected).numpy()
    valid = mask[:, :, None] * mask[:, None, :]
    np.testing.assert_allclose(output.numpy(), expected * valid[..., None], rtol=1e-5, atol=1e-5)
    assert np.abs(output.numpy()[valid > 0]).min() > 0 and not output.numpy()[valid == 0].any()
    # Per pair: permuting the objects permutes the rows and columns of the output.
    perm = np.array([2, 0, 4, 1, 3])
    permuted = layer(objects[:, perm], question=question, object_mask=mask[:, perm])[0].numpy()
    np.testing.assert_allclose(permuted, output.numpy()[:, perm][:, :, perm], rtol=1e-5, atol=1e-5)
    layer.factorized = False
    naive = layer(objects, question=question, object_mask=mask)[0].numpy()
    np.testing.assert_allclose(naive, output.numpy(), rtol=1e-5, atol=1e-5)
    assert RelationModule.from_config(layer.get_config()).aggregation == "none"


@pytest.mark.parametrize("factorized", [True, False])
@pytest.mark.parametrize("graph", [False, True])
def test_pair_chunking_matches_values_and_gradients(factorized, graph):
    objects, question = _inputs(n=7)
    mask = np.ones((3, 7), "float32")
    mask[1, 4:] = 0
    full = _layer(factorized=factorized)
    chunked = _layer(pair_chunk_size=3, factorized=factorized)  # 7 objects: blocks of 3, 3 and 1 rows
    full(objects, question=question)
    chunked(objects, question=question)
    chunked.set_weights(full.get_weights())

    def grads(layer):
        x = tf.constant(objects)
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x, question=question, object_mask=mask)
            loss = tf.reduce_sum(out**2)
        return out, tape.gradient(loss, [x] + layer.trainable_variables)

    run = tf.function(grads) if graph else grads
    out_full, g_full = grads(full)
    out_chunked, g_chunked = run(chunked)
    assert all(g is not None for g in g_chunked)
    np.testing.assert_allclose(out_chunked.numpy(), out_full.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in zip(g_chunked, g_full):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


def test_dropout_only_in_training():
    objects, question = _inputs()
    layer = _layer(dropout=0.5)
    a = layer(objects, question=question, training=False).numpy()
    b = layer(objects, question=question, training=False).numpy()
    np.testing.assert_array_equal(a, b)
    c = layer(objects, question=question, training=True).numpy()
    assert not np.allclose(a, c)


def test_config_round_trip_and_keras_file(tmp_path):
    objects, question = _inputs()
    layer = _layer(dropout=0.25, aggregation="mean", pair_chunk_size=2, name="rn")
    clone = RelationModule.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()

    o = keras.Input((5, 4))
    q = keras.Input((6,))
    model = keras.Model([o, q], layer(o, question=q))
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(restored([objects, question]).numpy(), model([objects, question]).numpy(), rtol=1e-6)


def test_functional_model_with_masks():
    o = keras.Input((5, 4))
    q = keras.Input((6,))
    m = keras.Input((5,))
    out = RelationModule([8], [3])(o, question=q, object_mask=m)
    model = keras.Model([o, q, m], out)
    objects, question = _inputs()
    assert model([objects, question, np.ones((3, 5), "float32")]).shape == (3, 3)


def test_mixed_bfloat16():
    keras.config.set_dtype_policy("mixed_bfloat16")
    layer = _layer()
    objects, question = _inputs()
    out = layer(objects, question=question)
    assert layer.g_theta[0].compute_dtype == "bfloat16"  # the N^2 pair MLP runs in bfloat16
    assert out.dtype == "float32"  # the sum over pairs and f_phi run in float32
    assert layer.g_kernel.dtype == "float32"


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
@pytest.mark.parametrize("pair_chunk_size", [None, 7])
def test_mixed_bfloat16_keeps_one_pair_in_the_sum(aggregation, pair_chunk_size):
    # 625 pairs, as for a 5x5 CNN grid: removing one pair must change the output as it does in float32.
    # A bfloat16 sum resolves ~0.4% of its size, more than one pair in 625, which hid the pair that answers.
    objects, question = _inputs(batch=2, n=25, d=8)
    drop_one = np.ones((2, 25, 25), "float32")
    drop_one[:, 3, 11] = 0.0
    every = np.ones((2, 25, 25), "float32")
    effects = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.config.set_dtype_policy(policy)
        layer = _layer(g_units=[32, 32], f_units=[4], aggregation=aggregation, pair_chunk_size=pair_chunk_size)
        layer(objects, question=question, pair_mask=every)
        if policy == "float32":
            weights = layer.get_weights()
        else:
            layer.set_weights(weights)
        outputs = [layer(objects, question=question, pair_mask=m).numpy() for m in (every, drop_one)]
        effects[policy] = outputs[0] - outputs[1]
    scale = np.abs(effects["float32"]).max()
    assert scale > 0
    np.testing.assert_allclose(effects["mixed_bfloat16"], effects["float32"], atol=0.05 * scale)


@pytest.mark.parametrize("factorized, pair_chunk_size", [(True, None), (False, None), (True, 2)])
def test_precise_first_layer_keeps_small_differences_between_objects(factorized, pair_chunk_size):
    # Objects that differ by 1e-3 around a common offset of 1, as the coordinates of two balls whose distance
    # barely changes, and a first layer that looks at o_i - o_j (W_j = -W_i): in bfloat16 the objects round to the
    # offset (spacing 2^-7 near 1) and every pair looks alike; the precise first layer keeps the differences.
    rng = np.random.default_rng(0)
    objects = (1.0 + 1e-3 * rng.normal(size=(2, 6, 4))).astype("float32")
    relations = {}
    for policy, precise in (("float32", False), ("mixed_bfloat16", True), ("mixed_bfloat16", False)):
        keras.config.set_dtype_policy(policy)
        layer = _layer(g_units=[16, 8], f_units=[3], precise_first_layer=precise, factorized=factorized,
                       pair_chunk_size=pair_chunk_size)
        layer(objects)
        if policy == "float32":
            kernel = layer.g_kernel.numpy()
            kernel[4:] = -kernel[:4]
            weights = [kernel] + layer.get_weights()[1:]
        layer.set_weights(weights)
        _, r = layer(objects, return_relations=True)
        relations[(policy, precise)] = np.asarray(r, np.float32)
    reference = relations[("float32", False)]
    spread = reference.std()
    assert spread > 0
    np.testing.assert_allclose(relations[("mixed_bfloat16", True)], reference, atol=0.05 * spread)
    assert np.abs(relations[("mixed_bfloat16", False)] - reference).max() > 0.5 * spread  # what it fixes


def test_precise_first_layer_round_trips():
    layer = _layer(precise_first_layer=True)
    assert RelationModule.from_config(layer.get_config()).precise_first_layer


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(g_units=[], f_units=[3]), "g_units"),
        (dict(g_units=[8], f_units=3), "f_units"),
        (dict(g_units=[8, -1], f_units=[3]), "g_units"),
        (dict(g_units=[8], f_units=[3], dropout=1.0), "dropout"),
        (dict(g_units=[8], f_units=[3], aggregation="min"), "aggregation"),
        (dict(g_units=[8], f_units=[3], aggregation="mean+max", pair_chunk_size=4), "pair_chunk_size"),
        (dict(g_units=[8], f_units=[3], pair_chunk_size=0), "pair_chunk_size"),
        (dict(g_units=[8], f_units=[3], aggregation="none", pair_chunk_size=4), "pair_chunk_size"),
    ],
)
def test_argument_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RelationModule(**kwargs)


def test_rejects_objects_of_wrong_rank():
    with pytest.raises(ValueError, match="batch, objects, dim"):
        RelationModule([8], [3])(np.zeros((2, 4), "float32"))


def test_mixed_precision_model_reloads_under_float32_policy(tmp_path):
    # Sub-layers must follow the layer's policy, not the global one in force when the file is loaded.
    keras.config.set_dtype_policy("mixed_bfloat16")
    o = keras.Input((5, 4))
    q = keras.Input((6,))
    model = keras.Model([o, q], _layer(aggregation="mean")(o, question=q))
    path = str(tmp_path / "mixed.keras")
    model.save(path)
    keras.config.set_dtype_policy("float32")
    restored = keras.models.load_model(path)
    layer = restored.layers[-1]
    assert {l.compute_dtype for l in layer.g_theta} == {"bfloat16"}
    assert {l.compute_dtype for l in layer.f_phi} == {"float32"}
    objects, question = _inputs()
    out, relations = layer(objects, question=question, return_relations=True)
    np.testing.assert_allclose(restored([objects, question]).numpy(), model([objects, question]).numpy(), rtol=1e-2, atol=1e-2)
    assert relations.dtype == "bfloat16"
