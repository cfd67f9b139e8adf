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

from operator import attrgetter

from trainyard.scheduler.views import JobView, Snapshot
from trainyard.spec import MAX_PRIORITY

AGING_STEP_S = 60.0
AGING_PER_STEP = 1
FAIR_SHARE_BAND = 50
_MAX_BAND = MAX_PRIORITY // FAIR_SHARE_BAND
_PRIORITY_SPAN = MAX_PRIORITY + 1
_seq = attrgetter("seq")
_priority_fields = attrgetter("priority", "submitted_s", "workspace")


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
    # Sort by seq first (the loop reads the queue in about that order, so this is nearly free),
    # then stably by a small integer key: ties keep submit order, and every comparison stays a
    # one-digit int compare in C. This and the key are the pass's largest per-job costs.
    by_seq = sorted(snapshot.queued, key=_seq)
    keys = order_keys(by_seq, snapshot.workspace_usage, snapshot.now_s)
    return [by_seq[i] for i in sorted(range(len(by_seq)), key=keys.__getitem__)]


def order_keys(jobs: list[JobView], workspace_usage: dict[str, float], now_s: float) -> list[int]:
    """One small integer per job: fair-share band (descending), usage rank, effective priority (desc)."""
    ranks, unused_rank = usage_ranks(workspace_usage)
    # key = (band from the top) * band_span + usage rank * priority_span + (MAX - effective)
    band_span = (max([*ranks.values(), unused_rank]) + 1) * _PRIORITY_SPAN
    offsets = {ws: rank * _PRIORITY_SPAN + MAX_PRIORITY for ws, rank in ranks.items()}
    unused_offset = unused_rank * _PRIORITY_SPAN + MAX_PRIORITY
    step_s, per_step, cap, offset_of = AGING_STEP_S, AGING_PER_STEP, MAX_PRIORITY, offsets.get
    # One expression per job, no function call (not even min()): at 100k jobs a call per job would
    # double the cost. `aged` is the uncapped effective priority, `effective` the capped one.
    return [
        (_MAX_BAND - (
            effective := (
                (aged if (aged := priority + per_step * int((now_s - submitted_s) // step_s)) < cap else cap)
                if submitted_s is not None and submitted_s < now_s
                else priority
            )
        ) // FAIR_SHARE_BAND) * band_span
        + offset_of(workspace, unused_offset)
        - effective
        for priority, submitted_s, workspace in map(_priority_fields, jobs)
    ]  # fmt: skip
