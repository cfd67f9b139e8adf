"""Early stopping rules on recorded series, with fixed expectations (trainyard/early_stopping.py)."""

from __future__ import annotations

import pytest

from trainyard.early_stopping import EarlyStopping, decide, rungs
from trainyard.spec import SpecError
from trainyard.sweeps import parse_sweep_spec


def loss_series(a: float, b: float, steps: int) -> list[tuple[int, float]]:
    return [(step, a / (step + 1) + b) for step in range(steps)]


# Recorded: four good points (b 0.1-0.4), two clearly bad ones (b 5, 9), all at step 10.
RECORDED = {
    "good-1": loss_series(1.0, 0.1, 11),
    "good-2": loss_series(1.0, 0.2, 11),
    "good-3": loss_series(1.0, 0.3, 11),
    "good-4": loss_series(1.0, 0.4, 11),
    "bad-1": loss_series(1.0, 5.0, 11),
    "bad-2": loss_series(1.0, 9.0, 11),
}
MEDIAN = EarlyStopping(metric="loss", mode="min", policy="median", grace_steps=5)


def test_median_rule_stops_the_points_worse_than_the_median_of_running_averages() -> None:
    assert decide(MEDIAN, RECORDED, running=set(RECORDED)) == ["bad-1", "bad-2"]


def test_median_rule_waits_for_grace_steps() -> None:
    early = {name: series[:5] for name, series in RECORDED.items()}  # steps 0-4 only
    assert decide(MEDIAN, early, running=set(early)) == []


def test_median_rule_needs_min_points_others_at_the_step() -> None:
    few = {"good-1": RECORDED["good-1"], "good-2": RECORDED["good-2"], "bad-1": RECORDED["bad-1"]}
    assert decide(MEDIAN, few, running=set(few)) == []
    assert decide(MEDIAN.model_copy(update={"min_points": 2}), few, running=set(few)) == ["bad-1"]


def test_median_rule_compares_at_the_furthest_step_enough_others_reached() -> None:
    # bad-1 ran ahead to step 29; the others stopped reporting at 10: it is judged at step 10.
    ahead = {**RECORDED, "bad-1": loss_series(1.0, 5.0, 30)}
    assert decide(MEDIAN, ahead, running={"bad-1"}) == ["bad-1"]


def test_median_rule_judges_only_running_points_and_keeps_ended_ones_as_reference() -> None:
    assert decide(MEDIAN, RECORDED, running={"good-1", "bad-2"}) == ["bad-2"]


def test_median_rule_with_best_values_and_max_mode() -> None:
    accuracy = {name: [(s, -v) for s, v in series] for name, series in RECORDED.items()}
    rule = EarlyStopping(metric="acc", mode="max", policy="median", grace_steps=5, compare="best")
    # Best values are stricter than running averages: good-4 (-0.49) is below the others' median (-0.39).
    assert decide(rule, accuracy, running=set(accuracy)) == ["bad-1", "bad-2", "good-4"]


def test_asha_rungs_grow_by_the_reduction_factor() -> None:
    rule = EarlyStopping(metric="loss", policy="asha", grace_steps=2, reduction_factor=3)
    assert rungs(rule, 60) == [2, 6, 18, 54]


def test_asha_keeps_the_top_third_at_each_rung() -> None:
    rule = EarlyStopping(metric="loss", policy="asha", grace_steps=5, reduction_factor=3, min_points=3)
    # Six points reached rung 5: the top 1/3 (two) are kept, the rest stopped.
    assert decide(rule, RECORDED, running=set(RECORDED)) == ["bad-1", "bad-2", "good-3", "good-4"]


def test_asha_waits_for_min_points_at_the_rung() -> None:
    rule = EarlyStopping(metric="loss", policy="asha", grace_steps=5, min_points=6)
    assert decide(rule, RECORDED, running=set(RECORDED)) == []


def test_a_sweep_with_a_bad_early_stopping_block_is_refused_with_fields_named() -> None:
    with pytest.raises(SpecError) as caught:
        parse_sweep_spec(
            {
                "template": {"name": "t", "command": "true {x}"},
                "grid": {"x": [1]},
                "early_stopping": {"metric": "", "mode": "lowest", "policy": "hyperband", "grace_steps": -1, "z": 1},
            }
        )
    fields = {problem["field"] for problem in caught.value.problems}
    assert {
        "early_stopping.metric",
        "early_stopping.mode",
        "early_stopping.policy",
        "early_stopping.grace_steps",
        "early_stopping.z",
    } <= fields


def test_a_sweep_keeps_its_early_stopping_rule() -> None:
    spec = parse_sweep_spec(
        {"name": "t", "command": "true {x}", "grid": {"x": [1]}, "early_stopping": {"metric": "loss", "grace_steps": 5}}
    )
    assert spec.early_stopping == EarlyStopping(metric="loss", grace_steps=5)
