"""The `retry:` field of a job spec: accepted forms, and refusals that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from trainyard.spec import SpecError, parse_job_spec


def _problems(retry: Any) -> list[dict[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse_job_spec({"name": "r", "command": "true", "retry": retry})
    return caught.value.problems


def test_rules_take_seconds_or_durations_and_default_their_max() -> None:
    spec = parse_job_spec(
        {
            "name": "r",
            "command": "true",
            "retry": [
                {"exit_codes": [137, 143], "max": 2, "backoff": "30s"},
                {"reasons": ["prepare_failed", "mount_failed", "wall_clock", "node_lost"], "backoff": "2m"},
                {"exit_codes": [1], "backoff": 5},
                {"exit_codes": [2], "backoff": 0},
                {"exit_codes": [3]},
            ],
        }
    )
    assert [rule.backoff for rule in spec.retry] == [30.0, 120.0, 5.0, 0.0, None]
    assert [rule.max for rule in spec.retry] == [2, 3, 3, 3, 3]
    assert spec.stored_retry_rules() == [rule.model_dump(mode="json") for rule in spec.retry]
    assert parse_job_spec({"name": "r", "command": "true"}).stored_retry_rules() is None


def test_an_unknown_reason_is_refused_naming_the_rule_and_the_item() -> None:
    problems = _problems([{"exit_codes": [137]}, {"reasons": ["node_lost", "oom"]}])
    assert [p["field"] for p in problems] == ["retry[1].reasons[1]"]
    assert "'oom' is not a reason a rule may retry" in problems[0]["reason"]
    assert "wall_clock" in problems[0]["reason"]


def test_reasons_that_are_never_retried_say_why() -> None:
    problems = _problems([{"reasons": ["cancelled", "preempted", "exit"]}])
    by_field = {p["field"]: p["reason"] for p in problems}
    assert "never retried" in by_field["retry[0].reasons[0]"]
    assert "always queued again" in by_field["retry[0].reasons[1]"]
    assert "exit_codes" in by_field["retry[0].reasons[2]"]


def test_every_bad_rule_is_named() -> None:
    problems = _problems(
        [
            {"exit_codes": [0, 137, 256]},
            {},
            {"exit_codes": [1], "backoff": "soon"},
            {"exit_codes": [1], "backoff": "2d"},
            {"exit_codes": [1], "max": -1},
            {"exit_codes": [1], "tries": 2},
        ]
    )
    fields = [p["field"] for p in problems]
    assert fields == [
        "retry[0].exit_codes[0]",
        "retry[0].exit_codes[2]",
        "retry[1]",
        "retry[2].backoff",
        "retry[3].backoff",
        "retry[4].max",
        "retry[5].tries",
    ]
    assert "0 is success" in problems[0]["reason"]
    assert "exit_codes or reasons" in problems[2]["reason"]
    assert problems[6]["reason"] == "unknown field"


def test_retry_must_be_a_list_of_rules() -> None:
    assert [p["field"] for p in _problems({"exit_codes": [1]})] == ["retry"]
    assert _problems([{"exit_codes": [1]}] * 17)[0]["field"] == "retry"
