"""Draw test examples with the model's answers.

    python tools/visualize.py --model runs/sort_of_clevr --num 8 --out docs/figures/visualize
    python tools/visualize.py --model runs/physics_connections --num 4 --out docs/figures/physics

Physics models: one PNG per scene with each ball's 16-frame trajectory (fading from first to last frame) and the
connections between the balls' last positions: true links in green, predicted ones dashed red on top (a
connections model), or the true and predicted number of systems (a counting model).

Sort-of-CLEVR models:
For each of `--num` test images, one PNG: the image (upscaled), each shown question in words with the true and
predicted answer, and beside each the image with a heat map over the CNN's object cells laid on it, with its
colour scale (labelled with the largest cell's share). A cell's weight is the share of the
predicted answer's logit carried by the pair relations it takes part in: each pair's `g_theta` output is projected
on the gradient of that logit with respect to that relation (a first-order attribution through the layer's own
aggregation and `f_phi`; with a maximum over the pairs, only the pairs that hold a maximum carry any), and a cell
collects the absolute contributions of its pairs.
"""

import os

import _common  # noqa: F401
from absl import app, flags

from relation_networks.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Run directory (or its model.keras) of a Sort-of-CLEVR CNN+RN or a physics model.")
flags.DEFINE_integer("num", 8, "Number of test images.")
flags.DEFINE_integer("questions", 4, "Questions drawn per image (alternating non-relational and relational).")
flags.DEFINE_string("split", "test", "Split to draw from.")
flags.DEFINE_string("out", "docs/figures/visualize", "Output directory.")
flags.DEFINE_integer("scale", 4, "Upscaling of the 75x75 images.")
flags.mark_flag_as_required("model")


def cell_weights(model, images, questions):
    """`(logits [B, A], weights [B, N])`: per-cell attribution of the predicted answer (see module docstring)."""
    import numpy as np
    import tensorflow as tf

    from relation_networks import RelationModule

    rn = next((l for l in model.layers if isinstance(l, RelationModule)), None)
    if rn is None:
        raise UserError("visualize needs a CNN+RN model (this one has no RelationModule; the CNN+MLP baseline has no relations).")
    cnn = model.get_layer("cnn")
    pixels = model.get_layer("rescale")(images)
    objects = cnn(pixels, condition=tf.constant(questions), training=False)  # (the condition is unused without FiLM)
    _, relations = rn(objects, question=tf.constant(questions), training=False, return_relations=True)
    with tf.GradientTape() as tape:
        tape.watch(relations)
        logits = tf.cast(rn.read_out(relations, training=False), tf.float32)  # the layer's own aggregation and f_phi
        chosen = tf.reduce_sum(logits * tf.one_hot(tf.argmax(logits, -1), logits.shape[-1]), axis=-1)
    gradient = tf.cast(tape.gradient(chosen, relations), tf.float32)  # [B, N, N, H]
    pair = np.abs(tf.reduce_sum(tf.cast(relations, tf.float32) * gradient, axis=-1).numpy())  # [B, N, N]
    cells = pair.sum(axis=2) + pair.sum(axis=1)
    cells = cells / np.maximum(cells.sum(axis=1, keepdims=True), 1e-12)
    return logits.numpy(), cells


def render(image, items, scale, path):
    """`items`: [(question text, true, predicted, cell weights [N])]. Per question: the image with the cell weights
    overlaid (`overlay`), a colour scale labelled with the largest cell's share, the question and the answers."""
    from PIL import Image, ImageDraw, ImageFont

    from relation_networks.plots import colour_scale, overlay

    font = ImageFont.load_default()
    size = image.shape[0] * scale
    tile = size // 2
    row_height = tile + 40
    canvas = Image.new("RGB", (size + 20 + tile + 80 + 420, max(size, row_height * len(items)) + 20), "white")
    canvas.paste(Image.fromarray(image).resize((size, size), Image.NEAREST), (10, 10))
    draw = ImageDraw.Draw(canvas)
    for k, (text, truth, predicted, weights) in enumerate(items):
        x0, y0 = size + 20, 10 + k * row_height
        canvas.paste(Image.fromarray(overlay(image, weights, tile)), (x0, y0))
        d = int(round(len(weights) ** 0.5))
        for i in range(1, d):  # grid lines show the cells = objects
            step = tile / d
            draw.line([x0 + i * step, y0, x0 + i * step, y0 + tile], fill="white")
            draw.line([x0, y0 + i * step, x0 + tile, y0 + i * step], fill="white")
        bar_x = x0 + tile + 6
        canvas.paste(Image.fromarray(colour_scale(tile)), (bar_x, y0))
        draw.text((bar_x + 18, y0), f"{100 * float(weights.max()):.0f}%", fill="black", font=font)
        draw.text((bar_x + 18, y0 + tile - 10), "0%", fill="black", font=font)
        tx = bar_x + 60
        ok = truth == predicted
        draw.text((tx, y0 + 4), text, fill="black", font=font)
        draw.text((tx, y0 + 24), f"true: {truth}", fill="black", font=font)
        draw.text((tx, y0 + 44), f"predicted: {predicted}", fill=(0, 128, 0) if ok else (200, 0, 0), font=font)
        draw.text((tx, y0 + 64), "right" if ok else "WRONG", fill=(0, 128, 0) if ok else (200, 0, 0), font=font)
        draw.text((tx, y0 + 84), "cells: share of the answer's attribution", fill=(90, 90, 90), font=font)
    canvas.save(path)


def render_physics(balls, truth, predicted, frames, path, size=420):
    """One scene: trajectories, true (green) and predicted (dashed red) connections, or counts."""
    import colorsys

    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    n = len(balls)
    xs, ys = balls[:, :frames], balls[:, frames : 2 * frames]
    image = Image.new("RGB", (size + 220, size), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()

    def pixel(x, y):
        return (x + 1.0) / 2.0 * (size - 20) + 10, (1.0 - (y + 1.0) / 2.0) * (size - 20) + 10

    draw.rectangle([10, 10, size - 10, size - 10], outline="black")
    palette = [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(k / n, 0.8, 0.9)) for k in range(n)]
    if truth.ndim == 2:
        for i in range(n):
            for j in range(i + 1, n):
                a, b = pixel(xs[i, -1], ys[i, -1]), pixel(xs[j, -1], ys[j, -1])
                if truth[i, j]:
                    draw.line([a, b], fill=(0, 170, 0), width=5)
                if predicted[i, j]:
                    steps = 12
                    for s in range(0, steps, 2):
                        p0 = (a[0] + (b[0] - a[0]) * s / steps, a[1] + (b[1] - a[1]) * s / steps)
                        p1 = (a[0] + (b[0] - a[0]) * (s + 1) / steps, a[1] + (b[1] - a[1]) * (s + 1) / steps)
                        draw.line([p0, p1], fill=(220, 0, 0), width=2)
    for k in range(n):
        for f in range(frames):
            px, py = pixel(xs[k, f], ys[k, f])
            r = 2 + 4 * f / max(frames - 1, 1)
            shade = tuple(int(255 - (255 - c) * (0.25 + 0.75 * f / max(frames - 1, 1))) for c in palette[k])
            draw.ellipse([px - r, py - r, px + r, py + r], fill=shade)
    x0 = size + 10
    if truth.ndim == 2:
        right = int(np.sum(np.triu(truth == predicted, 1)))
        total = n * (n - 1) // 2
        lines = ["green: true connection", "dashed red: predicted", f"pairs right: {right}/{total}",
                 "scene: " + ("ALL RIGHT" if right == total else "wrong")]
    else:
        lines = [f"true systems: {truth}", f"predicted: {predicted}", "right" if truth == predicted else "WRONG"]
    for k, text in enumerate(lines):
        draw.text((x0, 20 + 20 * k), text, fill="black", font=font)
    image.save(path)


def _physics(config, model, task):
    import numpy as np

    n, frames = config.data.num_balls, config.data.frames
    ds = task.dataset(config, FLAGS.split).batch(FLAGS.num).take(1)
    features, labels = next(ds.as_numpy_iterator())
    logits = model(features, training=False).numpy()
    os.makedirs(FLAGS.out, exist_ok=True)
    for k in range(len(labels)):
        if config.data.target == "connections":
            truth, predicted = labels[k].reshape(n, n) > 0.5, logits[k].reshape(n, n) > 0
            predicted = predicted | predicted.T  # a pair is predicted connected if either ordering says so
        else:
            truth, predicted = np.asarray(int(labels[k]) + 1), np.asarray(int(logits[k].argmax()) + 1)
        path = os.path.join(FLAGS.out, f"{FLAGS.split}_{k:03d}.png")
        render_physics(features["balls"][k], truth, predicted, frames, path)
        print(path)


@_common.main_wrapper
def main(argv):
    del argv
    import numpy as np

    from relation_networks import serving, tasks
    from relation_networks.data import sort_of_clevr as soc

    config, model, _ = serving.load_keras_predictor(FLAGS.model)
    if config.task == "physics":
        task = tasks.get(config.task)
        task.prepare(config)
        return _physics(config, model, task)
    if config.task != "sort_of_clevr":
        raise UserError(f"visualize draws Sort-of-CLEVR and physics models; this one is {config.task!r}.")
    task = tasks.get(config.task)
    task.prepare(config)
    per_image = soc.QUESTIONS_PER_IMAGE
    ds = task.dataset(config, FLAGS.split).batch(per_image).take(FLAGS.num)
    os.makedirs(FLAGS.out, exist_ok=True)
    for n, (features, labels) in enumerate(ds.as_numpy_iterator()):
        # alternate non-relational (first 10) and relational (last 10) questions
        picks = [k // 2 if k % 2 == 0 else 10 + k // 2 for k in range(min(FLAGS.questions, per_image))]
        logits, weights = cell_weights(model, features["image"][picks], features["question"][picks])
        items = [
            (soc.describe(features["question"][i]), soc.ANSWERS[labels[i]], soc.ANSWERS[int(np.argmax(logits[j]))], weights[j])
            for j, i in enumerate(picks)
        ]
        path = os.path.join(FLAGS.out, f"{FLAGS.split}_{n:03d}.png")
        render(features["image"][0], items, FLAGS.scale, path)
        print(path)


if __name__ == "__main__":
    app.run(main)
