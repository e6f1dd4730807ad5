"""Small Pillow-only figures: learning curves from a run's logs (no plotting library needed), and relation heat
maps laid over images (tools/visualize.py)."""

import glob
import os

from PIL import Image, ImageDraw, ImageFont

_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # ten before a colour repeats


def read_scalars(log_dir):
    """{tag: [(step, value), ...]} from the TensorBoard event files under `log_dir`."""
    import tensorflow as tf

    series = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                series.setdefault(value.tag, []).append((int(event.step), number))
    return {tag: sorted(points) for tag, points in series.items()}


def line_plot(path, series, title, x_label="step", y_label="accuracy", y_range=(0.0, 1.0), size=(720, 420)):
    """Draw `{label: [(x, y), ...]}` as lines and save a PNG."""
    width, height = size
    left, right, top, bottom = 60, 170, 40, 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    xs = [x for points in series.values() for x, _ in points] or [0, 1]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = y_range

    def to_pixel(x, y):
        px = left + (x - x0) / (x1 - x0) * (width - left - right)
        py = height - bottom - (min(max(y, y0), y1) - y0) / (y1 - y0) * (height - top - bottom)
        return px, py

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for k in range(6):
        y = y0 + k * (y1 - y0) / 5
        _, py = to_pixel(x0, y)
        draw.line([left, py, width - right, py], fill=(225, 225, 225))
        draw.text((8, py - 6), f"{y:.1f}" if y1 <= 1.0 else f"{y:.0f}", fill="black", font=font)
    for k in range(5):
        x = x0 + k * (x1 - x0) / 4
        px, _ = to_pixel(x, y0)
        draw.text((px - 15, height - bottom + 8), f"{x:,.0f}", fill="black", font=font)
    draw.text((left, 12), title, fill="black", font=font)
    draw.text(((width - right + left) // 2 - 15, height - 20), x_label, fill="black", font=font)
    draw.text((8, top - 20), y_label, fill="black", font=font)
    for k, (label, points) in enumerate(series.items()):
        color = _COLORS[k % len(_COLORS)]
        pixels = [to_pixel(x, y) for x, y in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=color, width=2)
        for px, py in pixels if len(pixels) < 40 else []:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)
        ly = top + 10 + 18 * k
        draw.line([width - right + 10, ly + 6, width - right + 30, ly + 6], fill=color, width=3)
        draw.text((width - right + 35, ly), label, fill="black", font=font)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)
    return path


def learning_curve(run_dir, path, metrics_history, title):
    """Training accuracy (TensorBoard, every logged step) and per-epoch validation metrics of a run."""
    series = {}
    train = read_scalars(os.path.join(run_dir, "logs", "train")).get("accuracy")
    if train:
        series["train acc. (epoch mean)"] = train
    for name in ("accuracy", "relational", "non_relational", "scenes_all_correct"):
        points = [(e["step"], e["val"][name]) for e in metrics_history if name in e.get("val", {})]
        if points:
            series[f"val {name}"] = points
    return line_plot(path, series, title)


def validation_by_time(path, runs, title, metric="accuracy"):
    """Per-epoch validation `metric` of several runs against their minutes of training, on one plot: models
    compared at an equal wall-clock budget. `runs` is `[(label, metrics_history)]` (metrics.json "history")."""
    series = {}
    for label, history in runs:
        points = [(e["train_seconds"] / 60, e["val"][metric]) for e in history
                  if metric in e.get("val", {}) and "train_seconds" in e]
        if points:
            series[label] = points
    return line_plot(path, series, title, x_label="minutes of training", y_label=f"val {metric}")


# -- relation heat maps over images (tools/visualize.py) ---------------------------------------------------------


def heat_colours(values):
    """Colours `[..., 3]` uint8 for values in [0, 1]: blue (0) through purple to red (1)."""
    import numpy as np

    v = np.clip(values, 0.0, 1.0)
    return np.stack([255 * v, np.zeros_like(v), 255 * (1 - v)], axis=-1).astype(np.uint8)


def overlay(image, weights, size):
    """The image resized to `size` x `size` with the cell weights laid over it: each cell tinted by `heat_colours`
    of its weight relative to the largest, more opaque the larger the weight (alpha 0.15 to 0.75), so the
    objects stay visible under the cells that carry the answer. Returns `[size, size, 3]` uint8."""
    import numpy as np
    from PIL import Image

    d = int(round(len(weights) ** 0.5))
    relative = (weights / max(float(weights.max()), 1e-12)).reshape(d, d)
    cells = np.asarray(Image.fromarray((relative * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)) / 255.0
    base = np.asarray(Image.fromarray(image).resize((size, size), Image.NEAREST)).astype(np.float64)
    alpha = (0.15 + 0.6 * cells)[..., None]
    return (base * (1 - alpha) + heat_colours(cells).astype(np.float64) * alpha).round().astype(np.uint8)


def colour_scale(height, width=14):
    """A vertical colour bar `[height, width, 3]`: the top is the largest cell weight, the bottom none."""
    import numpy as np

    column = heat_colours(np.linspace(1.0, 0.0, height))
    return np.repeat(column[:, None, :], width, axis=1)
