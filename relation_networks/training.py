"""The one trainer: a synchronous custom training loop shared by every task and every `tf.distribute` strategy.

Why a custom loop rather than `model.fit`: Keras 3's `fit` fails under `MultiWorkerMirroredStrategy`
(keras-team/keras#20585). `strategy.run` + `tf.nn.compute_average_loss` + `optimizer.apply_gradients` works for
the default, mirrored and multi-worker strategies alike, so there is one loop to test.

A run directory holds:
    config.yaml          the resolved config
    checkpoints/         `tf.train.CheckpointManager` checkpoints (model, optimizer incl. step, training time)
    logs/{train,val}/    TensorBoard summaries
    metrics.json         history per epoch and the final evaluation (see `Report` for the report keys)
    model.keras          the final Keras model (with `train.keep_best`: the best one by that validation metric)
    best/                with `train.keep_best`: that model's checkpoint and best.json (metric, value, epoch, step)
Re-running the same command resumes from the newest readable checkpoint.
"""

import itertools
import math
import os
import platform
import shlex
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from relation_networks import config as config_lib
from relation_networks import distribute, precision, tasks
from relation_networks.errors import UserError
from relation_networks.io import atomic_path, atomic_write_json, atomic_write_text
from relation_networks.optimizers import LayerwiseAdam
from relation_networks.tasks.base import prefetched

METRICS_FILE = "metrics.json"
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
BEST_DIR = "best"
BEST_FILE = "best.json"


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


def hardware():
    """A short description of the machine, written next to every result."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        **precision.describe(),
    }


def bfloat16_text(hw):
    """`bfloat16 in hardware: yes (amx_bf16)` / `... no` for a `hardware()` record, or None for records written
    before train.precision=auto (they hold no bfloat16 fields)."""
    if "bfloat16_native" not in hw:
        return None
    flags = ", ".join(hw.get("bfloat16_cpu_flags") or [])
    if "bfloat16_speedup" in hw:  # measured by train.precision=auto
        flags += f"; matmuls {hw['bfloat16_speedup']:.2f}x as fast as float32"
    answer = "no" if not hw["bfloat16_native"] else f"yes ({flags})" if flags else "yes (GPU)"
    return f"bfloat16 in hardware: {answer}"


def hardware_text(hw):
    """One line for a results table: CPU, cores, bfloat16 hardware (where recorded), TensorFlow and Keras."""
    parts = [hw["cpu"], f"{hw['cores']} cores", bfloat16_text(hw), f"TensorFlow {hw['tensorflow']}",
             f"Keras {hw['keras']}"]
    return ", ".join(p for p in parts if p)


def _precision_note(requested, resolved):
    """`float32`, or e.g. `auto -> float32 (no bfloat16 hardware)` for the training log."""
    if requested != "auto":
        return resolved
    note = precision.describe()
    if "bfloat16_speedup" in note:
        reason = f"bfloat16 matmuls measured {note['bfloat16_speedup']:.2f}x as fast as float32"
    else:
        reason = "bfloat16 hardware" if resolved != "float32" else "no bfloat16 hardware"
    return f"auto -> {resolved} ({reason})"


def restore_latest(checkpoint, manager, log=print):
    """Restore the newest readable checkpoint; fall back to older ones (with a warning) if it is corrupt.

    Returns the restored path, or None when there is no checkpoint. Raises `UserError` when checkpoints exist
    but none can be read (usually: the config changed the model; use a new run directory).
    """
    errors = []
    for path in reversed(manager.checkpoints):
        try:
            checkpoint.read(path).assert_existing_objects_matched()
            return path
        except Exception as e:  # noqa: BLE001  corrupt files raise OpError, IndexError, ValueError, ...
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log(f"WARNING: checkpoint {path} could not be restored ({first_line}); trying the previous one.")
            errors.append(first_line)
    if errors:
        if _old_optimizer_layout(manager.checkpoints[-1]):
            raise UserError(
                f"The checkpoints in {manager.directory} hold the optimizer in the layout used before its state was "
                "saved by name (so that a resume may change the learning rate), which this version cannot resume. "
                "Its model.keras and metrics stay usable; to continue training, start a new run_dir."
            )
        raise UserError(
            f"None of the checkpoints in {manager.directory} could be restored (last error: {errors[-1]}). "
            "If the config changed the model, train into a new run_dir."
        )
    return None


def _old_optimizer_layout(path):
    """True for a checkpoint that holds the whole optimizer object (`optimizer/...`) instead of its state by name."""
    try:
        top = {name.split("/", 1)[0] for name, _ in tf.train.list_variables(path)}
    except Exception:  # noqa: BLE001  an unreadable checkpoint is reported by the caller
        return False
    return "optimizer" in top and "optimizer_state" not in top


class _Progress:
    """A Keras progress bar on a terminal, one line per `log_every` steps otherwise (log files)."""

    def __init__(self, total, start, log, every):
        self.log, self.every, self.total = log, every, total
        self.bar = keras.utils.Progbar(total, stateful_metrics=["loss", "accuracy", "lr", "q/s"]) if sys.stdout.isatty() else None
        if self.bar is not None:
            self.bar.update(start)

    def update(self, step, values):
        if self.bar is not None:
            self.bar.update(step, list(values.items()))
        elif step % self.every == 0 or step == self.total:
            text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
            self.log(f"step {step}/{self.total}  {text}")


def _predict_function(model):
    """Inference as one traced function; make it once per run (a new one per evaluation would retrace)."""
    predict = tf.function(lambda features: model(features, training=False), reduce_retracing=True)
    return lambda features: predict(features).numpy()


def _evaluate(task, predict, config, split):
    return task.evaluate(predict, config, split, batch_size=config.train.eval_batch_size)


def make_checkpoint(model, optimizer=None, **extra):
    """A `tf.train.Checkpoint` holding every variable of `model` (by path), the optimizer and `extra` trackables.

    Keras 3 functional models are not tracked by `tf.train.Checkpoint(model=model)`: their trainable weights only
    reach a checkpoint through the optimizer, and non-trainable ones (batch-norm moving statistics) not at all.
    Naming each variable by its path saves all of them.

    The optimizer's state (step counter, Adam moments) is saved by name too, without its learning rate: Keras keeps
    a constant rate as the optimizer's second variable and a schedule as none, so a positional save could not be
    resumed under another `train.learning_rate` or `lr_schedule`; by name, a resumed run follows the config.
    """
    kwargs = dict(model_variables=_by_name(model.variables, lambda v: v.path, "model"), **extra)
    if optimizer is not None:
        state = [v for v in optimizer.variables if v.path.split("/")[-1] != "learning_rate"]
        # Without the optimizer's own (process-dependent, e.g. "adam_1") name.
        kwargs["optimizer_state"] = _by_name(state, lambda v: v.path.split("/", 1)[-1], "optimizer")
    return tf.train.Checkpoint(**kwargs)


def _source_variables(source):
    """{path: value} of the variables stored in `source`: an exported SavedModel directory, a run directory
    (its model.keras) or a .keras file."""
    if os.path.isdir(source) and os.path.isfile(os.path.join(source, "saved_model.pb")):
        loaded = tf.saved_model.load(source)
        return {v.name.rsplit(":", 1)[0]: v.numpy() for v in loaded.variables}
    path = os.path.join(source, MODEL_FILE) if os.path.isdir(source) else source
    if not os.path.isfile(path) or not path.endswith(".keras"):
        raise UserError(
            f"train.init_from={source!r} is neither an exported model directory (with saved_model.pb), a run "
            f"directory with {MODEL_FILE}, nor a .keras file.")
    trained = keras.saving.load_model(path, compile=False, safe_mode=False)
    return {v.path: v.numpy() for v in trained.variables}


def initialize_from(model, source):
    """Set every variable of `model` to the one of the same path in `source` (see `_source_variables`); returns
    the number set. Nothing is changed unless all match: a missing variable or a shape that differs is one
    `UserError` naming them (another model config, or another vocabulary)."""
    values = _source_variables(source)
    wanted = [v for v in model.variables if "seed_generator" not in v.path]
    missing = [v.path for v in wanted if v.path not in values]
    wrong = [f"{v.path} {tuple(v.shape)} vs {values[v.path].shape}" for v in wanted
             if v.path in values and tuple(values[v.path].shape) != tuple(v.shape)]
    if missing or wrong:
        problems = [f"missing {m}" for m in missing[:3]] + [f"shape {w}" for w in wrong[:3]]
        raise UserError(
            f"train.init_from={source!r} does not hold this model's variables ({'; '.join(problems)}"
            f"{'; ...' if len(missing) + len(wrong) > 6 else ''}): it was trained with another model config "
            "or vocabulary.")
    for v in wanted:
        v.assign(values[v.path].astype(v.dtype))
    return len(wanted)


def _by_name(variables, name, owner):
    named = {name(v).replace("/", "."): v for v in variables}
    if len(named) != len(variables):
        raise ValueError(f"Two variables of the {owner} share a name; give their layers unique names.")
    return named


class BestModel:
    """`train.keep_best`: keeps the model of the validation evaluation where `metric` (higher is better) peaked.

    The model's variables are checkpointed in `directory` with `best.json` beside it naming the checkpoint, so the
    best point survives a resumed run. The previous best checkpoint is kept until `best.json` names the new one: a
    kill in between leaves a consistent pair. Used by the chief only.
    """

    def __init__(self, metric, model, directory, log=print):
        self.metric = metric
        self.directory = directory
        self.checkpoint = make_checkpoint(model)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=2)
        self.record_path = os.path.join(directory, BEST_FILE)
        self.log = log
        self.record = self._load()

    def _load(self):
        import json

        try:
            with open(self.record_path) as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        if record.get("metric") != self.metric or not tf.io.gfile.exists(self._path(record) + ".index"):
            return None
        return record

    def _path(self, record):
        return os.path.join(self.directory, record["checkpoint"])

    def check(self, metrics):
        if self.metric not in metrics:
            raise UserError(
                f"train.keep_best={self.metric!r} is not a validation metric of this task; "
                f"its metrics are: {', '.join(metrics)}."
            )

    def offer(self, metrics, epoch, step):
        """Keep the current model if its validation `metrics` beat the best so far."""
        self.check(metrics)
        value = float(metrics[self.metric])
        if self.record is not None and value <= self.record["value"]:
            return
        path = self.manager.save(checkpoint_number=step)
        self.record = {"metric": self.metric, "value": value, "epoch": epoch, "step": int(step),
                       "checkpoint": os.path.basename(path)}
        atomic_write_json(self.record_path, self.record)
        self.log(f"New best val {self.metric} {100 * value:.2f}% (epoch {epoch}, step {step}): kept in {path}.")

    def restore(self):
        """Load the best model's variables into the model; returns the record (None if nothing was kept)."""
        if self.record is None:
            return None
        # every model variable must match; the checkpoint's own save counter is not wanted (expect_partial)
        self.checkpoint.read(self._path(self.record)).assert_existing_objects_matched().expect_partial()
        return self.record


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


def weights_digest(model):
    """SHA-256 over every variable of `model` (name, dtype, shape and bytes), in a fixed order."""
    import hashlib

    digest = hashlib.sha256()
    for variable in sorted(model.variables, key=lambda v: v.path):
        value = keras.ops.convert_to_numpy(variable)
        digest.update(f"{variable.path}:{value.dtype}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


STATE_FILE = "checkpoint"  # tf.train.CheckpointManager's list of the checkpoints in a directory


def repair_state_file(directory, log=print):
    """Rebuild a missing or unreadable checkpoint state file from the `ckpt-<step>` files in `directory`.

    `tf.train.CheckpointManager` ignores a state file it cannot parse: training would start again at step 0 and
    overwrite the checkpoints. The unreadable file is kept as `checkpoint.unreadable`; returns True if repaired.
    """
    import re

    try:
        names = os.listdir(directory)
    except OSError:
        return False
    steps = sorted(int(m.group(1)) for m in (re.fullmatch(r"ckpt-(\d+)\.index", n) for n in names) if m)
    if not steps:
        return False
    path = os.path.join(directory, STATE_FILE)
    state = None
    if os.path.exists(path):
        try:
            state = tf.train.get_checkpoint_state(directory)
        except Exception:  # noqa: BLE001  a state file of binary garbage raises instead of warning
            state = None
        if state is None or not state.model_checkpoint_path:
            import shutil

            shutil.copyfile(path, path + ".unreadable")
    if state is not None and state.model_checkpoint_path:
        return False
    # With the files' times: the manager keeps only checkpoints newer than `last_preserved_timestamp`.
    times = [os.path.getmtime(os.path.join(directory, f"ckpt-{n}.index")) for n in steps]
    lines = ([f'model_checkpoint_path: "ckpt-{steps[-1]}"'] + [f'all_model_checkpoint_paths: "ckpt-{n}"' for n in steps]
             + [f"all_model_checkpoint_timestamps: {t!r}" for t in times]
             + [f"last_preserved_timestamp: {min(times) - 1.0!r}"])
    atomic_write_text(path, "\n".join(lines) + "\n")
    log(f"WARNING: the checkpoint state file {path} was missing or unreadable; rebuilt it from the checkpoints "
        f"present (ckpt-{', ckpt-'.join(map(str, steps))}).")
    return True


class Checkpoints:
    """The run's checkpoints: restore the newest readable one, save every `every` steps and when asked.

    Every worker restores from the chief's directory (`read_dir`; shared storage on a real cluster); each writes
    its own into `write_dir` (saving is collective), and only the chief's (`write_dir == read_dir`) are kept.
    """

    def __init__(self, checkpoint, read_dir, write_dir, keep, every, log=print):
        repair_state_file(read_dir, log=log)
        self.checkpoint, self.every, self.log = checkpoint, every, log
        self.read_manager = tf.train.CheckpointManager(checkpoint, read_dir, max_to_keep=keep)
        self.manager = self.read_manager if write_dir == read_dir else tf.train.CheckpointManager(
            checkpoint, write_dir, max_to_keep=keep)

    def restore(self):
        """Restore the newest readable checkpoint; its path, or None when there is none."""
        return restore_latest(self.checkpoint, self.read_manager, log=self.log)

    def step_done(self, step):
        if step % self.every == 0:
            self.save(step)

    def save(self, step):
        """Save the state at `step`, unless the newest checkpoint already is that step's."""
        latest = self.manager.latest_checkpoint
        if latest is None or not latest.endswith(f"-{step}"):
            self.manager.save(checkpoint_number=step)


class TimeBudget:
    """`train.time_limit_minutes`: the training time used so far (a checkpointed variable, so a resumed run
    continues it) against the limit. `vote(flag)` combines the workers' answers, so all of them stop together."""

    def __init__(self, seconds, minutes, vote=None):
        self.seconds = seconds
        self.limit = minutes * 60 if minutes else None
        self.vote = vote

    def add(self, seconds):
        self.seconds.assign_add(seconds)

    @property
    def used(self):
        return float(self.seconds.numpy())

    def spent(self):
        if self.limit is None:
            return False
        over = self.used >= self.limit
        return bool(self.vote(over)) if self.vote else over


class StopRequest:
    """SIGTERM or SIGINT during training: note it, so the loop finishes the step, saves a checkpoint and stops
    (a pre-empted job loses no step). A second signal interrupts at once. Signal handlers are only installed in
    the main thread; elsewhere `requested` stays False."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self):
        self.signal = None
        self._previous = {}

    @property
    def requested(self):
        return self.signal is not None

    def _handle(self, signum, frame):
        if self.signal is not None:
            self._restore()
            raise KeyboardInterrupt
        import signal

        self.signal = signal.Signals(signum).name

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _restore(self):
        import signal

        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def __exit__(self, *exc):
        self._restore()
        return False


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


class Evaluator:
    """The task's evaluation of the model on a split, with its metrics logged to TensorBoard (`logs/<split>/`)."""

    def __init__(self, task, config, model, run_dir, is_chief):
        self.task, self.config = task, config
        self.predict = _predict_function(model)  # once per run: a new function per evaluation would retrace
        self.run_dir, self.is_chief = run_dir, is_chief
        self.writers = {}

    def writer(self, split):
        if split not in self.writers:
            self.writers[split] = (tf.summary.create_file_writer(os.path.join(self.run_dir, "logs", split))
                                   if self.is_chief else tf.summary.create_noop_writer())
        return self.writers[split]

    def __call__(self, split, step=None):
        """The split's `Report`; with `step`, its metrics are also written to TensorBoard at that step."""
        report = _evaluate(self.task, self.predict, self.config, split)
        if step is not None:
            with self.writer(split).as_default(step=step):
                for name, value in report.metrics.items():
                    tf.summary.scalar(name, value)
                for name, group in report.groups.items():  # the paper's breakdown: bAbI task, question kind, ...
                    tf.summary.scalar(f"accuracy_by_group/{name}", group["accuracy"])
        return report

    def close(self):
        for writer in self.writers.values():
            writer.close()


class _Plan:
    """The run's shape from the config and the data: batch sizes, steps per epoch and where training stops."""

    def __init__(self, config, task, strategy, num_workers):
        train_cfg = config.train
        self.replicas = strategy.num_replicas_in_sync
        self.global_batch = train_cfg.batch_size * num_workers
        if self.global_batch % self.replicas:
            raise UserError(f"train.batch_size x workers ({self.global_batch}) must be divisible by the "
                            f"{self.replicas} replicas.")
        self.group = task.training_group_size(config)
        if (self.global_batch // self.replicas) % self.group:
            raise UserError(
                f"The batch per replica ({self.global_batch // self.replicas}) must be a multiple of the "
                f"{self.group} examples the {task.name} task groups per training element.")
        num_train = task.num_examples(config, "train")
        self.steps_per_epoch = (num_train // num_workers) // train_cfg.batch_size
        if self.steps_per_epoch < 1:
            raise UserError(
                f"train.batch_size={train_cfg.batch_size} is larger than the training data per worker "
                f"({num_train // num_workers} examples): lower train.batch_size.")
        self.total_steps = train_cfg.epochs * self.steps_per_epoch
        self.stop_step = min(self.total_steps, train_cfg.max_steps) if train_cfg.max_steps else self.total_steps

    def epoch_end(self, step):
        return step % self.steps_per_epoch == 0


def train(config, log=print):
    """Train (or resume) the experiment described by `config`; return the final metrics dict.

    SIGTERM or SIGINT saves a checkpoint at the step reached, then raises `KeyboardInterrupt`.
    """
    task = tasks.get(config.task)
    strategy = distribute.make_strategy(config.train.distribute)  # first: multi-worker needs it before other ops
    task_type, task_id, is_chief, num_workers = distribute.worker_info(strategy)
    say = log if is_chief else (lambda *a, **k: None)
    out_dir = distribute.write_dir(config.run_dir, strategy)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision.resolve(config.train.precision))
    try:
        return _train(config, task, strategy, task_id, is_chief, num_workers, out_dir, say)
    finally:
        keras.config.set_dtype_policy(previous_policy)
        if not is_chief:
            import shutil

            shutil.rmtree(out_dir, ignore_errors=True)


def _train(config, task, strategy, task_id, is_chief, num_workers, out_dir, log):
    """Set the run up from its config and directory, train it with `_loop`, then save and evaluate the model."""
    train_cfg = config.train
    keras.utils.set_random_seed(config.seed)
    task.prepare(config, log=log)
    plan = _Plan(config, task, strategy, num_workers)

    with strategy.scope():
        model = task.model_from_config(config)
        optimizer = LayerwiseAdam(make_learning_rate(train_cfg, plan.steps_per_epoch, plan.total_steps),
                                  lr_multipliers=train_cfg.lr_multipliers)
        optimizer.build(model.trainable_variables)
    # Only now, with the config known to build a model and an optimizer, is the run directory written.
    os.makedirs(out_dir, exist_ok=True)
    if is_chief:
        config_lib.save(config, os.path.join(out_dir, CONFIG_FILE))
    seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="train_seconds")
    checkpoints = Checkpoints(make_checkpoint(model, optimizer, train_seconds=seconds),
                              os.path.join(config.run_dir, "checkpoints"), os.path.join(out_dir, "checkpoints"),
                              train_cfg.keep_checkpoints, train_cfg.checkpoint_every_steps, log=log)
    restored = checkpoints.restore()
    step = int(optimizer.iterations.numpy())
    if restored:
        log(f"Resumed from {restored} at step {step} ({float(seconds.numpy()):.0f} s of training so far).")
    elif train_cfg.init_from:
        count = initialize_from(model, train_cfg.init_from)
        log(f"Initialised {count} variables from {train_cfg.init_from}.")

    metrics_path = os.path.join(config.run_dir, METRICS_FILE)
    history = _load_history(metrics_path, step) if is_chief else []
    best = None
    if train_cfg.keep_best and is_chief:
        best = BestModel(train_cfg.keep_best, model, os.path.join(config.run_dir, BEST_DIR), log=log)
        evaluated = [entry["val"] for entry in history if "val" in entry]
        if evaluated:
            best.check(evaluated[-1])  # a wrong metric name fails now, not after the next epoch

    def dataset_fn(epoch, skip):
        def make(input_context):
            per_replica = input_context.get_per_replica_batch_size(plan.global_batch) // plan.group
            ds = task.training_dataset(config, seed=config.seed * 100_003 + epoch, input_context=input_context)
            ds = ds.batch(per_replica, drop_remainder=True).take(plan.steps_per_epoch).skip(skip)
            return prefetched(ds)  # without autotuning: replacing an epoch's iterator stalled up to a minute

        return make

    forward = task.training_forward(config, model)
    # Batches as in training, from a fixed draw (not an epoch's): each worker gets its share of the global batch.
    calibrate = BatchNormCalibration(
        model, forward, lambda: iter(strategy.distribute_datasets_from_function(dataset_fn(-1, 0))),
        min(train_cfg.bn_recalibration_batches, plan.steps_per_epoch), strategy, log=log)
    evaluate = Evaluator(task, config, model, config.run_dir, is_chief)

    @tf.function
    def any_worker(flag):
        votes = strategy.run(lambda: tf.cast(flag, tf.int32))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None) > 0

    budget = TimeBudget(seconds, train_cfg.time_limit_minutes, vote=any_worker if num_workers > 1 else None)
    run = dict(config=config, task=task, strategy=strategy, model=model, optimizer=optimizer, plan=plan,
               checkpoints=checkpoints, budget=budget, calibrate=calibrate, evaluate=evaluate, best=best,
               history=history, metrics_path=metrics_path, forward=forward, dataset_fn=dataset_fn,
               is_chief=is_chief, log=log)
    log(
        f"Training {task.name} ({getattr(config.model, 'type', 'model')}, {model.count_params():,} parameters) "
        f"for {train_cfg.epochs} epochs x {plan.steps_per_epoch} steps, global batch {plan.global_batch} on "
        f"{num_workers} worker(s), precision {_precision_note(train_cfg.precision, keras.config.dtype_policy().name)}."
    )
    with StopRequest() as stop:
        step, stopped = _loop(run, step, stop)
    if stopped == "time_limit":
        log(f"Stopped at step {step}: train.time_limit_minutes={train_cfg.time_limit_minutes} used up.")
    if stopped == "signal":
        checkpoints.save(step)
        if is_chief:
            _write_metrics(metrics_path, config, history, step, plan, seconds, complete=False,
                           stopped=f"signal ({stop.signal})", best=best and best.record)
        log(f"Stopped by {stop.signal} at step {step}: checkpoint saved in {checkpoints.manager.directory}.")
        evaluate.close()
        raise KeyboardInterrupt(stop.signal)
    calibrate(step)
    # Printed by every worker: synchronous training must leave identical digests.
    print(f"worker {task_id}: step {step}, weights sha256 {weights_digest(model)}", flush=True)

    result = {}
    if best is not None:
        if not history or history[-1]["step"] != step:  # stopped inside an epoch: that model is a candidate too
            best.offer(evaluate("val").metrics, round(step / plan.steps_per_epoch, 2), step)
        record = best.restore()
        if record:
            log(f"Final model: the best by val {record['metric']} ({100 * record['value']:.2f}%, "
                f"epoch {record['epoch']}, step {record['step']}).")
    if is_chief:
        with atomic_path(os.path.join(config.run_dir, MODEL_FILE)) as tmp:
            model.save(tmp)
        evaluation = {}
        for split in train_cfg.eval_splits:
            report = evaluate(split, step=step)
            evaluation[split] = report.to_json()
            log(report.table())
        result = _write_metrics(metrics_path, config, history, step, plan, seconds, complete=step >= plan.stop_step,
                                evaluation=evaluation, stopped=stopped, best=best and best.record)
    evaluate.close()
    if num_workers > 1:
        any_worker(False)  # a barrier: no worker leaves (and drops out of the cluster) while the chief still works
    return result


def _validate(run, step, epoch, entry=None):
    """Evaluate the validation split at `step` (chief) and offer the model to `train.keep_best`; every worker
    re-estimates batch-norm statistics first. `entry`: the epoch's record, else a mid-epoch one is made."""
    config = run["config"]
    if "val" in config.train.eval_splits:
        run["calibrate"](step)
    if not run["is_chief"]:
        return
    entry = entry if entry is not None else {"epoch": round(epoch, 3), "step": step}
    if "val" in config.train.eval_splits:
        report = run["evaluate"]("val", step=step)
        entry["val"] = report.metrics
        run["log"](f"epoch {round(epoch, 2):g} (step {step}): "
                   + "  ".join(f"val {k} {100 * v:.2f}%" for k, v in report.metrics.items()))
    run["history"].append(entry)
    try:
        if run["best"] is not None and "val" in entry:
            run["best"].offer(entry["val"], entry["epoch"], step)
    finally:  # written even when keep_best names no metric, so a resumed run can say so before training
        _write_metrics(run["metrics_path"], config, run["history"], step, run["plan"], run["budget"].seconds,
                       complete=False, best=run["best"] and run["best"].record)


def _loop(run, step, stop):
    """The training loop: steps until `plan.stop_step`, the time budget or a stop request (SIGTERM / SIGINT, of
    any worker). Checkpoints, logs, and validates at epoch ends and every `train.eval_every_steps`. Returns the
    step reached and why it stopped early ("time_limit", "signal" or None)."""
    config, task, strategy, model, optimizer, plan = (run[k] for k in ("config", "task", "strategy", "model",
                                                                       "optimizer", "plan"))
    train_cfg = config.train
    forward, budget, log = run["forward"], run["budget"], run["log"]

    def replica_step(features, labels):
        with tf.GradientTape() as tape:
            logits = forward(features, training=True)
            per_example = tf.reshape(task.loss(config, labels, logits), [-1])  # grouped elements: [batch, group]
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=plan.global_batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, tf.cast(tf.reduce_sum(task.correct(config, labels, logits)), loss.dtype)

    if train_cfg.jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def train_step(iterator, stop_flag):
        # The stop votes travel in the same reduction as the loss: all workers learn of a stop at the same step.
        features, labels = next(iterator)
        loss, correct = strategy.run(replica_step, args=(features, labels))
        votes = strategy.run(lambda: tf.cast(stop_flag, tf.float32))
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, tf.stack([tf.cast(loss, tf.float32),
                                                                       tf.cast(correct, tf.float32), votes]), axis=None)
        return total[0], total[1], total[2] > 0

    train_writer = run["evaluate"].writer("train")
    progress = _Progress(plan.stop_step, step, log, train_cfg.log_every_steps)
    # a resumed run whose budget is spent trains no further step: it is only evaluated
    stopped = "time_limit" if budget.spent() else None
    while step < plan.stop_step and stopped is None:
        epoch = step // plan.steps_per_epoch
        iterator = iter(strategy.distribute_datasets_from_function(
            run["dataset_fn"](epoch, step - epoch * plan.steps_per_epoch)))
        epoch_end = min((epoch + 1) * plan.steps_per_epoch, plan.stop_step)
        loss_sum = correct_sum = 0.0
        count = 0
        tick = time.perf_counter()
        interval_start, interval_step = tick, step  # the rate logged is the mean over the logging interval
        while step < epoch_end:
            loss, correct, stop_voted = train_step(iterator, tf.constant(stop.requested))
            step += 1
            count += 1
            loss_sum += float(loss)
            correct_sum += float(correct)
            now = time.perf_counter()
            budget.add(now - tick)
            tick = now
            if bool(stop_voted):
                stopped = "signal"
                break
            if step % train_cfg.log_every_steps == 0 or step == epoch_end:
                rate = (step - interval_step) * plan.global_batch / max(now - interval_start, 1e-9)
                interval_start, interval_step = now, step
                lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
                values = {"loss": loss_sum / count, "accuracy": correct_sum / (count * plan.global_batch)}
                with train_writer.as_default(step=step):
                    for name, value in values.items():
                        tf.summary.scalar(name, value)
                    tf.summary.scalar("learning_rate", lr)
                    tf.summary.scalar("examples_per_second", rate)
                progress.update(step, {"epoch": epoch + 1, **values, "lr": lr, "q/s": round(rate)})
                if budget.spent():
                    stopped = "time_limit"
                    break
            run["checkpoints"].step_done(step)
            if (train_cfg.eval_every_steps and step % train_cfg.eval_every_steps == 0 and not plan.epoch_end(step)
                    and "val" in train_cfg.eval_splits):
                _validate(run, step, step / plan.steps_per_epoch)
                tick = time.perf_counter()  # validation time is not training time

        if stopped == "signal":
            break
        run["checkpoints"].save(step)
        if plan.epoch_end(step):
            _validate(run, step, epoch + 1, {
                "epoch": epoch + 1, "step": step, "train_seconds": round(budget.used, 1),
                "train_loss": loss_sum / max(count, 1),
                "train_accuracy": correct_sum / max(count * plan.global_batch, 1)})
    return step, stopped


def _load_history(path, step):
    """The validation history of a previous (interrupted) run, cut back to the step the checkpoint has."""
    import json

    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            history = json.load(f).get("history", [])
    except (OSError, ValueError):
        return []
    return [entry for entry in history if entry.get("step", 0) <= step]


def _write_metrics(path, config, history, step, plan, train_seconds, complete, evaluation=None, stopped=None,
                   best=None):
    metrics = {
        "task": config.task,
        "model": getattr(config.model, "type", None),
        "seed": config.seed,
        "run_dir": config.run_dir,
        "complete": bool(complete),
        "stopped": stopped,
        "step": int(step),
        "total_steps": int(plan.total_steps),
        "epochs_completed": int(step // plan.steps_per_epoch),
        "train_seconds": round(float(train_seconds.numpy()), 1),
        "hardware": hardware(),
        "command": shlex.join(sys.argv) if sys.argv and sys.argv[0] else None,
        "history": history,
        "evaluation": evaluation or {},
    }
    if best:
        metrics["best"] = best  # the evaluated model is this one (train.keep_best)
    atomic_write_json(path, metrics)
    return metrics
