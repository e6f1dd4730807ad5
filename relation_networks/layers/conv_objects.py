"""Coordinate-tagged convolutional objects (Santoro et al. 2017, section 4, "Dealing with pixels")."""

import keras
from keras import ops


NORM_ORDERS = ("bn_relu", "relu_bn")


def cell_coordinates(height, width, low=-1.0, high=1.0):
    """`[height * width, 2]` (row, col) coordinates of the cells of a feature map, in row-major order.

    Cell `k` sits at row `k // width` (integer division) and column `k % width`; each index is mapped linearly
    onto `[low, high]`. A map with a single row or column puts it at the middle of the range.
    """
    k = ops.arange(height * width)
    rows = ops.cast(k // width, "float32")
    cols = ops.cast(k % width, "float32")

    def scale(index, size):
        if size == 1:
            return ops.zeros_like(index) + (low + high) / 2.0
        return low + (high - low) * index / float(size - 1)

    return ops.stack([scale(rows, height), scale(cols, width)], axis=-1)


@keras.saving.register_keras_serializable(package="relation_networks")
class ConvObjectExtractor(keras.layers.Layer):
    """A conv stack whose output cells become objects for a Relation Network.

    Each layer is a `kernel_size` convolution with stride `strides` ("same" padding), batch normalization and
    ReLU, in the order `norm_order` names (the paper does not say which). The final `[d_h, d_w, k]` feature map is flattened to `d_h * d_w` objects, and each object is tagged
    with its (row, col) coordinate in `coordinate_range`, so the RN can reason about positions.

    Args:
        filters: list of ints, kernels per conv layer (paper: `[24, 24, 24, 24]` for CLEVR,
            `[32, 64, 128, 256]` for Sort-of-CLEVR).
        kernel_size: conv kernel size (3 in the paper).
        strides: conv stride (2 in the paper).
        coordinate_range: `(low, high)` range of the coordinate tags.
        bn_momentum: momentum of the batch-norm moving statistics; 0.9 (PyTorch's default, which the public
            reproductions use) rather than Keras's 0.99, so the statistics follow the fast-changing early features.
        synchronized_bn: use `BatchNormalization(synchronized=True)`, which keeps the moving statistics identical
            across replicas in synchronous multi-worker training.
        output_mode: `"objects"` (default) for the coordinate-tagged object set, or `"feature_map"` for the raw
            `[batch, d_h, d_w, k]` map (the CNN+MLP baseline flattens it).
        film_layers: indices of the conv layers whose batch-normalised output is modulated by a conditioning
            vector before the ReLU (FiLM, Perez et al. 2018): `x * (1 + gamma(c)) + beta(c)` per channel, with
            `[gamma, beta]` a linear function of `condition`, initialised to zero, so training starts from the
            unconditioned CNN. Empty (the default, and the paper): no conditioning. Conditioning the first layer
            on the question lets it pick out the pixels of the colour the question names, which a CNN+RN
            otherwise has to discover through the relation module (docs/sort_of_clevr.md). The CNN then
            depends on the question, so it runs once per question rather than once per image.
        norm_order: `"bn_relu"` (default): conv (no bias) -> batch norm -> ReLU, the usual order;
            `"relu_bn"`: conv (with bias) -> ReLU -> batch norm, the order of the public PyTorch reproduction
            (kimhc6028/relational-networks), whose objects are then zero-mean, unit-variance features rather than
            non-negative ones. FiLM modulation follows the batch norm in either order.
        input_coordinates: append two channels to the images before the first conv, each pixel's (row, col) in
            `coordinate_range` ("CoordConv", Liu et al. 2018). The cell tags give an object's position only to the
            nearest cell (15 px on Sort-of-CLEVR's 5 x 5 grid); with the pixel coordinates as inputs the conv
            features can carry where in its cell the object is, which the closest/furthest questions need when
            two candidates are a few pixels apart (docs/sort_of_clevr.md). Needs images of static height and width.

    Call arguments:
        images: `[batch, height, width, channels]` float images.
        condition: `[batch, dim]` float conditioning vector (the question); required with `film_layers`,
            ignored otherwise.
        training: bool, batch-norm mode.

    Returns:
        `[batch, d_h * d_w, filters[-1] + 2]` objects: conv features followed by (row, col).
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=2,
        coordinate_range=(-1.0, 1.0),
        bn_momentum=0.9,
        synchronized_bn=False,
        output_mode="objects",
        film_layers=(),
        input_coordinates=False,
        norm_order="bn_relu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if output_mode not in ("objects", "feature_map"):
            raise ValueError(
                f"Invalid value for argument output_mode. Expected one of {{'objects', 'feature_map'}}, got {output_mode!r}."
            )
        self.output_mode = output_mode
        if isinstance(filters, int) or not filters or not all(isinstance(f, int) and f > 0 for f in filters):
            raise ValueError(
                f"Invalid value for argument filters: expected a non-empty list of positive integers, got {filters!r}."
            )
        low, high = coordinate_range
        if not low < high:
            raise ValueError(f"Invalid value for argument coordinate_range: expected low < high, got {coordinate_range!r}.")
        self.filters = [int(f) for f in filters]
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.coordinate_range = (float(low), float(high))
        if not 0.0 <= float(bn_momentum) < 1.0:
            raise ValueError(f"Invalid value for argument bn_momentum: expected a value in [0, 1), got {bn_momentum!r}.")
        self.bn_momentum = float(bn_momentum)
        self.synchronized_bn = bool(synchronized_bn)
        if isinstance(film_layers, int) or not all(
            isinstance(k, int) and not isinstance(k, bool) and 0 <= k < len(self.filters) for k in film_layers
        ):
            raise ValueError(
                f"Invalid value for argument film_layers: expected indices of conv layers in [0, {len(self.filters)}), "
                f"got {film_layers!r}."
            )
        self.film_layers = sorted(set(film_layers))
        self.input_coordinates = bool(input_coordinates)
        if norm_order not in NORM_ORDERS:
            raise ValueError(
                f"Invalid value for argument norm_order. Expected one of {set(NORM_ORDERS)}, got {norm_order!r}."
            )
        self.norm_order = norm_order
        self.film = {  # string keys: TensorFlow's SavedModel cannot track a dict with int keys
            str(k): keras.layers.Dense(2 * self.filters[k], kernel_initializer="zeros", name=f"film_{k}", dtype=self.dtype_policy)
            for k in self.film_layers
        }
        self.blocks = []
        for k, f in enumerate(self.filters):
            conv = keras.layers.Conv2D(
                f, self.kernel_size, strides=self.strides, padding="same", use_bias=norm_order == "relu_bn",
                name=f"conv_{k}",
                dtype=self.dtype_policy,
            )
            bn = keras.layers.BatchNormalization(
                momentum=self.bn_momentum, synchronized=self.synchronized_bn, name=f"bn_{k}", dtype=self.dtype_policy
            )
            self.blocks.append((conv, bn))

    def build(self, images_shape, condition_shape=None):
        if self.film_layers:
            if condition_shape is None or len(condition_shape) != 2 or condition_shape[-1] is None:
                raise ValueError(
                    f"ConvObjectExtractor with film_layers={self.film_layers} needs a condition of shape [batch, dim], "
                    f"got {None if condition_shape is None else tuple(condition_shape)}."
                )
            for film in self.film.values():
                film.build(tuple(condition_shape))
        shape = tuple(images_shape)
        if self.input_coordinates:
            if shape[1] is None or shape[2] is None:
                raise ValueError(
                    f"ConvObjectExtractor with input_coordinates=True needs images of static height and width, got "
                    f"shape {shape}."
                )
            shape = shape[:3] + (shape[3] + 2,)
        for conv, bn in self.blocks:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            bn.build(shape)

    def feature_map(self, images, condition=None, training=None):
        """The conv stack's `[batch, d_h, d_w, k]` output, before flattening (used by the CNN+MLP baseline)."""
        if self.film_layers and condition is None:
            raise ValueError(f"ConvObjectExtractor with film_layers={self.film_layers} needs a condition.")
        x = self._with_coordinate_planes(images) if self.input_coordinates else images
        for k, (conv, bn) in enumerate(self.blocks):
            x = conv(x)
            if self.norm_order == "relu_bn":
                x = ops.relu(x)
            x = bn(x, training=training)
            if str(k) in self.film:
                gamma, beta = ops.split(ops.cast(self.film[str(k)](condition), x.dtype)[:, None, None, :], 2, axis=-1)
                x = x * (1.0 + gamma) + beta
            if self.norm_order == "bn_relu":
                x = ops.relu(x)
        return x

    def _with_coordinate_planes(self, images):
        """`images` `[B, H, W, C]` with each pixel's (row, col) in `coordinate_range` appended: `[B, H, W, C + 2]`."""
        height, width = images.shape[1], images.shape[2]
        planes = ops.reshape(cell_coordinates(height, width, *self.coordinate_range), (1, height, width, 2))
        planes = ops.broadcast_to(ops.cast(planes, images.dtype), (ops.shape(images)[0], height, width, 2))
        return ops.concatenate([images, planes], axis=-1)

    def call(self, images, condition=None, training=None):
        x = self.feature_map(images, condition=condition, training=training)
        if self.output_mode == "feature_map":
            return x
        batch = ops.shape(x)[0]
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
        features = ops.reshape(x, (batch, height * width, channels))
        coords = ops.cast(cell_coordinates(height, width, *self.coordinate_range), features.dtype)
        coords = ops.broadcast_to(ops.expand_dims(coords, 0), (batch, height * width, 2))
        return ops.concatenate([features, coords], axis=-1)

    def compute_output_shape(self, images_shape, condition_shape=None):
        shape = tuple(images_shape)
        for conv, _ in self.blocks:
            shape = conv.compute_output_shape(shape)
        channels = self.filters[-1]
        if self.output_mode == "feature_map":
            return shape[:3] + (channels,)
        cells = None if shape[1] is None or shape[2] is None else shape[1] * shape[2]
        return (shape[0], cells, channels + 2)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=list(self.filters),
            kernel_size=self.kernel_size,
            strides=self.strides,
            coordinate_range=list(self.coordinate_range),
            bn_momentum=self.bn_momentum,
            synchronized_bn=self.synchronized_bn,
            output_mode=self.output_mode,
            film_layers=list(self.film_layers),
            input_coordinates=self.input_coordinates,
            norm_order=self.norm_order,
        )
        return config
