"""The dependency gate: resolves `depends_on` edges whose target ended, in the scheduler's pass.

A job that waits on dependencies has `waiting_on > 0` and stays out of the queue the planner reads
(scheduler/snapshot.py). The gate never walks those jobs: it looks only at targets that ended while
edges still wait on them (`dependants_waiting > 0` and a terminal state, one index range), and at
sweeps with waiting edges. Each edge it resolves is `met` (the dependant's `waiting_on` goes down;
at zero the job joins the queue in the same pass) or `failed`: the dependant can never run and ends
`cancelled` with reason `dependency_failed`. That ending is itself a target ending, so the gate goes
round again in the same transaction, and a chain of dependants ends at once.

It writes in the pass's transaction, which commits only while this scheduler holds the lease
(scheduler/lease.py); every job it ends is compare-and-set from `queued` on its attempt number.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from trainyard.db.dependencies import WAITING, bump_dependants, sweep_progress, waiting_reasons
from trainyard.db.models import Event, Job, JobDependency, Sweep, utcnow
from trainyard.dependencies import SweepProgress, Verdict, job_verdict, sweep_verdict
from trainyard.spec import TERMINAL_STATES, AttemptReason, JobState, state_values

# A chain longer than this ends over several passes (one per this many links).
ROUNDS_PER_PASS = 64
TARGETS_PER_ROUND = 2_000
_TERMINAL = state_values(TERMINAL_STATES)
_ENDED_WITH_DEPENDANTS = (
    select(Job.id, Job.state).where(Job.state.in_(_TERMINAL), Job.dependants_waiting > 0).limit(TARGETS_PER_ROUND)
)
_jobs: Table = Job.__table__  # type: ignore[assignment]
_edges: Table = JobDependency.__table__  # type: ignore[assignment]


@dataclass
class GateResult:
    met: int = 0
    released: int = 0  # jobs with no dependency left: they join the queue
    cancelled: list[str] = field(default_factory=list)  # ended with reason dependency_failed


@dataclass(frozen=True, slots=True)
class _Target:
    kind: str
    target_id: str
    state: str | None = None  # a job's
    progress: SweepProgress | None = None  # a sweep's

    def verdict(self, on: str) -> Verdict | None:
        if self.progress is not None:
            return sweep_verdict(on, self.progress)
        return job_verdict(on, str(self.state))


@dataclass
class DependencyGate:
    clock: Callable[[], datetime] = utcnow

    def run(self, session: Session) -> GateResult:
        result = GateResult()
        now = self.clock()
        sweeps_to_check: set[str] | None = None  # None: every sweep with waiting edges
        for _ in range(ROUNDS_PER_PASS):
            ended = self._ended_jobs(session)
            targets = ended + self._sweeps(session, sweeps_to_check)
            if not targets:
                break
            cancelled = self._resolve(session, targets, now, result)
            if not cancelled and len(ended) < TARGETS_PER_ROUND:
                break  # nothing ended this round, so no target is newly decided
            # The jobs it ended may be sweep points: only their sweeps can be newly decided.
            rows = session.execute(select(Job.sweep_id).where(Job.id.in_(cancelled), Job.sweep_id.is_not(None)))
            sweeps_to_check = {str(row[0]) for row in rows}
        return result

    def _ended_jobs(self, session: Session) -> list[_Target]:
        rows = session.execute(_ENDED_WITH_DEPENDANTS)  # every pass runs it: built once
        return [_Target("job", job_id, state=state) for job_id, state in rows]

    def _sweeps(self, session: Session, only: set[str] | None) -> list[_Target]:
        query = select(Sweep.id).where(Sweep.dependants_waiting > 0)
        if only is not None:
            if not only:
                return []
            query = query.where(Sweep.id.in_(only))
        ids = list(session.scalars(query.limit(TARGETS_PER_ROUND)))
        return [_Target("sweep", sweep_id, progress=sweep_progress(session, sweep_id)) for sweep_id in ids]

    def _resolve(self, session: Session, targets: list[_Target], now: datetime, result: GateResult) -> list[str]:
        """Resolve the decided edges on `targets`; returns the jobs this ended (dependency_failed)."""
        by_key = {(t.kind, t.target_id): t for t in targets}
        edges = session.execute(
            select(JobDependency.id, JobDependency.job_id, JobDependency.target_kind, JobDependency.target_id,
                   JobDependency.on)
            .where(JobDependency.target_id.in_([t.target_id for t in targets]), JobDependency.status == WAITING)
        )  # fmt: skip
        met: Counter[str] = Counter()
        failed: dict[str, tuple[str, str, str]] = {}  # dependant → the edge that failed it
        resolved: list[dict[str, object]] = []
        per_target: Counter[tuple[str, str]] = Counter()
        for edge_id, job_id, kind, target_id, on in edges:
            target = by_key.get((kind, target_id))
            verdict = target.verdict(on) if target is not None else None
            if verdict is None:
                continue
            resolved.append({"eid": edge_id, "status": verdict.value})
            per_target[(kind, target_id)] += 1
            if verdict is Verdict.MET:
                met[job_id] += 1
            else:
                failed.setdefault(job_id, (kind, target_id, on))
        if not resolved:
            return []
        self._mark(session, resolved, now)
        bump_dependants(session, per_target, -1)
        cancelled = self._cancel(session, failed, now)
        self._release(session, {j: n for j, n in met.items() if j not in failed}, result)
        result.met += sum(met.values())
        result.cancelled.extend(cancelled)
        return cancelled

    def _mark(self, session: Session, resolved: list[dict[str, object]], now: datetime) -> None:
        session.connection().execute(
            update(_edges).where(_edges.c.id == bindparam("eid"), _edges.c.status == WAITING)
            .values(status=bindparam("status"), resolved_at=now),
            resolved,
        )  # fmt: skip

    def _cancel(self, session: Session, failed: dict[str, tuple[str, str, str]], now: datetime) -> list[str]:
        """End each dependant that can never run: compare-and-set from `queued` on its attempt."""
        if not failed:
            return []
        queued = session.execute(
            select(Job.id, Job.attempt).where(Job.id.in_(list(failed)), Job.state == JobState.QUEUED.value)
        ).all()  # fmt: skip
        if not queued:
            return []
        session.connection().execute(
            update(_jobs)
            .where(_jobs.c.id == bindparam("jid"), _jobs.c.attempt == bindparam("num"),
                   _jobs.c.state == JobState.QUEUED.value)
            .values(state=JobState.CANCELLED.value, end_reason=AttemptReason.DEPENDENCY_FAILED.value,
                    pending_reason=None, ended_at=now, updated_at=now),
            [{"jid": job_id, "num": attempt} for job_id, attempt in queued],
        )  # fmt: skip
        ended = [job_id for job_id, _ in queued]
        session.execute(
            insert(Event),
            [{"at": now, "kind": "cancelled", "job_id": job_id,
              "detail": {"reason": AttemptReason.DEPENDENCY_FAILED.value,
                         "dependency": {failed[job_id][0]: failed[job_id][1], "on": failed[job_id][2]}}}
             for job_id in ended],
        )  # fmt: skip
        self._void(session, ended, now)
        return ended

    def _void(self, session: Session, ended: list[str], now: datetime) -> None:
        """Edges of ended jobs that still wait are moot: drop them from their targets' counts."""
        rows = session.execute(
            select(JobDependency.id, JobDependency.target_kind, JobDependency.target_id)
            .where(JobDependency.job_id.in_(ended), JobDependency.status == WAITING)
        ).all()  # fmt: skip
        if not rows:
            return
        self._mark(session, [{"eid": edge_id, "status": "void"} for edge_id, _, _ in rows], now)
        bump_dependants(session, Counter((kind, target_id) for _, kind, target_id in rows), -1)

    def _release(self, session: Session, met: dict[str, int], result: GateResult) -> None:
        """Take met edges off each dependant's count; those with some left get a new pending reason."""
        if not met:
            return
        session.connection().execute(
            update(_jobs).where(_jobs.c.id == bindparam("jid"), _jobs.c.state == JobState.QUEUED.value)
            .values(waiting_on=_jobs.c.waiting_on - bindparam("n")),
            [{"jid": job_id, "n": n} for job_id, n in met.items()],
        )  # fmt: skip
        ids = list(met)
        still = dict(session.execute(select(Job.id, Job.waiting_on).where(Job.id.in_(ids))).all())
        waiting = [job_id for job_id in ids if still.get(job_id, 0) > 0]
        result.released += sum(1 for job_id in ids if still.get(job_id, 0) == 0)
        reasons = waiting_reasons(session, waiting)
        released = [{"jid": job_id, "reason": None} for job_id in ids if still.get(job_id, 0) == 0]
        changed = released + [{"jid": job_id, "reason": reason} for job_id, reason in reasons.items()]
        if changed:
            session.connection().execute(
                update(_jobs).where(_jobs.c.id == bindparam("jid"), _jobs.c.state == JobState.QUEUED.value)
                .values(pending_reason=bindparam("reason")),
                changed,
            )  # fmt: skip
