"""The one trainer: a synchronous custom training loop shared by every task and every `tf.distribute` strategy.

Why a custom loop rather than `model.fit`: Keras 3's `fit` fails under `MultiWorkerMirroredStrategy`
(keras-team/keras#20585). `strategy.run` + `tf.nn.compute_average_loss` + `optimizer.apply_gradients` works for
the default, mirrored and multi-worker strategies alike, so there is one loop to test.

`train(config)` sets a run up (`_setup`: the model, the optimizer and the parts below), runs `_loop` over
`make_train_step`'s step until the run's end, the time budget or a stop request, then saves and evaluates the model
(`_finish`). The parts, each in its own module:
    relation_networks.schedules       learning-rate schedules
    relation_networks.checkpointing   checkpoints, restore and repair, train.init_from, train.keep_best
    relation_networks.batch_norm      batch-norm statistics re-estimated before evaluation
    relation_networks.run_records     progress lines and metrics.json
    relation_networks.machine         the machine description written next to every result

A run directory holds:
    config.yaml          the resolved config
    checkpoints/         `tf.train.CheckpointManager` checkpoints (model, optimizer incl. step, training time)
    logs/{train,val}/    TensorBoard summaries
    metrics.json         history per epoch and the final evaluation (see `Report` for the report keys)
    model.keras          the final Keras model (with `train.keep_best`: the best one by that validation metric)
    best/                with `train.keep_best`: that model's checkpoint and best.json (metric, value, epoch, step)
    .lock                while a training runs in it (a second one refuses to start)
Re-running the same command resumes from the newest readable checkpoint.
"""

import dataclasses
import os
import time
import typing

import keras
import tensorflow as tf

from relation_networks import config as config_lib
from relation_networks import distribute, precision, tasks
from relation_networks.batch_norm import BatchNormCalibration
from relation_networks.checkpointing import BEST_DIR, BestModel, Checkpoints, initialize_from, make_checkpoint
from relation_networks.errors import UserError
from relation_networks.io import atomic_path
from relation_networks.machine import precision_note
from relation_networks.optimizers import LayerwiseAdam
from relation_networks.run_records import (CONFIG_FILE, METRICS_FILE, MODEL_FILE, Evaluator, Progress, duration,
                                           load_history, write_metrics)
from relation_networks.run_lock import RunLock
from relation_networks.schedules import make_learning_rate
from relation_networks.stopping import StopRequest, TimeBudget
from relation_networks.tasks.base import prefetched

# Each epoch's shuffle (and the calibration draw) is seeded from the run's seed and the epoch: seed * this + epoch,
# a prime larger than any epoch count, so no two (seed, epoch) pairs share a shuffle.
EPOCH_SEED_STRIDE = 100_003
CALIBRATION_EPOCH = -1  # the "epoch" of the fixed draw of training batches that batch-norm calibration reads


class Plan:
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


def make_train_step(task, config, model, optimizer, strategy, global_batch, forward=None):
    """The trainer's step: `step(iterator, stop_flag) -> (loss, correct, stop)` as one `tf.function`.

    It takes the next distributed batch of `iterator`, runs the forward and backward pass on every replica
    (`forward(features, training)`, default the task's `training_forward`), applies the gradients, and returns the
    global mean loss, the number of correct examples and whether any worker asked to stop: the stop votes travel in
    the same reduction as the loss, so all workers learn of a stop at the same step. `tools/benchmark.py` times
    this same function."""
    forward = forward or task.training_forward(config, model)

    def replica_step(features, labels):
        with tf.GradientTape() as tape:
            logits = forward(features, training=True)
            per_example = tf.reshape(task.loss(config, labels, logits), [-1])  # grouped elements: [batch, group]
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, tf.cast(tf.reduce_sum(task.correct(config, labels, logits)), loss.dtype)

    if config.train.jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def train_step(iterator, stop_flag):
        features, labels = next(iterator)
        loss, correct = strategy.run(replica_step, args=(features, labels))
        votes = strategy.run(lambda: tf.cast(stop_flag, tf.float32))
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, tf.stack([tf.cast(loss, tf.float32),
                                                                       tf.cast(correct, tf.float32), votes]), axis=None)
        return total[0], total[1], total[2] > 0

    return train_step


def weights_digest(model):
    """SHA-256 over every variable of `model` (name, dtype, shape and bytes), in a fixed order."""
    import hashlib

    digest = hashlib.sha256()
    for variable in sorted(model.variables, key=lambda v: v.path):
        value = keras.ops.convert_to_numpy(variable)
        digest.update(f"{variable.path}:{value.dtype}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def array_trainer(task, config, model, batch_size, total_steps, lr_multipliers=None):
    """The trainer's optimiser (`LayerwiseAdam` under the config's schedule over `total_steps`) and step
    (`make_train_step`, forward = `model` itself) for diagnostics that train on NumPy arrays: returns
    `fit(features, labels, seed, on_step=None) -> mean loss`, one shuffled pass over the arrays in whole batches,
    calling `on_step(step)` after each step."""
    optimizer = LayerwiseAdam(make_learning_rate(config.train, total_steps, total_steps),
                              lr_multipliers=config.train.lr_multipliers if lr_multipliers is None else lr_multipliers)
    optimizer.build(model.trainable_variables)
    step = make_train_step(task, config, model, optimizer, tf.distribute.get_strategy(), batch_size,
                           forward=lambda features, training: model(features, training=training))
    no_stop = tf.constant(False)

    def fit(features, labels, seed, on_step=None):
        count = len(labels) // batch_size
        ds = tf.data.Dataset.from_tensor_slices((features, labels)).shuffle(len(labels), seed=seed)
        iterator = iter(ds.batch(batch_size, drop_remainder=True))
        total = 0.0
        for _ in range(count):
            loss, _, _ = step(iterator, no_stop)
            total += float(loss)
            if on_step is not None:
                on_step(int(optimizer.iterations.numpy()))
        return total / max(count, 1)

    return fit


@dataclasses.dataclass
class Parts:
    """What a run is made of, built once by `_setup` and read by the loop and the finish."""

    config: typing.Any
    task: typing.Any
    strategy: typing.Any
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    plan: Plan
    checkpoints: Checkpoints
    budget: TimeBudget
    calibrate: BatchNormCalibration
    evaluate: Evaluator
    best: typing.Optional[BestModel]
    forward: typing.Callable
    dataset_fn: typing.Callable
    is_chief: bool
    log: typing.Callable
    metrics_path: str
    any_worker: typing.Callable  # a flag of any worker -> True on all (a collective: every worker must call it)


@dataclasses.dataclass
class LoopState:
    """The loop's state: the step reached, the validation history, and why training stopped early
    ("time_limit", "signal" or None)."""

    step: int
    history: list
    stopped: typing.Optional[str] = None

    def epoch(self, plan):
        return self.step // plan.steps_per_epoch


def train(config, log=print):
    """Train (or resume) the experiment described by `config`; return the final metrics dict.

    SIGTERM or SIGINT saves a checkpoint at the step reached, then raises `KeyboardInterrupt`. A second training in
    the same run directory refuses to start while this one runs (`RunLock`).
    """
    task = tasks.get(config.task)
    strategy = distribute.make_strategy(config.train.distribute)  # first: multi-worker needs it before other ops
    task_type, task_id, is_chief, num_workers = distribute.worker_info(strategy)
    say = log if is_chief else (lambda *a, **k: None)
    out_dir = distribute.write_dir(config.run_dir, strategy)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision.resolve(config.train.precision))
    try:
        with RunLock(config.run_dir, enabled=is_chief):
            return _train(config, task, strategy, task_id, is_chief, num_workers, out_dir, say)
    finally:
        keras.config.set_dtype_policy(previous_policy)
        if not is_chief:
            import shutil

            shutil.rmtree(out_dir, ignore_errors=True)


def _train(config, task, strategy, task_id, is_chief, num_workers, out_dir, log):
    parts, state = _setup(config, task, strategy, is_chief, num_workers, out_dir, log)
    with StopRequest() as stop:
        _loop(parts, state, stop)
    if state.stopped == "signal":
        _stop_for_signal(parts, state, stop.signal)
    return _finish(parts, state, task_id, num_workers)


def _setup(config, task, strategy, is_chief, num_workers, out_dir, log):
    """Data, model, optimizer and the run's parts; restores the newest checkpoint (or `train.init_from`)."""
    train_cfg = config.train
    keras.utils.set_random_seed(config.seed)
    task.prepare(config, log=log)
    plan = Plan(config, task, strategy, num_workers)

    with strategy.scope():
        model = task.model_from_config(config)
        optimizer = LayerwiseAdam(make_learning_rate(train_cfg, plan.steps_per_epoch, plan.total_steps),
                                  lr_multipliers=train_cfg.lr_multipliers)
        optimizer.build(model.trainable_variables)
    seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="train_seconds")
    checkpoints = Checkpoints(make_checkpoint(model, optimizer, train_seconds=seconds),
                              os.path.join(config.run_dir, "checkpoints"), os.path.join(out_dir, "checkpoints"),
                              train_cfg.keep_checkpoints, train_cfg.checkpoint_every_steps, log=log)
    # A run directory whose checkpoints hold another model is refused here (UserError), before anything is
    # written: its config.yaml and results stay as they are (a finished run stays exportable).
    restored = checkpoints.restore()
    os.makedirs(out_dir, exist_ok=True)
    if is_chief:
        config_lib.save(config, os.path.join(out_dir, CONFIG_FILE))
    step = int(optimizer.iterations.numpy())
    if restored:
        log(f"Resumed from {restored} at step {step} ({duration(float(seconds.numpy()))} of training so far).")
    elif train_cfg.init_from:
        count = initialize_from(model, train_cfg.init_from)
        log(f"Initialised {count} variables from {train_cfg.init_from}.")

    metrics_path = os.path.join(config.run_dir, METRICS_FILE)
    history = load_history(metrics_path, step) if is_chief else []
    best = None
    if train_cfg.keep_best and is_chief:
        best = BestModel(train_cfg.keep_best, model, os.path.join(config.run_dir, BEST_DIR), log=log)
        evaluated = [entry["val"] for entry in history if "val" in entry]
        if evaluated:
            best.check(evaluated[-1])  # a wrong metric name fails now, not after the next epoch

    def dataset_fn(epoch, skip):
        def make(input_context):
            per_replica = input_context.get_per_replica_batch_size(plan.global_batch) // plan.group
            ds = task.training_dataset(config, seed=config.seed * EPOCH_SEED_STRIDE + epoch,
                                       input_context=input_context)
            ds = ds.batch(per_replica, drop_remainder=True).take(plan.steps_per_epoch).skip(skip)
            return prefetched(ds)  # without autotuning: replacing an epoch's iterator stalled up to a minute

        return make

    forward = task.training_forward(config, model)
    # Batches as in training, from a fixed draw (not an epoch's): each worker gets its share of the global batch.
    calibrate = BatchNormCalibration(
        model, forward, lambda: iter(strategy.distribute_datasets_from_function(dataset_fn(CALIBRATION_EPOCH, 0))),
        min(train_cfg.bn_recalibration_batches, plan.steps_per_epoch), strategy, log=log)
    evaluate = Evaluator(task, config, model, config.run_dir, is_chief)

    @tf.function
    def any_worker(flag):
        votes = strategy.run(lambda: tf.cast(flag, tf.int32))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None) > 0

    budget = TimeBudget(seconds, train_cfg.time_limit_minutes, vote=any_worker if num_workers > 1 else None)
    parts = Parts(config=config, task=task, strategy=strategy, model=model, optimizer=optimizer, plan=plan,
                  checkpoints=checkpoints, budget=budget, calibrate=calibrate, evaluate=evaluate, best=best,
                  forward=forward, dataset_fn=dataset_fn, is_chief=is_chief, log=log, metrics_path=metrics_path,
                  any_worker=any_worker)
    log(
        f"Training {task.name} ({getattr(config.model, 'type', 'model')}, {model.count_params():,} parameters) "
        f"for {train_cfg.epochs} epochs x {plan.steps_per_epoch} steps, global batch {plan.global_batch} on "
        f"{num_workers} worker(s), precision {precision_note(train_cfg.precision, keras.config.dtype_policy().name)}."
    )
    return parts, LoopState(step=step, history=history)


def _stop_for_signal(parts, state, signal_name):
    """SIGTERM / SIGINT: checkpoint the step reached, record it, and leave with `KeyboardInterrupt`."""
    parts.checkpoints.save(state.step)
    if parts.is_chief:
        _record(parts, state, complete=False, stopped=f"signal ({signal_name})")
    parts.log(f"Stopped by {signal_name} at step {state.step}: checkpoint saved in "
              f"{parts.checkpoints.manager.directory}.")
    parts.evaluate.close()
    raise KeyboardInterrupt(signal_name)


def _record(parts, state, complete, evaluation=None, stopped=None):
    return write_metrics(parts.metrics_path, parts.config, state.history, state.step, parts.plan, parts.budget.seconds,
                         complete=complete, evaluation=evaluation, stopped=stopped,
                         best=parts.best and parts.best.record)


def _finish(parts, state, task_id, num_workers):
    """After the loop: precise batch norm, the best model if kept, then (chief) model.keras, the final evaluation
    and metrics.json."""
    config, log, step = parts.config, parts.log, state.step
    if state.stopped == "time_limit":
        log(f"Stopped at step {step}: train.time_limit_minutes={config.train.time_limit_minutes} used up.")
    parts.calibrate(step)
    # Printed by every worker: synchronous training must leave identical digests.
    print(f"worker {task_id}: step {step}, weights sha256 {weights_digest(parts.model)}", flush=True)
    result = {}
    if parts.best is not None:
        if not state.history or state.history[-1]["step"] != step:  # stopped inside an epoch: a candidate too
            parts.best.offer(parts.evaluate("val").metrics, round(step / parts.plan.steps_per_epoch, 2), step)
        record = parts.best.restore()
        if record:
            log(f"Final model: the best by val {record['metric']} ({100 * record['value']:.2f}%, "
                f"epoch {record['epoch']}, step {record['step']}).")
    if parts.is_chief:
        model_path = os.path.join(config.run_dir, MODEL_FILE)
        with atomic_path(model_path) as tmp:
            parts.model.save(tmp)
        evaluation = {}
        for split in config.train.eval_splits:
            report = parts.evaluate(split, step=step)
            evaluation[split] = report.to_json()
            log(report.table())
        result = _record(parts, state, complete=step >= parts.plan.stop_step, evaluation=evaluation,
                         stopped=state.stopped)
        log(f"Model saved to {model_path} ({duration(parts.budget.used)} of training). Next: "
            f"`python tools/evaluate.py --run {config.run_dir} --split test`, "
            f"`python tools/export.py --run {config.run_dir}`; curves: `tensorboard --logdir {config.run_dir}/logs`.")
    parts.evaluate.close()
    if num_workers > 1:
        parts.any_worker(False)  # a barrier: no worker leaves the cluster while the chief still works
    return result


def _validate(parts, state, epoch, entry=None):
    """Evaluate the validation split at the step reached (chief) and offer the model to `train.keep_best`; every
    worker re-estimates batch-norm statistics first. `entry`: the epoch's record, else a mid-epoch one is made."""
    config, step = parts.config, state.step
    if "val" in config.train.eval_splits:
        parts.calibrate(step)
    if not parts.is_chief:
        return
    entry = entry if entry is not None else {"epoch": round(epoch, 3), "step": step}
    if "val" in config.train.eval_splits:
        report = parts.evaluate("val", step=step)
        entry["val"] = report.metrics
        parts.log(f"epoch {round(epoch, 2):g} (step {step}): "
                  + "  ".join(f"val {k} {100 * v:.2f}%" for k, v in report.metrics.items()))
    state.history.append(entry)
    try:
        if parts.best is not None and "val" in entry:
            parts.best.offer(entry["val"], entry["epoch"], step)
    finally:  # written even when keep_best names no metric, so a resumed run can say so before training
        _record(parts, state, complete=False)


class _Interval:
    """Training loss, accuracy and speed since the last log line, and training time (validation excluded)."""

    def __init__(self, parts, step):
        self.parts = parts
        self.loss_sum = self.correct_sum = 0.0
        self.count = 0
        self.tick = self.start = time.perf_counter()
        self.start_step = step

    def add(self, loss, correct):
        self.loss_sum += float(loss)
        self.correct_sum += float(correct)
        self.count += 1
        now = time.perf_counter()
        self.parts.budget.add(now - self.tick)
        self.tick = now

    def restart_clock(self):
        """Time spent outside training steps (validation) is not training time."""
        self.tick = time.perf_counter()

    def values(self, step):
        """Mean loss and accuracy of the epoch so far, and the examples per second since the last call."""
        now = time.perf_counter()
        rate = (step - self.start_step) * self.parts.plan.global_batch / max(now - self.start, 1e-9)
        self.start, self.start_step = now, step
        count = max(self.count, 1)
        return {"loss": self.loss_sum / count,
                "accuracy": self.correct_sum / (count * self.parts.plan.global_batch)}, rate


def _log_step(parts, state, interval, writer, progress, epoch):
    values, rate = interval.values(state.step)
    lr = float(keras.ops.convert_to_numpy(parts.optimizer.learning_rate))
    with writer.as_default(step=state.step):
        for name, value in values.items():
            tf.summary.scalar(name, value)
        tf.summary.scalar("learning_rate", lr)
        tf.summary.scalar("examples_per_second", rate)
    progress.update(state.step, {"epoch": epoch + 1, **values, "lr": lr, "q/s": round(rate)})


def _loop(parts, state, stop):
    """Train from `state.step` until `plan.stop_step`, the time budget or a stop request (SIGTERM / SIGINT, of any
    worker), updating `state`. Checkpoints, logs, and validates at epoch ends and every `train.eval_every_steps`."""
    plan, train_cfg = parts.plan, parts.config.train
    train_step = make_train_step(parts.task, parts.config, parts.model, parts.optimizer, parts.strategy,
                                 plan.global_batch, forward=parts.forward)
    writer = parts.evaluate.writer("train")
    progress = Progress(plan.stop_step, state.step, parts.log, train_cfg.log_every_steps)
    if parts.budget.spent():  # a resumed run whose budget is spent trains no further step: it is only evaluated
        state.stopped = "time_limit"
    while state.step < plan.stop_step and state.stopped is None:
        epoch = state.epoch(plan)
        iterator = iter(parts.strategy.distribute_datasets_from_function(
            parts.dataset_fn(epoch, state.step - epoch * plan.steps_per_epoch)))
        epoch_end = min((epoch + 1) * plan.steps_per_epoch, plan.stop_step)
        interval = _Interval(parts, state.step)
        while state.step < epoch_end and state.stopped is None:
            loss, correct, stop_voted = train_step(iterator, tf.constant(stop.requested))
            state.step += 1
            interval.add(loss, correct)
            if bool(stop_voted):
                state.stopped = "signal"
                continue
            if state.step % train_cfg.log_every_steps == 0 or state.step == epoch_end:
                _log_step(parts, state, interval, writer, progress, epoch)
                if parts.budget.spent():
                    state.stopped = "time_limit"
            parts.checkpoints.step_done(state.step)
            if (train_cfg.eval_every_steps and state.step % train_cfg.eval_every_steps == 0 and state.stopped is None
                    and not plan.epoch_end(state.step) and "val" in train_cfg.eval_splits):
                _validate(parts, state, state.step / plan.steps_per_epoch)
                interval.restart_clock()
        if state.stopped == "signal":
            break
        parts.checkpoints.save(state.step)
        if plan.epoch_end(state.step):
            _validate(parts, state, epoch + 1, {
                "epoch": epoch + 1, "step": state.step, "train_seconds": round(parts.budget.used, 1),
                "train_loss": interval.loss_sum / max(interval.count, 1),
                "train_accuracy": interval.correct_sum / max(interval.count * plan.global_batch, 1)})
