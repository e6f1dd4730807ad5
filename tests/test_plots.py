"""The figures drawn for the docs (learning curves, validation against time)."""

from PIL import Image

from relation_networks import plots


def test_validation_by_time_plots_each_run_against_minutes(tmp_path, monkeypatch):
    history_a = [{"epoch": 1, "train_seconds": 60.0, "val": {"accuracy": 0.4}},
                 {"epoch": 2, "train_seconds": 150.0, "val": {"accuracy": 0.7}}]
    history_b = [{"epoch": 1, "train_seconds": 30.0, "val": {"accuracy": 0.5}},
                 {"epoch": 2, "train_seconds": 90.0},  # an epoch without validation is left out
                 {"epoch": 3, "train_seconds": 120.0, "val": {"accuracy": 0.6}}]
    drawn = {}
    real_line_plot = plots.line_plot

    def capture(path, series, title, **kwargs):
        drawn.update(series)
        return real_line_plot(path, series, title, **kwargs)

    monkeypatch.setattr(plots, "line_plot", capture)
    path = plots.validation_by_time(str(tmp_path / "by_time.png"), [("A", history_a), ("B", history_b), ("C", [])],
                                    "equal budgets")
    assert drawn == {"A": [(1.0, 0.4), (2.5, 0.7)], "B": [(0.5, 0.5), (2.0, 0.6)]}  # a run with no epochs: no line
    assert Image.open(path).size == (720, 420)


def test_visualize_overlays_the_cell_weights_on_the_image_with_a_colour_scale():
    import numpy as np

    visualize = plots

    image = np.full((75, 75, 3), 255, np.uint8)
    image[:15, :15] = (0, 255, 0)  # an object in the first cell
    weights = np.zeros(25)
    weights[12] = 0.9  # the centre cell carries the answer
    weights[0] = 0.1
    out = visualize.overlay(image, weights, 150).astype(int)
    centre, corner, empty = out[75, 75], out[5, 5], out[5, 145]
    assert centre[0] > 150 and centre[2] < 100  # red where the weight is largest
    assert corner[1] > 100  # the object shows through its lightly tinted cell
    assert empty[2] > empty[0]  # blue where the weight is zero; the white background is still blended in
    bar = visualize.colour_scale(100)
    assert bar.shape == (100, 14, 3) and tuple(bar[0, 0]) == (255, 0, 0) and tuple(bar[-1, 0]) == (0, 0, 255)
