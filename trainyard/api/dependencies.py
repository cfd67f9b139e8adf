"""Checking the `depends_on` of submitted jobs: batch-local names, cycles, and stored targets in the workspace.

A whole submission is refused (422, each problem with its field) when one reference is unknown,
names another workspace's job or sweep, or closes a cycle; nothing is stored then.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from sqlalchemy.orm import Session

from trainyard.db.dependencies import stored_targets
from trainyard.db.jobs import NewJob, PlannedDependency
from trainyard.dependencies import LocalRef, StoredRef, batch_field, resolve_batch
from trainyard.spec import JobSpec, SpecError


def plan_dependencies(
    session: Session, new_jobs: Sequence[NewJob], prefix: Callable[[int], str] = batch_field
) -> list[NewJob]:
    """The jobs with their dependencies checked and planned; SpecError naming every problem."""
    if not any(new.spec.depends_on for new in new_jobs):
        return list(new_jobs)
    specs = [new.spec for new in new_jobs]
    refs, problems = resolve_batch([s.name for s in specs], [s.depends_on for s in specs], prefix)
    wanted = {(r.kind, r.target_id) for row in refs for r in row if isinstance(r, StoredRef)}
    found = stored_targets(session, wanted)
    planned: list[NewJob] = []
    for index, (new, row) in enumerate(zip(new_jobs, refs, strict=True)):
        depends: list[PlannedDependency] = []
        for position, (dep, ref) in enumerate(zip(new.spec.depends_on, row, strict=True)):
            field = f"{prefix(index)}depends_on[{position}].{dep.kind}"
            problem = reference_problem(new.spec, specs, ref, found, batch=len(specs) > 1)
            if problem:
                problems.append({"field": field, "reason": problem})
            elif isinstance(ref, LocalRef):
                depends.append(PlannedDependency("job", dep.on.value, batch_index=ref.index))
            else:
                name = found[(ref.kind, ref.target_id)][1]
                depends.append(PlannedDependency(ref.kind, dep.on.value, target_id=ref.target_id, target_name=name))
        planned.append(replace(new, depends=tuple(depends)))
    if problems:
        raise SpecError(problems)
    return planned


def reference_problem(
    spec: JobSpec,
    specs: Sequence[JobSpec],
    ref: LocalRef | StoredRef,
    found: dict[tuple[str, str], tuple[str, str]],
    batch: bool,
) -> str | None:
    """Why one reference of `spec` is refused, or None. Another workspace's target reads as unknown."""
    if isinstance(ref, LocalRef):
        other = specs[ref.index]
        if other.workspace != spec.workspace:
            return (f"{other.name!r} of the batch is in workspace {other.workspace}: "
                    f"dependencies stay within one workspace ({spec.workspace})")  # fmt: skip
        return None
    target = found.get((ref.kind, ref.target_id))
    if target is None or target[0] != spec.workspace:
        where = "in this batch or " if batch else ""
        return f"no {ref.kind} {ref.target_id!r} {where}in workspace {spec.workspace}"
    return None
