import numpy as np
import pytest

from relation_networks import ConvObjectExtractor
from relation_networks.layers import cell_coordinates


def test_coordinates_row_uses_integer_division():
    coords = cell_coordinates(3, 4).numpy()  # 3 rows, 4 columns
    assert coords.shape == (12, 2)
    for k in range(12):
        row, col = k // 4, k % 4
        np.testing.assert_allclose(coords[k], [-1 + 2 * row / 2, -1 + 2 * col / 3], atol=1e-6)


def test_objects_shape_features_and_tags():
    images = np.random.default_rng(0).uniform(size=(2, 75, 40, 3)).astype("float32")
    layer = ConvObjectExtractor([4, 6, 5, 7])
    objects = layer(images).numpy()
    feature_map = layer.feature_map(images).numpy()  # [2, 5, 3, 7]
    assert feature_map.shape == (2, 5, 3, 7)
    assert objects.shape == (2, 15, 9)
    np.testing.assert_allclose(objects[..., :7], feature_map.reshape(2, 15, 7), rtol=1e-6)
    # Cell (row 1, col 2) is object 1 * 3 + 2 = 5.
    np.testing.assert_allclose(objects[0, 5, 7:], [-0.5, 1.0], atol=1e-6)
    assert objects[..., 7:].min() == -1.0 and objects[..., 7:].max() == 1.0
    assert layer.compute_output_shape((None, 75, 40, 3)) == (None, 15, 9)


def test_sort_of_clevr_grid_is_5x5():
    layer = ConvObjectExtractor([4, 4, 4, 4])
    assert layer(np.zeros((1, 75, 75, 3), "float32")).shape == (1, 25, 6)


def test_config_round_trip():
    layer = ConvObjectExtractor([4, 8], coordinate_range=(0.0, 1.0), synchronized_bn=True, output_mode="feature_map")
    clone = ConvObjectExtractor.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(filters=[]), "filters"), (dict(filters=[4], coordinate_range=(1, -1)), "coordinate_range"),
     (dict(filters=[4], output_mode="cells"), "output_mode")],
)
def test_argument_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvObjectExtractor(**kwargs)


def test_film_starts_as_the_plain_cnn_and_then_depends_on_the_question():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(3, 30, 30, 3)).astype("float32")
    questions = np.eye(3, 5, dtype="float32")
    plain = ConvObjectExtractor([4, 6], name="plain_cnn")
    film = ConvObjectExtractor([4, 6], film_layers=[0], name="conditioned_cnn")
    film(images, condition=questions)
    plain(images)
    for source, target in zip(plain.weights, [w for w in film.weights if "/film_" not in w.path]):
        target.assign(source)
    np.testing.assert_allclose(film(images, condition=questions), plain(images), rtol=1e-6)  # zero-initialised
    film.film["0"].kernel.assign(rng.normal(size=film.film["0"].kernel.shape))
    same_image = np.repeat(images[:1], 3, axis=0)
    out = film(same_image, condition=questions).numpy()
    assert np.abs(out[0] - out[1]).max() > 1e-3 and np.abs(out[1] - out[2]).max() > 1e-3
    np.testing.assert_allclose(film(same_image, condition=questions[[0, 0, 0]])[2], out[0], rtol=1e-5, atol=1e-6)


def test_film_config_round_trip_and_validation():
    layer = ConvObjectExtractor([4, 8], film_layers=[1, 0])
    assert layer.film_layers == [0, 1]
    clone = ConvObjectExtractor.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="film_layers"):
        ConvObjectExtractor([4, 8], film_layers=[2])
    with pytest.raises(ValueError, match="film_layers"):
        ConvObjectExtractor([4, 8], film_layers=0)
    with pytest.raises(ValueError, match="needs a condition"):
        layer(np.zeros((1, 16, 16, 3), "float32"))


def test_input_coordinates_are_two_pixel_planes_before_the_first_conv():
    layer = ConvObjectExtractor([3, 5], input_coordinates=True, coordinate_range=(0.0, 2.0))
    images = np.random.default_rng(0).uniform(size=(2, 9, 7, 3)).astype("float32")
    out = layer.feature_map(images, training=False).numpy()
    rows = np.broadcast_to(np.linspace(0.0, 2.0, 9)[:, None], (9, 7))
    cols = np.broadcast_to(np.linspace(0.0, 2.0, 7)[None, :], (9, 7))
    planes = np.broadcast_to(np.stack([rows, cols], -1), (2, 9, 7, 2))
    x = np.concatenate([images, planes], -1).astype("float32")
    for conv, bn in layer.blocks:
        x = np.maximum(bn(conv(x), training=False).numpy(), 0.0)
    np.testing.assert_allclose(out, x, rtol=1e-5, atol=1e-6)
    assert layer.blocks[0][0].kernel.shape == (3, 3, 5, 3)
    clone = ConvObjectExtractor.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config() and clone.input_coordinates


def test_input_coordinates_need_static_image_sizes():
    import keras

    with pytest.raises(ValueError, match="static height and width"):
        ConvObjectExtractor([4], input_coordinates=True)(keras.Input((None, None, 3)))
