"""Early stopping in sweeps: which points fall behind, as a pure function of their reported series.

A sweep's `early_stopping: {metric, mode, policy, grace_steps, min_points, …}` names one metric
that each point reports with `trainyard.report(step=…, metric=…)`. The scheduler hands `decide`
every point's series (step → value, the current attempt's) and which points still run; what it
returns is stopped through the cancel path, state `cancelled`, reason `early_stopped`.

Policies:
- `median` (Vizier's median stopping rule): at step s ≥ grace_steps a running point is stopped
  when its best value so far is worse than the median of the other points' running averages up
  to s (`compare: mean`, the default) or of their best values up to s (`compare: best`), provided
  at least `min_points` other points reached s. s is the point's latest step, or, when too few
  others got that far, the furthest step that `min_points` others reached.
- `asha` (asynchronous successive halving): rungs at grace_steps·η^k (η = `reduction_factor`,
  default 3). At every rung a running point reached, it must be in the top 1/η (at least one) of
  the points that reached that rung, by best value up to the rung, once at least `min_points`
  other points reached it; otherwise it is stopped.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EARLY_STOPPED = "early_stopped"  # SPEC §11: the reason of a point stopped by its sweep's rule
MAX_RUNGS = 64

Series = Sequence[tuple[int, float]]  # (step, value), steps ascending


class EarlyStopping(BaseModel):
    """A sweep's `early_stopping:` block, validated (unknown fields are refused, by name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(min_length=1, max_length=200)
    mode: Literal["min", "max"] = "min"
    policy: Literal["median", "asha"] = "median"
    grace_steps: int = Field(default=1, ge=0)
    min_points: int = Field(default=3, ge=1)
    compare: Literal["mean", "best"] = "mean"  # median policy: what of the others' series is compared
    reduction_factor: int = Field(default=3, ge=2)  # asha's η


def _better(mode: str, a: float, b: float) -> bool:
    return a < b if mode == "min" else a > b


def _upto(series: Series, step: int) -> list[float]:
    return [value for s, value in series if s <= step and math.isfinite(value)]


def _best(mode: str, values: Sequence[float]) -> float:
    return min(values) if mode == "min" else max(values)


def _last_step(series: Series) -> int | None:
    return series[-1][0] if series else None


def _median_stop(rule: EarlyStopping, point: str, series: Mapping[str, Series]) -> bool:
    mine = series.get(point) or []
    latest = _last_step(mine)
    if latest is None or latest < rule.grace_steps:
        return False
    others = [(name, s) for name, s in series.items() if name != point and s]
    reached = sorted((_last_step(s) or 0 for _, s in others), reverse=True)
    if len(reached) < rule.min_points:
        return False
    step = min(latest, reached[rule.min_points - 1])  # the furthest step min_points others reached
    if step < rule.grace_steps:
        return False
    own = _upto(mine, step)
    if not own:
        return False
    summaries = []
    for _, other in others:
        if (_last_step(other) or 0) < step:
            continue
        values = _upto(other, step)
        if values:
            summaries.append(statistics.fmean(values) if rule.compare == "mean" else _best(rule.mode, values))
    if len(summaries) < rule.min_points:
        return False
    return _better(rule.mode, statistics.median(summaries), _best(rule.mode, own))


def rungs(rule: EarlyStopping, up_to_step: int) -> list[int]:
    """ASHA's rung steps not beyond `up_to_step`: grace_steps·η^k (a grace of 0 starts at step 1)."""
    first = max(1, rule.grace_steps)
    found: list[int] = []
    step = first
    while step <= up_to_step and len(found) < MAX_RUNGS:
        found.append(step)
        step *= rule.reduction_factor
    return found


def _asha_stop(rule: EarlyStopping, point: str, series: Mapping[str, Series]) -> bool:
    mine = series.get(point) or []
    latest = _last_step(mine)
    if latest is None:
        return False
    for rung in rungs(rule, latest):
        at_rung: list[float] = []
        for name, other in series.items():
            if name == point or (_last_step(other) or -1) < rung:
                continue
            values = _upto(other, rung)
            if values:
                at_rung.append(_best(rule.mode, values))
        own = _upto(mine, rung)
        if len(at_rung) < rule.min_points or not own:
            continue
        mine_best = _best(rule.mode, own)
        keep = max(1, (len(at_rung) + 1) // rule.reduction_factor)
        ahead = sum(1 for value in at_rung if _better(rule.mode, value, mine_best))
        if ahead >= keep:
            return True
    return False


def decide(rule: EarlyStopping, series: Mapping[str, Series], running: Collection[str]) -> list[str]:
    """The running points to stop now, sorted. `series` holds every point that reported (ended ones too)."""
    judge = _median_stop if rule.policy == "median" else _asha_stop
    return sorted(point for point in running if judge(rule, point, series))
