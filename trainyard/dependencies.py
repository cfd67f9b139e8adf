"""Job dependencies (`depends_on`): when a condition holds or never can, a batch's references and cycles,
and the pending reason of a job that waits. Pure rules: the API, the database layer and the scheduler's
gate share them.

Conditions on a job: `succeeded` and `failed` hold for that state; `ended` for any terminal state.
`cancelled` counts as `ended` only, so a cancelled job cancels the dependants that wait for it to
succeed or to fail. On a sweep (all its points): `succeeded` holds when every point succeeded and can
no longer hold once one failed or was cancelled; `ended` holds when every point ended; `failed` holds
when every point ended and at least one failed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from trainyard.spec import Dependency, DependencyCondition, JobState

PENDING_REASON_MAX = 500
_VERBS = {"succeeded": "succeed", "ended": "end", "failed": "fail"}


class Verdict(StrEnum):
    MET = "met"
    FAILED = "failed"  # can never hold: the dependant is cancelled with reason dependency_failed


@dataclass(frozen=True, slots=True)
class SweepProgress:
    """What a sweep's points say, as far as dependencies care."""

    points: int
    active: bool  # some point is queued, scheduled or running
    any_failed: bool
    any_cancelled: bool

    @property
    def state(self) -> str:
        """`running` until every point ended; then `failed`, `cancelled` or `succeeded`."""
        if self.active or not self.points:
            return "running"
        if self.any_failed:
            return JobState.FAILED.value
        return JobState.CANCELLED.value if self.any_cancelled else JobState.SUCCEEDED.value


def job_verdict(on: str, state: str) -> Verdict | None:
    """Whether a condition on a job in `state` holds (MET), never can (FAILED), or is still open (None)."""
    if not JobState(state).is_terminal():
        return None
    if on == DependencyCondition.ENDED or on == state:
        return Verdict.MET
    return Verdict.FAILED


def sweep_verdict(on: str, progress: SweepProgress) -> Verdict | None:
    """As `job_verdict`, for a sweep; `succeeded` is known impossible as soon as one point did not succeed."""
    if on == DependencyCondition.SUCCEEDED and (progress.any_failed or progress.any_cancelled):
        return Verdict.FAILED
    if progress.active or not progress.points:
        return None
    if on == DependencyCondition.FAILED and not progress.any_failed:
        return Verdict.FAILED
    return Verdict.MET


def cascades(on: str) -> bool:
    """Whether cancelling the target makes this condition impossible (it cancels the dependant too)."""
    return on != DependencyCondition.ENDED


@dataclass(frozen=True, slots=True)
class Waiting:
    """One open dependency, for the words of a pending reason."""

    kind: str  # job or sweep
    target_id: str
    on: str
    target_name: str | None = None


def _one(edge: Waiting) -> str:
    named = f" ({edge.target_name})" if edge.target_name and edge.target_name != edge.target_id else ""
    return f"{edge.kind} {edge.target_id}{named} to {_VERBS.get(edge.on, edge.on)}"


def waiting_reason(edges: Sequence[Waiting]) -> str:
    """ "waiting for job j1 (prepare) to succeed"; with several, how many and each of them."""
    if len(edges) == 1:
        text = f"waiting for {_one(edges[0])}"
    else:
        text = f"waiting for {len(edges):,} dependencies: " + ", ".join(map(_one, edges))
    return text if len(text) <= PENDING_REASON_MAX else text[: PENDING_REASON_MAX - 1] + "…"


# -- a batch's references ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalRef:
    """A dependency on another entry of the same batch (a job, or a sweep), by its index there."""

    index: int


@dataclass(frozen=True, slots=True)
class StoredRef:
    """A dependency on a job or sweep already stored, by id (checked against the database)."""

    kind: str
    target_id: str


Ref = LocalRef | StoredRef


def batch_field(index: int) -> str:
    return f"jobs[{index}]."


def resolve_batch(
    names: Sequence[str],
    depends: Sequence[Sequence[Dependency]],
    prefix: Callable[[int], str] = batch_field,
    kinds: Sequence[str] | None = None,
) -> tuple[list[list[Ref]], list[dict[str, str]]]:
    """Each entry's dependencies as references, and the problems (field and reason) of the batch.

    Within a batch, `job: X` names the job of the batch whose `name` is X, and `sweep: X` the sweep
    entry of the batch named X (`kinds` says which entries are sweeps; all are jobs without it); a
    value that names no entry of the batch is an id. A name two entries of one kind share is
    ambiguous. A cycle is refused, named at the edge that closes it.
    """
    entry_kinds = list(kinds) if kinds is not None else ["job"] * len(names)
    by_name: dict[tuple[str, str], list[int]] = {}
    for index, name in enumerate(names):
        by_name.setdefault((entry_kinds[index], name), []).append(index)
    refs: list[list[Ref]] = []
    problems: list[dict[str, str]] = []
    for index, deps in enumerate(depends):
        row: list[Ref] = []
        for position, dep in enumerate(deps):
            matches = by_name.get((dep.kind, dep.target), [])
            if len(matches) > 1:
                problems.append({"field": f"{prefix(index)}depends_on[{position}].{dep.kind}",
                                 "reason": f"{len(matches):,} {dep.kind}s of the batch are named {dep.target!r}: "
                                           "give them distinct names"})  # fmt: skip
            row.append(LocalRef(matches[0]) if len(matches) == 1 else StoredRef(dep.kind, dep.target))
        refs.append(row)
    problems.extend(find_cycles(names, refs, prefix, entry_kinds))
    return refs, problems


def find_cycles(
    names: Sequence[str],
    refs: Sequence[Sequence[Ref]],
    prefix: Callable[[int], str] = batch_field,
    kinds: Sequence[str] | None = None,
) -> list[dict[str, str]]:
    """Every cycle among the batch's local references (iterative depth-first search: 10,000 jobs deep)."""
    white, grey, black = 0, 1, 2
    color = [white] * len(refs)
    problems: list[dict[str, str]] = []
    for root in range(len(refs)):
        if color[root] != white:
            continue
        stack: list[tuple[int, int]] = [(root, 0)]
        color[root] = grey
        while stack:
            node, position = stack[-1]
            if position >= len(refs[node]):
                color[node] = black
                stack.pop()
                continue
            stack[-1] = (node, position + 1)
            ref = refs[node][position]
            if not isinstance(ref, LocalRef):
                continue
            if color[ref.index] == grey:
                path = [n for n, _ in stack[[n for n, _ in stack].index(ref.index) :]] + [ref.index]
                cycle = " → ".join(f"{names[n]!r}" for n in path)
                kind = kinds[ref.index] if kinds is not None else "job"
                problems.append({"field": f"{prefix(node)}depends_on[{position}].{kind}", "reason": f"cycle: {cycle}"})
            elif color[ref.index] == white:
                color[ref.index] = grey
                stack.append((ref.index, 0))
    return problems


def topological_order(refs: Sequence[Sequence[Ref]], kinds: Sequence[str]) -> list[int]:
    """The entries with every local target before its dependants (the batch has no cycle); jobs that
    are ready go before sweeps that are, so that the jobs come in as few groups as possible."""
    dependants: list[list[int]] = [[] for _ in refs]
    missing = [0] * len(refs)
    for index, row in enumerate(refs):
        for ref in row:
            if isinstance(ref, LocalRef):
                dependants[ref.index].append(index)
                missing[index] += 1
    ready_jobs = [i for i in range(len(refs)) if not missing[i] and kinds[i] == "job"]
    ready_sweeps = [i for i in range(len(refs)) if not missing[i] and kinds[i] != "job"]
    order: list[int] = []
    while ready_jobs or ready_sweeps:
        index = ready_jobs.pop() if ready_jobs else ready_sweeps.pop()
        order.append(index)
        for dependant in dependants[index]:
            missing[dependant] -= 1
            if not missing[dependant]:
                (ready_jobs if kinds[dependant] == "job" else ready_sweeps).append(dependant)
    return order
