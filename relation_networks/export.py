"""The one export path for every task: SavedModel (TF Serving layout) + TFLite (float32 and dynamic-range
quantised), checked for parity against the Keras model on real task inputs, written atomically.

Layout of `saved_models/<task>/<version>/`:
    saved_model.pb, variables/, assets/   the SavedModel; signature `serving_default`
    model.tflite                           float32 TFLite, signature `serving_default`
    model_quant.tflite                     dynamic-range quantised TFLite (int8 weights), when its top-1 answers
                                           agree with the Keras model's on >= 90% of the check's inputs
    MODEL_CARD.md                          what the model scores on which split, how it was trained, and the
                                           command that reproduces the number
    config.yaml                            the experiment config (for tools/evaluate.py --model)
    signature.json                         input/output names, shapes and dtypes; the parity results
    example_request.json                   a TF Serving REST body (`instances`) made from a real example
Extra files beside a SavedModel are ignored by TF Serving.

Signature (every task): inputs named after the model's `keras.Input`s (a task's docs list them); outputs
`logits` (float32), `probabilities` (softmax, or sigmoid for multi-label tasks) and `answer_id` (int32 argmax, or
0/1 per output for multi-label tasks).
"""

import json
import os
import re

import numpy as np

from relation_networks import config as config_lib
from relation_networks.errors import UserError
from relation_networks.io import atomic_directory, atomic_write_json, atomic_write_text

SIGNATURE = "serving_default"
FLOAT_TOLERANCE = 1e-4  # max |probability difference| for SavedModel and float32 TFLite
# The dynamic-range quantised TFLite is judged by its answers: the fraction of top-1 answers (of per-output
# decisions, multi-label) it shares with the Keras model. Its probabilities are reported, not bounded: int8 weights
# move a lightly trained model's probabilities by ~0.1 while it keeps its answers.
QUANTIZED_MIN_AGREEMENT = 0.9
QUANTIZED_FILE = "model_quant.tflite"
MODEL_CARD = "MODEL_CARD.md"


class ExportError(UserError):
    """The export failed a check; nothing was written."""


class RequestError(UserError):
    """A prediction request does not match the model's signature."""


def _serving_specs(model, task, config):
    import tensorflow as tf

    batch = task.tflite_batch_size(config)
    specs = {}
    for tensor in model.inputs:
        name = tensor.name.split(":")[0]
        specs[name] = tf.TensorSpec([batch] + list(tensor.shape[1:]), tf.as_dtype(tensor.dtype), name=name)
    return specs


def float32_model(task, config, trained):
    """Rebuild `trained` under the float32 policy (a mixed-precision model's bfloat16 ops do not belong in a
    serving graph or a TFLite flatbuffer) and copy its weights."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        model = task.model_from_config(config)
    finally:
        keras.config.set_dtype_policy(previous)
    model.set_weights(trained.get_weights())
    return model


def _example_batch(task, config, count):
    """`count` real examples (features dict of NumPy arrays) from the test split, else validation."""
    for split in ("test", "val", "train"):
        try:
            ds = task.dataset(config, split, training=False).batch(count).take(1)
            for features, _ in ds.as_numpy_iterator():
                return features, split
        except (UserError, ValueError, OSError):
            continue
    raise ExportError(f"No data found for task {task.name!r} to check the export with; check data.dir.")


def _compare(reference, candidate, name, max_diff, min_agreement, multilabel):
    """Parity of `candidate` probabilities with `reference`; `max_diff=None` bounds only the agreement."""
    diff = float(np.max(np.abs(reference - candidate)))
    if multilabel:
        agreement = float(np.mean((reference > 0.5) == (candidate > 0.5)))
    else:
        agreement = float(np.mean(reference.argmax(-1) == candidate.argmax(-1)))
    ok = (max_diff is None or diff <= max_diff) and agreement >= min_agreement
    return {"format": name, "max_abs_diff": diff, "top1_agreement": agreement, "tolerance": max_diff,
            "min_agreement": min_agreement, "ok": ok}


def export(run_dir, out_root="saved_models", version=None, parity_examples=64, log=print,
           float_tolerance=FLOAT_TOLERANCE, quantized_min_agreement=QUANTIZED_MIN_AGREEMENT, quantized=True,
           overrides=(), name=None):
    """Export a trained run to `out_root/<name>/<version>/` (`name`: the model's name in TF Serving, default the
    task's); return that path.

    Refuses (raises `ExportError`, writes nothing) if the SavedModel or the float32 TFLite model disagrees with
    the Keras model beyond `float_tolerance` on `parity_examples` real inputs. The quantised TFLite model
    (`quantized=False`: none) is left out, with a warning, when its answers agree less than
    `quantized_min_agreement`; the other formats are exported all the same.
    """
    import keras
    import tensorflow as tf

    from relation_networks import inference, tasks

    config, trained, _ = inference.load_keras_predictor(run_dir, overrides)
    task = tasks.get(config.task)
    model = float32_model(task, config, trained)
    task_dir = os.path.join(out_root, name or task.name)
    if version is None:
        existing = [int(v) for v in os.listdir(task_dir) if v.isdigit()] if os.path.isdir(task_dir) else []
        version = max(existing, default=0) + 1
    target = os.path.join(task_dir, str(version))
    if os.path.exists(target):
        raise ExportError(f"{target} already exists; pass another --version (TF Serving versions are immutable).")

    specs = _serving_specs(model, task, config)
    features, split = _example_batch(task, config, parity_examples)
    multilabel = task.multilabel(config)

    def serve(inputs):
        logits = tf.cast(model(inputs, training=False), tf.float32)
        return task.serving_outputs(config, logits)

    with atomic_directory(target) as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(name=SIGNATURE, fn=serve, input_signature=[specs])
        archive.write_out(tmp, verbose=False)

        reference = task.serving_outputs(config, model(features, training=False))["probabilities"].numpy()
        checks = []
        saved = load_saved_model(tmp)
        checks.append(_compare(reference, saved(features)["probabilities"], "saved_model", float_tolerance, 0.0, multilabel))

        for name, quantize in (("model.tflite", False), (QUANTIZED_FILE, True))[:2 if quantized else 1]:
            converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[SIGNATURE])
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex: LiteRT has none
            if quantize:
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            try:
                flatbuffer = converter.convert()
            except Exception as e:  # the converter raises many types; the message is what matters
                raise ExportError(f"TFLite conversion of {task.name} failed: {str(e).strip().splitlines()[-1]}") from None
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(flatbuffer)
            runner = load_tflite(os.path.join(tmp, name))
            out = run_in_batches(runner, features, task.tflite_batch_size(config))["probabilities"]
            checks.append(
                _compare(reference, out, name, None if quantize else float_tolerance,
                         quantized_min_agreement if quantize else 0.0, multilabel)
            )

        for check in checks:
            bound = "" if check["tolerance"] is None else f" (tolerance {check['tolerance']:g})"
            log(f"parity {check['format']:<20} max |diff| {check['max_abs_diff']:.2e}{bound}"
                f"  top-1 agreement {100 * check['top1_agreement']:.1f}% (at least "
                f"{100 * check['min_agreement']:g}%)  {'ok' if check['ok'] else 'FAILED'}")
        failed = [c["format"] for c in checks if not c["ok"] and c["format"] != QUANTIZED_FILE]
        if failed:
            raise ExportError(f"Export refused: {', '.join(failed)} disagree with the Keras model beyond the tolerance.")
        if any(c["format"] == QUANTIZED_FILE and not c["ok"] for c in checks):
            os.remove(os.path.join(tmp, QUANTIZED_FILE))
            log(f"WARNING: {QUANTIZED_FILE} left out: its answers agree with the Keras model's on fewer than "
                f"{100 * quantized_min_agreement:g}% of the check's inputs. The SavedModel and model.tflite are exported.")

        config_lib.save(_portable(config), os.path.join(tmp, "config.yaml"))
        task.write_serving_assets(config, tmp)
        atomic_write_json(os.path.join(tmp, "signature.json"), {
            "task": task.name,
            "signature": SIGNATURE,
            "inputs": {k: {"shape": [None if d is None else int(d) for d in s.shape], "dtype": s.dtype.name}
                       for k, s in specs.items()},
            "outputs": sorted(task.serving_outputs(config, model(features, training=False)).keys()),
            "answers": task.answer_names(config),
            "parity": {"examples": len(next(iter(features.values()))), "split": split, "checks": checks},
            "files": sorted(os.listdir(tmp)),
        })
        atomic_write_text(os.path.join(tmp, MODEL_CARD), model_card(run_dir, config, task, target, checks))
        first = {k: v[:1] for k, v in features.items()}
        atomic_write_json(os.path.join(tmp, "example_request.json"), {"instances": to_instances(first)})
    log(f"Exported {task.name} to {target}")
    return target


def _portable(config):
    """The config as shipped: data paths relative to the working directory, no run directory."""
    import copy

    config = copy.deepcopy(config)
    directory = getattr(config.data, "dir", None)
    if directory and os.path.isabs(directory):
        config.data.dir = os.path.relpath(directory)
    config.run_dir = None
    return config


def model_card(run_dir, config, task, target, checks):
    """MODEL_CARD.md: the run's final evaluation (metric per split), how it was trained, on what, for how long,
    and the commands that reproduce the evaluation and the training."""
    from relation_networks.training import METRICS_FILE, hardware_text

    path = os.path.join(run_dir, METRICS_FILE)
    with open(path) as f:
        metrics = json.load(f)
    rows, notes = [], []
    for split, report in metrics.get("evaluation", {}).items():
        for name, value in report["metrics"].items():
            paper = report.get("paper", {}).get(name)
            rows.append(f"| {split} ({report['examples']:,} examples) | {name} | {100 * value:.2f}% | "
                        f"{'' if paper is None else f'{100 * paper:.0f}%'} |")
        notes += [f"{split}: {key} {value if not isinstance(value, list) else ', '.join(map(str, value)) or 'none'}"
                  for key, value in report.get("extra", {}).items() if isinstance(value, (int, float, str, list))]
    lines = [
        f"# {task.name}: {getattr(config.model, 'type', 'model')} model",
        "",
        "| split | metric | this model | paper |",
        "|---|---|---|---|",
        *rows,
        "",
        *([f"Also: {'; '.join(notes)}.", ""] if notes else []),
        f"Reproduce the numbers: `python tools/evaluate.py --model {target} --split test` (`--split val` for "
        "validation); the data is made or read as the shipped config.yaml says (`--set data.dir=...` elsewhere).",
        "",
        f"Trained: {metrics.get('step', 0):,} steps ({metrics.get('epochs_completed')} epochs"
        f"{', stopped by the time limit' if metrics.get('stopped') == 'time_limit' else ''}), "
        f"{metrics.get('train_seconds', 0) / 60:.0f} minutes of training, seed {metrics.get('seed')}, on "
        f"{hardware_text(metrics['hardware'])}.",
        *(["", f"It started from the weights of `{config.train.init_from}` (train.init_from), whose own training "
                "is not counted above."] if config.train.init_from else []),
        "",
        f"Training command (its last stage): `{metrics.get('command') or 'not recorded'}`.",
    ]
    experiment = _experiment_of(metrics.get("run_dir"))
    if experiment:
        lines += ["", f"Every stage of its training: `python tools/reproduce.py {experiment} --dry_run`; retrain with "
                      "`--train`."]
    if metrics.get("best"):
        best = metrics["best"]
        lines += ["", f"The model kept is the best by validation {best['metric']} (epoch {best['epoch']}, step "
                      f"{best['step']})."]
    lines += ["", "Export parity (max |probability difference| and top-1 agreement with the Keras model): "
              + "; ".join(f"{c['format']} {c['max_abs_diff']:.1e}, {100 * c['top1_agreement']:.1f}%"
                          for c in checks) + "."]
    return "\n".join(lines) + "\n"


def _experiment_of(run_dir, directory="experiments"):
    """The experiment file (under `directory`, relative to the working directory) with a run in `run_dir`."""
    import glob

    import yaml

    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        try:
            with open(path) as f:
                runs = (yaml.safe_load(f) or {}).get("runs") or []
        except (OSError, yaml.YAMLError):
            continue
        if run_dir and any(isinstance(r, dict) and r.get("run_dir") == run_dir for r in runs):
            return path
    return None


def run_in_batches(runner, features, batch_size):
    if batch_size is None:
        return runner(features)
    n = len(next(iter(features.values())))
    parts = [runner({k: v[i : i + batch_size] for k, v in features.items()}) for i in range(0, n, batch_size)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def to_instances(features):
    """Features dict of batched arrays -> TF Serving REST `instances` (a list of per-example dicts)."""
    n = len(next(iter(features.values())))
    return [{k: np.asarray(v[i]).tolist() for k, v in features.items()} for i in range(n)]


# -- loading and requests ----------------------------------------------------------------------------------------


def load_saved_model(path):
    """`fn(features dict of NumPy) -> outputs dict of NumPy` for a SavedModel's serving signature.
    Needs no project code: only TensorFlow."""
    import tensorflow as tf

    signature = tf.saved_model.load(path).signatures[SIGNATURE]
    _, specs = signature.structured_input_signature

    def run(features):
        inputs = {k: tf.convert_to_tensor(features[k], dtype=specs[k].dtype) for k in specs}
        return {k: v.numpy() for k, v in signature(**inputs).items()}

    run.specs = {k: {"shape": list(s.shape), "dtype": s.dtype.name} for k, s in specs.items()}
    return run


def load_tflite(path):
    """`fn(features dict of NumPy) -> outputs dict of NumPy` for a `.tflite` file, run with LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    runner = interpreter.get_signature_runner(SIGNATURE)
    details = runner.get_input_details()

    def run(features):
        return runner(**{k: np.asarray(features[k], dtype=d["dtype"]) for k, d in details.items()})

    run.specs = {k: {"shape": [None if s < 0 else int(s) for s in d["shape_signature"]],
                     "dtype": np.dtype(d["dtype"]).name} for k, d in details.items()}
    return run


def load_predictor(path, overrides=()):
    """(config, predict_fn -> logits) for an exported SavedModel directory or `.tflite` file."""
    directory = os.path.dirname(path) if path.endswith(".tflite") else path
    config_path = os.path.join(directory, "config.yaml")
    if not os.path.isfile(config_path):
        raise UserError(f"{directory} has no config.yaml: export with tools/export.py to get one.")
    config = config_lib.load(config_path, overrides)
    config.run_dir = directory  # files exported with the model (e.g. a vocabulary) live here
    run = load_tflite(path) if path.endswith(".tflite") else load_saved_model(path)
    from relation_networks import tasks

    batch = tasks.get(config.task).tflite_batch_size(config) if path.endswith(".tflite") else None
    return config, lambda features: run_in_batches(run, features, batch)["logits"]


def validate_request(request, specs):
    """Check a REST-style request (`{"instances": [...]}` or `{"inputs": {...}}`) against the input specs
    (`{name: {"shape": [None, ...], "dtype": ...}}`); return the batched features dict or raise `RequestError`."""
    if not isinstance(request, dict) or not ({"instances", "inputs"} & set(request)):
        raise RequestError('The request must be a JSON object with "instances" (a list of examples) or "inputs".')
    if "instances" in request:
        instances = request["instances"]
        if not isinstance(instances, list) or not instances:
            raise RequestError('"instances" must be a non-empty list of examples.')
        for i, instance in enumerate(instances):
            if not isinstance(instance, dict):
                raise RequestError(f"instance {i} must be an object with keys {sorted(specs)}.")
            missing, extra = set(specs) - set(instance), set(instance) - set(specs)
            if missing or extra:
                raise RequestError(
                    f"instance {i}: expected inputs {sorted(specs)}"
                    + (f", missing {sorted(missing)}" if missing else "") + (f", unknown {sorted(extra)}" if extra else "")
                )
        columns = {k: [inst[k] for inst in instances] for k in specs}
    else:
        columns = request["inputs"]
        if not isinstance(columns, dict) or set(columns) != set(specs):
            raise RequestError(f'"inputs" must be an object with exactly the keys {sorted(specs)}.')
    features = {}
    for name, spec in specs.items():
        dtype = np.dtype(spec["dtype"])
        try:
            array = np.asarray(columns[name])
        except ValueError:
            raise RequestError(f"input {name!r}: ragged or malformed array.") from None
        if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise RequestError(f"input {name!r}: expected numbers of type {dtype.name}, got {array.dtype}.")
        expected = spec["shape"][1:]
        if array.ndim != len(expected) + 1 or any(e is not None and e != a for e, a in zip(expected, array.shape[1:])):
            raise RequestError(
                f"input {name!r}: each example must have shape {tuple(expected)}, got {tuple(array.shape[1:])}."
            )
        if np.issubdtype(dtype, np.integer):
            if not np.issubdtype(array.dtype, np.integer) and not np.all(np.mod(array, 1) == 0):
                raise RequestError(f"input {name!r}: expected integers ({dtype.name}), got fractional values.")
            info = np.iinfo(dtype)
            if array.size and (array.min() < info.min or array.max() > info.max):
                raise RequestError(f"input {name!r}: values must lie in [{info.min}, {info.max}] ({dtype.name}).")
        features[name] = array.astype(dtype)
    return features


def write_serving_doc(out_root, path, saved_models_url="saved_models"):
    """(Re)generate docs/SERVING.md from the exported models under `out_root` (their signature.json and
    example_request.json), so the documented requests are real ones."""
    sections = []
    for task_name in sorted(os.listdir(out_root)) if os.path.isdir(out_root) else []:
        versions = sorted((int(v) for v in os.listdir(os.path.join(out_root, task_name)) if v.isdigit()))
        if not versions:
            continue
        directory = os.path.join(out_root, task_name, str(versions[-1]))
        with open(os.path.join(directory, "signature.json")) as f:
            signature = json.load(f)
        with open(os.path.join(directory, "example_request.json")) as f:
            request = json.load(f)
        body = json.dumps(request, separators=(",", ":"))
        shown = body if len(body) <= 1500 else re.sub(r"\[\[\[.*?\]\]\]", "[[[...]]]", body, count=1)
        if len(shown) > 1500:
            shown = shown[:1500] + " ..."
        inputs = "\n".join(f"| `{k}` | {v['dtype']} | {v['shape']} |" for k, v in signature["inputs"].items())
        checks = "\n".join(
            f"| {c['format']} | {c['max_abs_diff']:.2e} | {100 * c['top1_agreement']:.1f}% | "
            f"{'-' if c['tolerance'] is None else format(c['tolerance'], 'g')} | {100 * c['min_agreement']:g}% |"
            for c in signature["parity"]["checks"]
        )
        sections.append(
            f"## {task_name} (version {versions[-1]})\n\n| input | dtype | shape |\n|---|---|---|\n{inputs}\n\n"
            f"Outputs: {', '.join(f'`{o}`' for o in signature['outputs'])}.\n\n"
            f"Parity on {signature['parity']['examples']} real `{signature['parity']['split']}` examples "
            f"(max |probability difference| against the Keras model):\n\n"
            f"| format | max abs diff | top-1 agreement | tolerance | min agreement |\n|---|---|---|---|---|\n{checks}\n\n"
            f"Request body (`{saved_models_url}/{task_name}/{versions[-1]}/example_request.json`"
            f"{', abbreviated here' if shown != body else ''}):\n\n```json\n{shown}\n```\n\n"
            f"```\ncurl -d @{saved_models_url}/{task_name}/{versions[-1]}/example_request.json \\\n"
            f"  http://localhost:8501/v1/models/{task_name}:predict\n```\n"
        )
    header = (
        "# Serving\n\n_Generated by `tools/export.py` from the exported models; do not edit by hand._\n\n"
        "Every exported model lives in TF Serving's layout `saved_models/<task>/<version>/` with a "
        "`serving_default` signature. Serve one task with the official image:\n\n"
        "```\ndocker run -p 8501:8501 \\\n"
        "  --mount type=bind,source=$PWD/saved_models/sort_of_clevr,target=/models/sort_of_clevr \\\n"
        "  -e MODEL_NAME=sort_of_clevr tensorflow/serving\n```\n\n"
        "or with the binary: `tensorflow_model_server --rest_api_port=8501 --model_name=<task> "
        "--model_base_path=$PWD/saved_models/<task>`.\n\n"
        "Inspect a signature with `saved_model_cli show --dir saved_models/<task>/<version> --all`. Locally, without "
        "a server: `python tools/predict.py --model saved_models/<task>/<version> --input request.json` (or the "
        "`model.tflite` / `model_quant.tflite` file in the same directory, run with LiteRT).\n\n"
        "Outputs of every task: `logits`, `probabilities` (softmax; sigmoid for multi-label tasks) and `answer_id`.\n\n"
    )
    with open(path + ".tmp", "w") as f:
        f.write(header + "\n".join(sections))
    os.replace(path + ".tmp", path)
