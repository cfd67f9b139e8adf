"""`trainyard.report(step=…, **metrics)`: a job's metrics, one JSON line each, for the node agent.

Runs inside the job with the standard library only (no server, no third-party package, any
Python 3 the job uses). Each call appends `{"step": s, "time": t, "metrics": {...}}` to the file
named by TRAINYARD_METRICS_FILE, which the node agent sets and reads when the part ends; the
job's last value of each metric lands on the job object (`metrics`) and in sweep leaderboards.
Outside trainyard (no such variable) a call does nothing, so training scripts run anywhere.
"""

from __future__ import annotations

import json
import math
import os
import time

METRICS_FILE_ENV = "TRAINYARD_METRICS_FILE"


def report(step: int | None = None, **metrics: float) -> None:
    """Record metric values (numbers) at an optional step, e.g. `report(step=10, loss=0.31, acc=0.9)`."""
    path = os.environ.get(METRICS_FILE_ENV)
    values: dict[str, float | None] = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:  # numpy and torch scalars
                value = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"metric {name!r} must be a number, not {type(value).__name__}") from None
        values[name] = value if math.isfinite(value) else None
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise TypeError("step must be an integer")
    if not path:
        return
    line = json.dumps({"step": step, "time": time.time(), "metrics": values})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
