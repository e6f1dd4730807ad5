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
