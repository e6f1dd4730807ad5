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
`logits` (float32), `probabilities` (softmax, or sigmoid for multi-label tasks), `answer_id` (int32 argmax, or
0/1 per output for multi-label tasks) and, where the task names its answers, `answer` (the answer in words, a
string; the SavedModel only: TFLite's builtin ops carry no strings, so `model.tflite` has the other three).

Loading and running exported models is `relation_networks.serving`; the model card is the caller's
(`tools/export.py` writes one from the run's records).
"""

import os
import shutil

import numpy as np

from relation_networks import config as config_lib
from relation_networks.errors import UserError
from relation_networks.io import atomic_directory, atomic_write_json, atomic_write_text
from relation_networks.serving import (ANSWER_OUTPUT, DEFAULT_BATCH_SIZE, SIGNATURE, load_keras_predictor,
                                       load_saved_model, load_tflite, run_in_batches, to_instances)

FLOAT_TOLERANCE = 1e-4  # max |probability difference| for SavedModel and float32 TFLite
# The dynamic-range quantised TFLite is judged by its answers: the fraction of top-1 answers (of per-output
# decisions, multi-label) it shares with the Keras model. Its probabilities are reported, not bounded: int8 weights
# move a lightly trained model's probabilities by ~0.1 while it keeps its answers.
QUANTIZED_MIN_AGREEMENT = 0.9
QUANTIZED_FILE = "model_quant.tflite"
MODEL_CARD = "MODEL_CARD.md"


class ExportError(UserError):
    """The export failed a check; nothing was written."""


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
           overrides=(), name=None, documents=None):
    """Export a trained run to `out_root/<name>/<version>/` (`name`: the model's name in TF Serving, default the
    task's); return that path.

    Refuses (raises `ExportError`, writes nothing) if the SavedModel or the float32 TFLite model disagrees with
    the Keras model beyond `float_tolerance` on `parity_examples` real inputs. The quantised TFLite model
    (`quantized=False`: none) is left out, with a warning, when its answers agree less than
    `quantized_min_agreement`; the other formats are exported all the same.

    `documents`: `fn(config, task, target, checks) -> {file name: text}`, files written into the export beside
    the model (`tools/export.py` passes its model card writer).
    """
    import keras
    import tensorflow as tf

    from relation_networks import tasks

    if parity_examples < 1:
        raise UserError(f"The parity check needs at least one example, got parity_examples={parity_examples}.")
    config, trained, _ = load_keras_predictor(run_dir, overrides)
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

    answers = None if multilabel else task.answer_names(config)

    def serve_numbers(inputs):
        logits = tf.cast(model(inputs, training=False), tf.float32)
        return task.serving_outputs(config, logits)

    def serve(inputs):
        outputs = serve_numbers(inputs)
        if answers:
            outputs[ANSWER_OUTPUT] = tf.gather(tf.constant(answers), outputs["answer_id"])
        return outputs

    with atomic_directory(target) as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(name=SIGNATURE, fn=serve, input_signature=[specs])
        archive.write_out(tmp, verbose=False)

        reference = task.serving_outputs(config, model(features, training=False))["probabilities"].numpy()
        checks = []
        saved = load_saved_model(tmp)
        checks.append(_compare(reference, saved(features)["probabilities"], "saved_model", float_tolerance, 0.0, multilabel))

        # TFLite's builtin ops hold no strings: it is converted from a SavedModel of the numeric outputs only,
        # written beside the export and removed.
        numeric = os.path.join(tmp, ".numeric")
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(name=SIGNATURE, fn=serve_numbers, input_signature=[specs])
        archive.write_out(numeric, verbose=False)
        for name, quantize in (("model.tflite", False), (QUANTIZED_FILE, True))[:2 if quantized else 1]:
            converter = tf.lite.TFLiteConverter.from_saved_model(numeric, signature_keys=[SIGNATURE])
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
            out = run_in_batches(runner, features, task.tflite_batch_size(config) or DEFAULT_BATCH_SIZE)["probabilities"]
            checks.append(
                _compare(reference, out, name, None if quantize else float_tolerance,
                         quantized_min_agreement if quantize else 0.0, multilabel)
            )

        shutil.rmtree(numeric)
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
            "outputs": sorted(saved.outputs),
            "answers": task.answer_names(config),
            "input_bounds": {k: [int(low), int(high)] for k, (low, high) in task.input_bounds(config).items()},
            "parity": {"examples": len(next(iter(features.values()))), "split": split, "checks": checks},
            "files": sorted(os.listdir(tmp)),
        })
        for file_name, text in (documents(config, task, target, checks) if documents else {}).items():
            atomic_write_text(os.path.join(tmp, file_name), text)
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
