"""Precise batch norm (`train.bn_recalibration_batches`): moving statistics re-estimated from training batches
before a model is evaluated or saved."""

import itertools
import time

import keras
import numpy as np
import tensorflow as tf


def batch_norm_layers(model):
    """Every `BatchNormalization` layer inside `model`, nested ones included."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]

def recalibrate_batch_norm(model, forward, dataset, strategy=None):
    """Set every batch-norm layer's moving mean and variance to the mean of its batch statistics over `dataset`
    (`(features, labels)` batches as in training; "precise BN"). The moving averages kept during training trail
    the weights and carry the noise of their last few batches; a model whose later layers normalise features the
    question modulates (FiLM) turned out to be very sensitive to that (docs/sort_of_clevr.md). Returns the batch count.

    `forward(features, training)` is the training forward pass. With a `strategy`, `dataset` yields distributed
    batches and each replica runs its part (with synchronized batch norm, every worker ends with the same
    statistics, as in training)."""
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0  # after a training-mode call the moving statistics are that batch's

    @tf.autograph.experimental.do_not_convert  # plain Python: AutoGraph would only warn that it cannot convert it
    def batch_statistics(features):
        forward(features, training=True)
        return [tf.identity(v) for layer in layers for v in (layer.moving_mean, layer.moving_variance)]

    step = tf.function(lambda features: strategy.run(batch_statistics, args=(features,)) if strategy
                       else batch_statistics(features))
    sums, count = None, 0
    try:
        for features, _ in dataset:
            stats = [keras.ops.convert_to_numpy(strategy.experimental_local_results(v)[0] if strategy else v)
                     .astype(np.float64) for v in step(features)]
            sums = stats if sums is None else [a + b for a, b in zip(sums, stats)]
            count += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if count:
        for i, layer in enumerate(layers):
            layer.moving_mean.assign(sums[2 * i] / count)
            layer.moving_variance.assign(sums[2 * i + 1] / count)
    return count

class BatchNormCalibration:
    """`train.bn_recalibration_batches`: precise batch-norm statistics for the model about to be evaluated or
    saved, once per step reached. Every worker runs it (collective ops with synchronized batch norm)."""

    def __init__(self, model, forward, batches, count, strategy, log=print):
        self.model, self.forward, self.batches, self.count = model, forward, batches, count
        self.strategy, self.log = strategy, log
        self.calibrated_at = None

    def __call__(self, step):
        if not self.count or self.calibrated_at == step:
            return
        start = time.perf_counter()
        count = recalibrate_batch_norm(self.model, self.forward, itertools.islice(self.batches(), self.count),
                                       self.strategy)
        self.calibrated_at = step
        if count:
            self.log(f"Batch-norm statistics re-estimated over {count} training batches "
                     f"({time.perf_counter() - start:.0f} s).")
