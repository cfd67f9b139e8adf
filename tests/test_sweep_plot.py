"""The sweep plot: a panel per parameter, and the live series of the best points over steps."""

from __future__ import annotations

from pathlib import Path

from matplotlib import image

from trainyard.sweep_plot import PANEL_HEIGHT_IN, PANEL_WIDTH_IN, plot_metric

ENTRIES = [
    {"name": f"lr{lr}-b{batch}", "params": {"lr": lr, "batch": batch}, "value": lr * batch, "step": 9}
    for lr in (0.1, 0.01, 0.001)
    for batch in (16, 64)
]


def _size(path: Path) -> tuple[int, int]:
    height, width = image.imread(path).shape[:2]
    return width, height


def test_curves_add_a_panel_over_steps_with_a_line_per_point(tmp_path: Path) -> None:
    plain, with_curves = tmp_path / "plain.png", tmp_path / "curves.png"
    assert plot_metric(ENTRIES, ["lr", "batch"], "loss", plain, title="t") == len(ENTRIES)
    curves = {"lr0.1-b16": [(2.0, 0.5), (0.0, 1.0), (1.0, 0.7)], "lr0.01-b16": [(0.0, 1.2), (1.0, 0.9)], "none": []}
    assert plot_metric(ENTRIES, ["lr", "batch"], "loss", with_curves, title="t", curves=curves) == len(ENTRIES)
    # Two parameter panels side by side; the curves make a third column (dpi 100).
    assert _size(plain) == (int(2 * PANEL_WIDTH_IN * 100), int(PANEL_HEIGHT_IN * 100))
    assert _size(with_curves) == (int(3 * PANEL_WIDTH_IN * 100), int(PANEL_HEIGHT_IN * 100))


def test_no_series_draws_no_curves_panel(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    plot_metric(ENTRIES, ["lr", "batch"], "loss", path, title="t", curves={"a": [], "b": []})
    assert _size(path) == (int(2 * PANEL_WIDTH_IN * 100), int(PANEL_HEIGHT_IN * 100))
