"""The rules of job dependencies: when a condition holds or never can, a batch's references and cycles."""

from __future__ import annotations

import pytest

from trainyard.dependencies import (
    LocalRef,
    StoredRef,
    SweepProgress,
    Verdict,
    Waiting,
    cascades,
    job_verdict,
    resolve_batch,
    sweep_verdict,
    waiting_reason,
)
from trainyard.spec import Dependency, SpecError, parse_job_spec


def _deps(*targets: str) -> list[Dependency]:
    return [Dependency(job=t) for t in targets]


@pytest.mark.parametrize(
    ("on", "state", "verdict"),
    [
        ("succeeded", "queued", None),
        ("succeeded", "running", None),
        ("succeeded", "succeeded", Verdict.MET),
        ("succeeded", "failed", Verdict.FAILED),
        ("succeeded", "cancelled", Verdict.FAILED),
        ("ended", "scheduled", None),
        ("ended", "succeeded", Verdict.MET),
        ("ended", "failed", Verdict.MET),
        ("ended", "cancelled", Verdict.MET),
        ("failed", "failed", Verdict.MET),
        ("failed", "succeeded", Verdict.FAILED),
        ("failed", "cancelled", Verdict.FAILED),  # a cancelled job did not fail
    ],
)
def test_a_condition_on_a_job_holds_never_holds_or_stays_open(on: str, state: str, verdict: Verdict | None) -> None:
    assert job_verdict(on, state) == verdict


def test_a_sweep_that_must_succeed_is_known_failed_as_soon_as_one_point_fails() -> None:
    running_one_failed = SweepProgress(points=8, active=True, any_failed=True, any_cancelled=False)
    assert sweep_verdict("succeeded", running_one_failed) is Verdict.FAILED
    assert sweep_verdict("ended", running_one_failed) is None
    assert sweep_verdict("failed", running_one_failed) is None  # it fails once every point ended
    assert running_one_failed.state == "running"


def test_a_sweep_meets_its_conditions_once_every_point_ended() -> None:
    all_succeeded = SweepProgress(points=8, active=False, any_failed=False, any_cancelled=False)
    assert sweep_verdict("succeeded", all_succeeded) is Verdict.MET
    assert sweep_verdict("ended", all_succeeded) is Verdict.MET
    assert sweep_verdict("failed", all_succeeded) is Verdict.FAILED
    assert all_succeeded.state == "succeeded"
    one_failed = SweepProgress(points=8, active=False, any_failed=True, any_cancelled=True)
    assert sweep_verdict("failed", one_failed) is Verdict.MET and one_failed.state == "failed"


def test_only_conditions_other_than_ended_cascade_a_cancel() -> None:
    assert cascades("succeeded") and cascades("failed") and not cascades("ended")


def test_batch_names_resolve_to_indexes_and_other_values_to_stored_ids() -> None:
    refs, problems = resolve_batch(["prep", "train", "eval"], [[], _deps("prep"), _deps("train", "j0123456789ab")])
    assert problems == []
    assert refs == [[], [LocalRef(0)], [LocalRef(1), StoredRef("job", "j0123456789ab")]]


def test_a_cycle_is_refused_at_the_edge_that_closes_it() -> None:
    _refs, problems = resolve_batch(["a", "b", "c"], [_deps("c"), _deps("a"), _deps("b")])
    assert problems == [{"field": "jobs[1].depends_on[0].job", "reason": "cycle: 'a' → 'c' → 'b' → 'a'"}]


def test_a_job_that_depends_on_itself_is_a_cycle() -> None:
    _refs, problems = resolve_batch(["solo"], [_deps("solo")])
    assert problems == [{"field": "jobs[0].depends_on[0].job", "reason": "cycle: 'solo' → 'solo'"}]


def test_a_name_two_jobs_of_the_batch_share_is_ambiguous() -> None:
    _refs, problems = resolve_batch(["x", "x", "y"], [[], [], _deps("x")])
    assert problems[0]["field"] == "jobs[2].depends_on[0].job"
    assert "2 jobs of the batch are named 'x'" in problems[0]["reason"]


def test_a_long_chain_is_checked_without_recursion() -> None:
    count = 20_000
    names = [f"n{i}" for i in range(count)]
    depends = [[]] + [_deps(f"n{i - 1}") for i in range(1, count)]
    refs, problems = resolve_batch(names, depends)
    assert problems == [] and refs[-1] == [LocalRef(count - 2)]


def test_a_dependency_names_exactly_one_of_job_or_sweep_and_a_known_condition() -> None:
    spec = parse_job_spec({"name": "e", "command": "true", "depends_on": [{"sweep": "s0123456789ab"}]})
    assert spec.depends_on[0].on == "succeeded" and spec.depends_on[0].kind == "sweep"
    with pytest.raises(SpecError) as both:
        parse_job_spec({"name": "e", "command": "true", "depends_on": [{"job": "a", "sweep": "b"}]})
    assert both.value.problems[0]["field"] == "depends_on[0]"
    with pytest.raises(SpecError) as bad:
        parse_job_spec({"name": "e", "command": "true", "depends_on": [{"job": "a", "on": "finished"}]})
    assert bad.value.problems[0]["field"] == "depends_on[0].on"


def test_the_pending_reason_names_what_the_job_waits_for() -> None:
    one = waiting_reason([Waiting("job", "j1", "succeeded", "prepare")])
    assert one == "waiting for job j1 (prepare) to succeed"
    two = waiting_reason([Waiting("job", "j1", "ended"), Waiting("sweep", "s1", "failed", "train")])
    assert two == "waiting for 2 dependencies: job j1 to end, sweep s1 (train) to fail"
    many = waiting_reason([Waiting("job", f"j{i:012d}", "succeeded") for i in range(100)])
    assert len(many) <= 500 and many.startswith("waiting for 100 dependencies")


def test_after_on_the_command_line_becomes_a_dependency_on_a_job_or_a_sweep() -> None:
    import typer

    from trainyard.cli import _after_dependency

    assert _after_dependency("j0123456789ab") == {"job": "j0123456789ab", "on": "succeeded"}
    assert _after_dependency("j0123456789ab:ended") == {"job": "j0123456789ab", "on": "ended"}
    assert _after_dependency("s0123456789ab:failed") == {"sweep": "s0123456789ab", "on": "failed"}
    assert _after_dependency("s0123456789ab-3") == {"job": "s0123456789ab-3", "on": "succeeded"}  # a sweep point
    with pytest.raises(typer.Exit) as refused:
        _after_dependency("j0123456789ab:finished")
    assert refused.value.exit_code == 2
