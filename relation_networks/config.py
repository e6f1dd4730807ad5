"""Experiment configuration: YAML -> typed, validated dataclasses with defaults, plus `a.b=value` overrides.

A config file names a `task`; the task (see `relation_networks.tasks`) supplies the dataclasses of its `data` and
`model` sections, the trainer owns `train`. Every key is checked: an unknown key or a value of the wrong type is
one `ConfigError` naming the key and the file.
"""

import copy
import dataclasses
import os
import typing

import yaml

from relation_networks import registry
from relation_networks.errors import UserError


class ConfigError(UserError):
    """A configuration file or override is invalid."""


def choice(default, choices):
    """A string field restricted to `choices`."""
    return dataclasses.field(default=default, metadata={"choices": tuple(choices)})


def bounded(default, low=None, high=None, *, above=None, below=None, nonempty=False):
    """A number (or a list of numbers, each checked) with `low <= value <= high`, `above < value < below`.

    A list default becomes a default factory; `nonempty` requires at least one item. `None` passes (for
    `Optional` fields, "unset").
    """
    metadata = {"low": low, "high": high, "above": above, "below": below, "nonempty": nonempty}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


MAX_SEED = 2**31 - 1  # seeds reach NumPy, TensorFlow and Python generators; every one accepts this range


def seed_field(default):
    """A random seed: a whole number in [0, MAX_SEED]."""
    return bounded(default, low=0, high=MAX_SEED)


def positive(default, **kwargs):
    """`bounded(default, above=0)`: a size, a count of steps, a rate."""
    return bounded(default, above=0, **kwargs)


def _check_bounds(value, metadata, key, where):
    if value is None:
        return
    items = value if isinstance(value, list) else [value]
    if metadata.get("nonempty") and not items:
        raise ConfigError(f"{where}: '{key}' needs at least one value, got [].")
    low, high, above, below = (metadata.get(k) for k in ("low", "high", "above", "below"))
    for item in items:
        if below is not None and not item < below:
            raise ConfigError(f"{where}: '{key}' must be less than {below}, got {value!r}.")
        if above is not None and not item > above:
            raise ConfigError(f"{where}: '{key}' must be greater than {above}, got {value!r}.")
        if low is not None and item < low:
            raise ConfigError(f"{where}: '{key}' must be at least {low}, got {value!r}.")
        if high is not None and item > high:
            raise ConfigError(f"{where}: '{key}' must be at most {high}, got {value!r}.")


@dataclasses.dataclass
class DistributeConfig:
    strategy: str = choice("default", ("default", "mirrored", "multi_worker"))
    # multi_worker: collective communication implementation ("auto", "ring", "nccl").
    communication: str = choice("auto", ("auto", "ring", "nccl"))


@dataclasses.dataclass
class TrainConfig:
    epochs: int = positive(10)
    batch_size: int = positive(64)  # per worker; the global batch is batch_size x number of workers
    optimizer: str = choice("adam", ("adam",))
    learning_rate: float = positive(1e-4)
    # constant | cosine (decay to lr_min_fraction over the run) | doubling (warm-up: start at
    # learning_rate / 2**doublings and double every lr_doubling_epochs up to learning_rate).
    lr_schedule: str = choice("constant", ("constant", "cosine", "doubling"))
    warmup_steps: int = bounded(0, low=0)
    lr_min_fraction: float = bounded(0.0, 0.0, 1.0)
    # cosine: the decay spans only the last this fraction of the schedule's steps after the warm-up; the rate holds
    # at learning_rate before it (warm-up, hold, decay). 1.0: decay from the end of the warm-up.
    lr_decay_fraction: float = bounded(1.0, high=1.0, above=0.0)
    # The length of the cosine schedule in steps (default: epochs x steps per epoch). For a run stopped by
    # time_limit_minutes or max_steps: the steps it will reach, so that the decay ends where the run does.
    lr_schedule_steps: typing.Optional[int] = positive(None)
    lr_doublings: int = bounded(0, low=0)
    lr_doubling_epochs: float = positive(20.0)
    # Per-layer learning-rate factors, e.g. {cnn: 0.2}: keys are layer paths (the leading names of a variable's
    # path, e.g. `cnn` or `relation_module/g_theta_0`); see `relation_networks.optimizers.LayerwiseAdam`.
    lr_multipliers: typing.Dict[str, float] = dataclasses.field(default_factory=dict)
    # auto: mixed_bfloat16 where the hardware computes in bfloat16 (AMX-BF16 / AVX512-BF16 CPUs, Ampere+ GPUs),
    # else float32 -- emulated bfloat16 is ~2.5x slower than float32 (see relation_networks.precision).
    precision: str = choice("float32", ("auto", "float32", "mixed_bfloat16"))
    jit_compile: bool = False
    shuffle: bool = True  # shuffle the training data (seeded per epoch); off only for equivalence tests
    eval_batch_size: int = positive(256)
    checkpoint_every_steps: int = positive(500)
    keep_checkpoints: int = positive(3)
    log_every_steps: int = positive(50)
    # Also evaluate the validation split every this many steps (unset: at the end of each epoch only), so that a
    # short run has validation points and `keep_best` can choose among them.
    eval_every_steps: typing.Optional[int] = positive(None)
    max_steps: typing.Optional[int] = positive(None)  # stop early (smoke tests); epochs still define the schedule
    time_limit_minutes: typing.Optional[float] = positive(None)  # stop (after a checkpoint) once this much training time is used
    eval_splits: typing.List[str] = dataclasses.field(default_factory=lambda: ["val", "test"])
    # A validation metric (e.g. accuracy, scenes_all_correct; higher is better): keep the model of the evaluation
    # where it peaked in <run_dir>/best/, and make that model the run's model.keras and final evaluation.
    keep_best: typing.Optional[str] = None
    # Precise batch norm: before every evaluation and before the model is saved, set each batch-norm layer's moving
    # statistics to the mean of its batch statistics over this many training batches (in training mode, the model
    # unchanged otherwise); 0 keeps the moving averages of training.
    bn_recalibration_batches: int = bounded(0, low=0)
    # Start a new run from trained weights (fine-tuning, a warm restart): an exported model directory
    # (saved_models/<name>/<version>), a run directory (its model.keras) or a .keras file. Every model variable is
    # matched by path and shape; the optimizer starts fresh. Ignored once the run has a checkpoint to resume.
    init_from: typing.Optional[str] = None
    distribute: DistributeConfig = dataclasses.field(default_factory=DistributeConfig)


@dataclasses.dataclass
class ExperimentConfig:
    task: str
    data: typing.Any
    model: typing.Any
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    seed: int = 0
    run_dir: typing.Optional[str] = None  # default: runs/<config file name>


# -- conversion ------------------------------------------------------------------------------------------------


def _type_name(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, typing.List):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (dict, typing.Dict):
        return f"mapping of {' to '.join(_type_name(a) for a in typing.get_args(tp))}"
    return getattr(tp, "__name__", str(tp))


def _convert(value, tp, key, where, choices=None):
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key, where, choices)
    if origin in (list, typing.List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' must be a {_type_name(tp)}, got {value!r}.")
        (inner,) = typing.get_args(tp)
        return [_convert(v, inner, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a {_type_name(tp)}, got {value!r}.")
        key_type, value_type = typing.get_args(tp)
        return {_convert(k, key_type, f"{key} key", where): _convert(v, value_type, f"{key}.{k}", where)
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, key, where)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{where}: '{key}' must be a {_type_name(tp)}, got {value!r} ({type(value).__name__}).")
    if choices and value not in choices:
        raise ConfigError(f"{where}: '{key}' must be one of {list(choices)}, got {value!r}.")
    return value


def _from_dict(cls, raw, prefix, where):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: '{prefix}' must be a mapping of keys to values, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{where}: unknown key '{key}'. Known keys here: {', '.join(sorted(fields))}.")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in raw:
            values[name] = _convert(raw[name], hints[name], key, where, f.metadata.get("choices"))
            _check_bounds(values[name], f.metadata, key, where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: required key '{key}' is missing.")
    try:
        return cls(**values)
    except ConfigError as e:  # a section's own checks of its values together (`__post_init__`)
        raise ConfigError(f"{where}: {e}") from None


def parse_override(text):
    """`'a.b=value'` -> `(['a', 'b'], value)`, the value parsed as YAML (so `3`, `1e-4`, `[1, 2]`, `true` work)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.epochs=3.")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({e}).") from None
    return [k for k in key.strip().split(".") if k], parsed


def _looks_float(text):
    try:
        float(text)
    except ValueError:
        return False
    return any(c in text.lower() for c in "e.") and text.lower() not in ("nan", "inf", "-inf", "+inf")


def apply_overrides(raw, overrides):
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        if not path:
            raise ConfigError(f"--set {text!r}: empty key.")
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is not a section.")
            node = child
        node[path[-1]] = value
    return raw


def _fix_yaml_floats(node):
    if isinstance(node, dict):
        return {k: _fix_yaml_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_yaml_floats(v) for v in node]
    if isinstance(node, str) and _looks_float(node):
        return float(node)
    return node


def _seed(value, where):
    seed = _convert(value, int, "seed", where)
    _check_bounds(seed, {"low": 0, "high": MAX_SEED}, "seed", where)
    return seed


def from_dict(raw, where="<config>"):
    """Build a validated `ExperimentConfig` from a plain dict (already overridden)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the file must hold a mapping of keys to values.")
    raw = _fix_yaml_floats(raw)
    if "task" not in raw:
        raise ConfigError(f"{where}: required key 'task' is missing. Known tasks: {', '.join(registry.names())}.")
    if raw["task"] not in registry.names():
        raise ConfigError(f"{where}: unknown task {raw['task']!r}. Known tasks: {', '.join(registry.names())}.")
    task = registry.get(raw["task"])
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(ExperimentConfig)})
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{unknown[0]}'. Known top-level keys: "
            f"{', '.join(f.name for f in dataclasses.fields(ExperimentConfig))}."
        )
    train = _from_dict(TrainConfig, raw.get("train"), "train", where)
    unknown_splits = [s for s in train.eval_splits if s not in task.splits]
    if unknown_splits:
        raise ConfigError(f"{where}: 'train.eval_splits' names {unknown_splits}, which task {raw['task']!r} does not "
                          f"have; its splits are {list(task.splits)}.")
    if train.keep_best is not None and "val" not in train.eval_splits:
        raise ConfigError(
            f"{where}: 'train.keep_best' ({train.keep_best!r}) needs the validation split: add 'val' to "
            f"train.eval_splits (now {train.eval_splits})."
        )
    config = ExperimentConfig(
        task=raw["task"],
        data=_from_dict(task.data_config, raw.get("data"), "data", where),
        model=_from_dict(task.model_config, raw.get("model"), "model", where),
        train=train,
        seed=_seed(raw.get("seed", 0), where),
        run_dir=_convert(raw.get("run_dir"), typing.Optional[str], "run_dir", where),
    )
    metrics = task.metric_names(config)
    if train.keep_best is not None and metrics is not None and train.keep_best not in metrics:
        raise ConfigError(f"{where}: 'train.keep_best' ({train.keep_best!r}) is not a validation metric of task "
                          f"{raw['task']!r} with this config; its metrics are: {', '.join(metrics)}.")
    return config


def read_yaml(path, error=ConfigError, what="Config file"):
    """The parsed contents of the YAML file at `path`; `error` (naming `what`, or the YAML fault) if it is missing
    or not valid YAML."""
    if not os.path.isfile(path):
        raise error(f"{what} not found: {path}")
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None


def load(path, overrides=()):
    """Load a YAML config file, apply `--set` style overrides and validate it."""
    raw = apply_overrides(read_yaml(path) or {}, overrides)
    config = from_dict(raw, where=path if not overrides else f"{path} (with --set {' '.join(overrides)})")
    if config.run_dir is None:
        config.run_dir = os.path.join("runs", os.path.splitext(os.path.basename(path))[0])
    return config


def to_dict(config):
    return dataclasses.asdict(config)


def save(config, path):
    """Write the config as YAML (atomically)."""
    from relation_networks.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
