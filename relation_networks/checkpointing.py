"""A run's checkpoints: what a checkpoint holds, restoring the newest readable one (repairing a lost state file),
saving on a schedule, starting from another model's weights (`train.init_from`), and keeping the best model by a
validation metric (`train.keep_best`)."""

import json
import os
import re
import shutil

import keras
import tensorflow as tf

from relation_networks.errors import UserError
from relation_networks.io import atomic_write_json, atomic_write_text
from relation_networks.serving import MODEL_FILE

BEST_DIR = "best"
BEST_FILE = "best.json"

STATE_FILE = "checkpoint"  # tf.train.CheckpointManager's list of the checkpoints in a directory


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

def _by_name(variables, name, owner):
    named = {name(v).replace("/", "."): v for v in variables}
    if len(named) != len(variables):
        raise ValueError(f"Two variables of the {owner} share a name; give their layers unique names.")
    return named

def restore_latest(checkpoint, manager, log=print):
    """Restore the newest readable checkpoint; fall back to older ones (with a warning) if it is corrupt.

    Returns the restored path, or None when there is no checkpoint. Raises `UserError` when checkpoints exist
    but none can be read (usually: the config changed the model; use a new run directory).
    """
    errors = []
    # A state file without timestamps (written by hand, or by another tool) leaves `manager.checkpoints` empty
    # although it names a checkpoint: that one is restored too, rather than training again from step 0.
    paths = list(manager.checkpoints) or ([manager.latest_checkpoint] if manager.latest_checkpoint else [])
    for path in reversed(paths):
        try:
            checkpoint.read(path).assert_existing_objects_matched()
            return path
        except Exception as e:  # noqa: BLE001  corrupt files raise OpError, IndexError, ValueError, ...
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log(f"WARNING: checkpoint {path} could not be restored ({first_line}); trying the previous one.")
            errors.append(first_line)
    if errors:
        if _old_optimizer_layout(paths[-1]):
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

def repair_state_file(directory, log=print):
    """Rebuild a missing or unreadable checkpoint state file from the `ckpt-<step>` files in `directory`.

    `tf.train.CheckpointManager` ignores a state file it cannot parse: training would start again at step 0 and
    overwrite the checkpoints. The unreadable file is kept as `checkpoint.unreadable`; returns True if repaired.
    """
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
