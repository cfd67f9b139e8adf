"""A `POST /v1/jobs:batch` that holds sweeps too: a whole pipeline (prepare → sweep → evaluate) in one call.

An entry `{"sweep": {…}}` is a sweep as `POST /v1/sweeps` takes it; other entries are job specs.
Jobs name a sweep of the batch by its name (`depends_on: [{sweep: NAME}]`), and a sweep's template
names jobs of the batch the same way (`template.depends_on`), so every point waits on them. The
entries are stored in one transaction, targets before their dependants (there is no cycle: the
batch was refused otherwise), consecutive jobs in one bulk insert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from fastapi import HTTPException, Request
from sqlalchemy.orm import Session

from trainyard import sweeps
from trainyard.api.auth import Principal
from trainyard.api.dependencies import reference_problem
from trainyard.api.sweeps import parse_sweep
from trainyard.db.dependencies import stored_targets
from trainyard.db.jobs import NewJob, PlannedDependency, create_jobs
from trainyard.db.sweeps import create_sweep, sweep_digest
from trainyard.dependencies import LocalRef, Ref, StoredRef, resolve_batch, topological_order
from trainyard.spec import Dependency, JobSpec, SpecError


@dataclass(frozen=True)
class SweepEntry:
    spec: sweeps.SweepSpec
    secrets_enc: str | None

    @property
    def name(self) -> str:
        return self.spec.name or self.spec.template.name


Entry = NewJob | SweepEntry


def is_sweep_entry(data: Any) -> bool:
    return isinstance(data, dict) and set(data) == {"sweep"}


def parse_sweep_entry(request: Request, data: dict[str, Any], who: Principal, prefix: str) -> SweepEntry:
    body = data["sweep"]
    if not isinstance(body, dict):
        raise SpecError([{"field": prefix + "sweep", "reason": "must be a sweep, as POST /v1/sweeps takes it"}])
    try:
        spec, secrets_enc = parse_sweep(request, body, who)
    except HTTPException as exc:
        problems: list[dict[str, str]] = exc.detail.get("problems", []) if isinstance(exc.detail, dict) else []
        raise SpecError([{**p, "field": f"{prefix}sweep.{p['field']}"} for p in problems]) from None
    return SweepEntry(spec, secrets_enc)


def _prefix(entries: Sequence[Entry]) -> Any:
    return lambda i: f"jobs[{i}].sweep.template." if isinstance(entries[i], SweepEntry) else f"jobs[{i}]."


def _spec_of(entry: Entry) -> JobSpec:
    return entry.spec.template if isinstance(entry, SweepEntry) else entry.spec


def check_entries(session: Session, entries: Sequence[Entry]) -> list[list[Ref]]:
    """Each entry's references; SpecError naming every unknown one, another workspace's, and each cycle."""
    kinds = ["sweep" if isinstance(e, SweepEntry) else "job" for e in entries]
    names = [e.name if isinstance(e, SweepEntry) else e.spec.name for e in entries]
    specs = [_spec_of(e) for e in entries]
    prefix = _prefix(entries)
    refs, problems = resolve_batch(names, [s.depends_on for s in specs], prefix, kinds)
    found = stored_targets(session, {(r.kind, r.target_id) for row in refs for r in row if isinstance(r, StoredRef)})
    for index, row in enumerate(refs):
        for position, (dep, ref) in enumerate(zip(specs[index].depends_on, row, strict=True)):
            problem = reference_problem(specs[index], specs, ref, found, batch=True)
            if problem:
                problems.append({"field": f"{prefix(index)}depends_on[{position}].{dep.kind}", "reason": problem})
    if problems:
        raise SpecError(problems)
    return refs


def store_entries(session: Session, entries: Sequence[Entry], refs: Sequence[Sequence[Ref]], actor: str) -> list[str]:
    """Store every entry (the caller commits); returns their ids in the batch's order."""
    kinds = ["sweep" if isinstance(e, SweepEntry) else "job" for e in entries]
    names = [e.name if isinstance(e, SweepEntry) else e.spec.name for e in entries]
    found = stored_targets(session, {(r.kind, r.target_id) for row in refs for r in row if isinstance(r, StoredRef)})
    ids: dict[int, str] = {}
    group: list[int] = []

    def flush() -> None:
        position = {index: n for n, index in enumerate(group)}
        new_jobs = []
        for index in group:
            entry = entries[index]
            assert isinstance(entry, NewJob)
            planned = []
            for dep, ref in zip(entry.spec.depends_on, refs[index], strict=True):
                if isinstance(ref, LocalRef) and ref.index in position:
                    planned.append(PlannedDependency("job", dep.on.value, batch_index=position[ref.index]))
                elif isinstance(ref, LocalRef):
                    target = ids[ref.index]
                    planned.append(PlannedDependency(kinds[ref.index], dep.on.value, target, None, names[ref.index]))
                else:
                    name = found[(ref.kind, ref.target_id)][1]
                    planned.append(PlannedDependency(ref.kind, dep.on.value, ref.target_id, None, name))
            new_jobs.append(replace(entry, depends=tuple(planned)))
        ids.update(zip(group, create_jobs(session, new_jobs, actor=actor), strict=True))
        group.clear()

    for index in topological_order(refs, kinds):
        entry = entries[index]
        if isinstance(entry, NewJob):
            group.append(index)
            continue
        flush()
        ids[index] = _store_sweep(session, entry, refs[index], ids, kinds, actor)
    flush()
    return [ids[index] for index in range(len(entries))]


def _store_sweep(
    session: Session, entry: SweepEntry, row: Sequence[Ref], ids: dict[int, str], kinds: list[str], actor: str
) -> str:
    spec = entry.spec
    digest = sweep_digest(spec)  # as submitted (batch-local names): the same batch again finds it
    resolved = [
        Dependency.model_validate({kinds[ref.index] if isinstance(ref, LocalRef) else ref.kind:
                                   ids[ref.index] if isinstance(ref, LocalRef) else ref.target_id, "on": dep.on})
        for dep, ref in zip(spec.template.depends_on, row, strict=True)
    ]  # fmt: skip
    spec = spec.model_copy(update={"template": spec.template.model_copy(update={"depends_on": resolved})})
    if spec.random is not None and spec.seed is None:
        spec.seed = sweeps.new_seed()
    return create_sweep(session, spec, sweeps.expand(spec), entry.secrets_enc, actor=actor, digest=digest)
