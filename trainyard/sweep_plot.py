"""`trainyard sweep show ID --plot FILE`: a metric against each parameter of a sweep, one panel each.

matplotlib (the `plot` extra) is imported only here, with the Agg backend: no display needed.
Numeric parameters are scatter plots (a log axis when the values span more than two decades);
others are drawn at one position per distinct value. With `curves` (the live series of the best
points, `GET /v1/jobs/{id}/metrics`), one more panel draws the metric over steps, a line per point.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import IO, Any

PANEL_WIDTH_IN = 4.0
PANEL_HEIGHT_IN = 3.2
LOG_SPAN = 100.0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _wants_log(values: list[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and len(values) > 1 and max(positive) / min(positive) > LOG_SPAN


# The pseudo-parameter of the panel that draws each point's metric at the step it last reported.
STEP_PANEL = "step"
# The panel of the metric over steps, one line per point (the best points' live series).
CURVES_PANEL = "over steps"


def plot_metric(
    entries: list[dict[str, Any]],
    parameters: list[str],
    metric: str,
    path: Path | IO[bytes],
    title: str,
    steps: bool = False,
    curves: dict[str, list[tuple[float, float]]] | None = None,
) -> int:
    """Draw `metric` against every parameter of the ranked `entries` into `path` (a PNG); returns points drawn.

    With `steps`, one more panel draws each point's value against the step it was reported at;
    with `curves` ({label: [(step, value), ...]}), one more draws each series over its steps.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = parameters or sorted({name for entry in entries for name in entry.get("params", {})})
    panels = [(name, entries) for name in names]
    if steps:
        at_step = [
            {"params": {STEP_PANEL: e["step"]}, "value": e["value"]} for e in entries if e.get("step") is not None
        ]
        panels.append((STEP_PANEL, at_step))
    drawn_curves = {label: sorted(series) for label, series in (curves or {}).items() if series}
    if drawn_curves:
        panels.append((CURVES_PANEL, []))
    columns = max(1, min(3, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    figure, axes = plt.subplots(
        rows, columns, figsize=(PANEL_WIDTH_IN * columns, PANEL_HEIGHT_IN * rows), squeeze=False
    )
    for index, (name, drawn) in enumerate(panels):
        if name == CURVES_PANEL and drawn_curves:
            _curves(axes[index // columns][index % columns], drawn_curves, metric)
        else:
            _panel(axes[index // columns][index % columns], drawn, name, metric)
    for extra in range(len(panels), rows * columns):
        axes[extra // columns][extra % columns].set_visible(False)
    figure.suptitle(title)
    figure.tight_layout()
    # A file name says its format (.png, .svg); a file object gets a PNG.
    if isinstance(path, Path):
        figure.savefig(path, dpi=100)
    else:
        figure.savefig(path, dpi=100, format="png")
    plt.close(figure)
    return len(entries)


def _panel(ax: Any, entries: list[dict[str, Any]], name: str, metric: str) -> None:
    pairs = [(entry["params"][name], float(entry["value"])) for entry in entries if name in entry.get("params", {})]
    xs = [x for x, _ in pairs]
    ys = [y for _, y in pairs]
    if xs and all(_is_number(x) for x in xs):
        ax.scatter(xs, ys, s=12, alpha=0.7)
        if _wants_log([float(x) for x in xs]):
            ax.set_xscale("log")
    else:
        labels = sorted({str(x) for x in xs})
        position = {label: i for i, label in enumerate(labels)}
        ax.scatter([position[str(x)] for x in xs], ys, s=12, alpha=0.7)
        ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_xlabel(name)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)


def _curves(ax: Any, curves: dict[str, list[tuple[float, float]]], metric: str) -> None:
    for label, series in curves.items():
        ax.plot([step for step, _ in series], [value for _, value in series], linewidth=1, alpha=0.8, label=label)
    if len(curves) <= 10:
        ax.legend(fontsize=6)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(CURVES_PANEL, fontsize=9)
    ax.grid(alpha=0.3)
