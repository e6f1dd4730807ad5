"""Learning-rate schedules of the trainer (`train.lr_schedule`), as Keras schedules of the optimizer step.

Registered under the `relation_networks` package name, as before they had a module of their own: saved models and
optimizers that name them keep loading.
"""

import math

import keras


@keras.saving.register_keras_serializable(package="relation_networks")
class DoublingSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Warm-up by doubling: `peak / 2**doublings`, doubled every `steps_per_doubling` steps, capped at `peak`."""

    def __init__(self, peak, doublings, steps_per_doubling):
        self.peak = float(peak)
        self.doublings = int(doublings)
        self.steps_per_doubling = max(1, int(steps_per_doubling))

    def __call__(self, step):
        k = keras.ops.minimum(keras.ops.floor(keras.ops.cast(step, "float32") / self.steps_per_doubling), self.doublings)
        return self.peak * keras.ops.power(2.0, k - self.doublings)

    def get_config(self):
        return {"peak": self.peak, "doublings": self.doublings, "steps_per_doubling": self.steps_per_doubling}

@keras.saving.register_keras_serializable(package="relation_networks")
class HoldCosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Warm-up, hold, decay: linear from 0 to `peak` over `warmup_steps`, `peak` for `hold_steps`, then a cosine
    decay to `peak * alpha` over `decay_steps`, and `peak * alpha` after."""

    def __init__(self, peak, warmup_steps, hold_steps, decay_steps, alpha=0.0):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.hold_steps = int(hold_steps)
        self.decay_steps = max(1, int(decay_steps))
        self.alpha = float(alpha)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        warmup = ops.minimum(step / self.warmup_steps, 1.0) if self.warmup_steps else 1.0
        progress = ops.clip((step - self.warmup_steps - self.hold_steps) / self.decay_steps, 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        return self.peak * warmup * (self.alpha + (1.0 - self.alpha) * cosine)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "hold_steps": self.hold_steps,
                "decay_steps": self.decay_steps, "alpha": self.alpha}

def make_learning_rate(train, steps_per_epoch, total_steps):
    """The learning rate (a float or a schedule of the optimizer step) described by the `train` config;
    `total_steps` is the run's length, which `train.lr_schedule_steps` replaces when set."""
    total_steps = train.lr_schedule_steps or total_steps
    if train.lr_schedule == "doubling":
        return DoublingSchedule(train.learning_rate, train.lr_doublings, train.lr_doubling_epochs * steps_per_epoch)
    if train.lr_schedule == "cosine":
        warmup = min(train.warmup_steps, max(total_steps - 1, 0))
        if train.lr_decay_fraction < 1.0:
            decay = max(1, round((total_steps - warmup) * train.lr_decay_fraction))
            return HoldCosineSchedule(train.learning_rate, warmup, total_steps - warmup - decay, decay,
                                      train.lr_min_fraction)
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=train.learning_rate if not warmup else 0.0,
            decay_steps=max(total_steps - warmup, 1),
            alpha=train.lr_min_fraction,
            warmup_target=train.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    if train.warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=1, alpha=1.0, warmup_target=train.learning_rate, warmup_steps=train.warmup_steps
        )
    return train.learning_rate
