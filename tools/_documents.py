"""Documents written beside exported models, from the run's records: the model card (MODEL_CARD.md) and the
serving page (docs/SERVING.md). They live with the tools, not the library: they read the repository's
`experiments/` and write its `docs/`."""

import json
import os
import re

from relation_networks.run_records import METRICS_FILE, hardware_text


def model_card(run_dir, config, task, target, checks):
    """MODEL_CARD.md: the run's final evaluation (metric per split), how it was trained, on what, for how long,
    and the commands that reproduce the evaluation and the training."""
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
    experiment = experiment_of(metrics.get("run_dir"))
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


def experiment_of(run_dir, directory="experiments"):
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
        "Outputs of every task: `logits`, `probabilities` (softmax; sigmoid for multi-label tasks), `answer_id` and, where "
        "the task names its answers, `answer` (the answer in words; SavedModels exported since it was added). "
        "`tools/predict.py` answers in TF Serving's REST format: `instances` -> `predictions` (one object per "
        "example with every output), `inputs` -> `outputs`.\n\n"
    )
    with open(path + ".tmp", "w") as f:
        f.write(header + "\n".join(sections))
    os.replace(path + ".tmp", path)
