"""Queue order: priority with aging, fair share across workspaces, then submit order.

Aging: a queued job gains `AGING_PER_STEP` (1) point of effective priority for every full
`AGING_STEP_S` (60 s) it has waited since it was submitted, up to `MAX_PRIORITY` (1000). A
`low` job (250) therefore ranks with fresh `normal` work (500) after about 4 h 10 min and ahead
of it from 4 h 50 min on, so no placeable job waits forever behind a stream of
higher-priority work.

Fair share: effective priorities are compared in bands of `FAIR_SHARE_BAND` (50) points. Inside
a band the workspace that used the least recently (`Snapshot.workspace_usage`) goes first, then
the higher effective priority, then submit order (`seq`). Without bands, one minute of extra
waiting would outrank any fair-share difference and a sweep of 10,000 jobs would keep every
other workspace waiting until it drained. The named levels (250/500/750) are 250 apart, so
`high` always goes before `normal` and `normal` before `low` until aging closes the gap.
"""

from __future__ import annotations

from trainyard.scheduler.views import JobView, Snapshot
from trainyard.spec import MAX_PRIORITY

AGING_STEP_S = 60.0
AGING_PER_STEP = 1
FAIR_SHARE_BAND = 50
_MAX_BAND = MAX_PRIORITY // FAIR_SHARE_BAND
# seq is a database BigInteger (≥ 0): packing it below 2**63 keeps the order key one integer.
_SEQ_SPAN = 1 << 63
_PRIORITY_SPAN = MAX_PRIORITY + 1


def effective_priority(priority: int, submitted_s: float | None, now_s: float) -> int:
    """The job's priority plus its aging bonus, capped at MAX_PRIORITY."""
    if submitted_s is None or submitted_s >= now_s:
        return min(priority, MAX_PRIORITY)
    return min(MAX_PRIORITY, priority + AGING_PER_STEP * int((now_s - submitted_s) // AGING_STEP_S))


def usage_ranks(workspace_usage: dict[str, float]) -> tuple[dict[str, int], int]:
    """Dense rank of each workspace by recent use (equal use, equal rank), and the rank of no use."""
    values = sorted({*workspace_usage.values(), 0.0})
    rank_of = {value: rank for rank, value in enumerate(values)}
    return {ws: rank_of[used] for ws, used in workspace_usage.items()}, rank_of[0.0]


def queue_order(snapshot: Snapshot) -> list[JobView]:
    """Every queued job, first to be considered first."""
    queued = snapshot.queued
    keys = order_keys(snapshot)
    # Sorting positions by a list of plain ints keeps the comparisons in C: this is the pass's
    # largest per-job cost at 100k queued jobs.
    return [queued[i] for i in sorted(range(len(queued)), key=keys.__getitem__)]


def order_keys(snapshot: Snapshot) -> list[int]:
    """One integer per queued job encoding (band desc, usage rank, effective priority desc, seq)."""
    ranks, unused_rank = usage_ranks(snapshot.workspace_usage)
    rank_count = max([*ranks.values(), unused_rank]) + 1
    now_s = snapshot.now_s

    def key(job: JobView) -> int:
        submitted_s = job.submitted_s
        if submitted_s is None or submitted_s >= now_s:
            effective = job.priority
        else:
            effective = job.priority + AGING_PER_STEP * int((now_s - submitted_s) // AGING_STEP_S)
        effective = min(effective, MAX_PRIORITY)
        band_rank = (_MAX_BAND - effective // FAIR_SHARE_BAND) * rank_count + ranks.get(job.workspace, unused_rank)
        return (band_rank * _PRIORITY_SPAN + MAX_PRIORITY - effective) * _SEQ_SPAN + job.seq

    return [key(job) for job in snapshot.queued]
