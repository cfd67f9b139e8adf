"""The leader's lease and fence in the database, node liveness and housekeeping, on a fake clock.

The database is real (SQLite and PostgreSQL); only time is simulated: `FakeClock` gives both the
monotonic reading and the wall clock, so a pause or an expiry is one `advance` away.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from trainyard.db.models import Job, Node, Part, SchedulerLease
from trainyard.scheduler.housekeeping import REDISPATCH_AFTER_S, CancelStops, lost_messages
from trainyard.scheduler.lease import Deposed, LeaderLease, current_leader, fenced_sessions
from trainyard.scheduler.liveness import Liveness
from trainyard.scheduler.outcomes import Effects

LEASE_S = 6.0


class FakeClock:
    def __init__(self) -> None:
        self.mono_s = 1000.0
        self.wall_at = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)

    def mono(self) -> float:
        return self.mono_s

    def wall(self) -> datetime:
        return self.wall_at

    def advance(self, seconds: float) -> None:
        self.mono_s += seconds
        self.wall_at += timedelta(seconds=seconds)


def _lease(sessions, name: str, clock: FakeClock) -> LeaderLease:  # type: ignore[no-untyped-def]
    return LeaderLease(sessions, name, LEASE_S, wall=clock.wall, mono=clock.mono)


def _add_node(sessions, node_id: str) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as session:
        session.add(Node(id=node_id, address="127.0.0.2", pool="default", slots=1))


def test_one_scheduler_leads_and_the_other_takes_over_only_after_expiry(sessions) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    first, second = _lease(sessions, "a", clock), _lease(sessions, "b", clock)
    assert first.try_acquire() and first.epoch == 1
    assert not second.try_acquire()
    clock.advance(LEASE_S - 0.5)
    assert not second.try_acquire()  # still unexpired in the database
    clock.advance(1.0)
    assert second.try_acquire() and second.epoch == 2
    with sessions() as session:
        assert current_leader(session, clock.wall()) == ("b", 2)


def test_a_deposed_leader_commits_nothing(sessions) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    old, new = _lease(sessions, "old", clock), _lease(sessions, "new", clock)
    assert old.try_acquire()
    fenced = fenced_sessions(sessions, old)
    _add_node(fenced, "before")  # committed while leading
    # The old leader is paused past its lease; the other scheduler takes over meanwhile.
    clock.advance(LEASE_S + 1)
    assert new.try_acquire()
    with pytest.raises(Deposed):
        _add_node(fenced, "after")
    with sessions() as session:
        assert set(session.scalars(select(Node.id))) == {"before"}
    assert not old.leading


def test_the_fence_holds_even_when_the_local_clock_thinks_the_lease_is_still_ours(sessions) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    old = _lease(sessions, "old", clock)
    assert old.try_acquire()
    fenced = fenced_sessions(sessions, old)
    # Another scheduler took the lease (say its wall clock ran ahead): only the database knows.
    with sessions.begin() as session:
        row = session.get(SchedulerLease, "scheduler")
        assert row is not None
        row.holder, row.epoch = "other", row.epoch + 1
    with pytest.raises(Deposed, match="fenced by the database"):
        _add_node(fenced, "x")
    with sessions() as session:
        assert session.get(Node, "x") is None


def test_lease_overrun_stops_the_leader_before_its_next_step(sessions) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    lease = _lease(sessions, "a", clock)
    assert lease.try_acquire()
    for _ in range(8):  # renewed every second: keeps leading
        clock.advance(1.0)
        assert lease.keep()
    assert lease.epoch == 1
    # Steps of 0.9 s without a renewal reaching the database (renewals fail silently here by
    # pretending one was just made): the monotonic deadline ends leadership on its own.
    lease._renewed_at = float("inf")
    stepped = 0
    while lease.keep():
        clock.advance(0.9)
        stepped += 1
        assert stepped < 10
    assert not lease.leading
    assert stepped * 0.9 <= LEASE_S


def test_a_resumed_leader_steps_down_and_rebuilds_under_a_new_epoch(sessions) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    lease = _lease(sessions, "a", clock)
    assert lease.try_acquire()
    clock.advance(LEASE_S + 2)  # SIGSTOP longer than the lease; nobody else took over
    with pytest.raises(Deposed, match="paused"):
        lease.check()
    assert not lease.leading
    assert lease.try_acquire()  # the lease is free again: same scheduler, next epoch
    assert lease.epoch == 2


def test_a_pause_shorter_than_the_lease_is_not_a_pause(sessions) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    lease = _lease(sessions, "a", clock)
    assert lease.try_acquire()
    clock.advance(LEASE_S - 2)
    lease.check()
    assert lease.leading


def test_node_loss_at_exactly_node_lost_after_s() -> None:
    clock = FakeClock()
    live = Liveness(10.0, clock.mono)
    live.reset()
    live.observe("n1")
    clock.advance(9.999)
    assert live.lost(["n1"]) == []
    clock.advance(0.001)
    assert live.lost(["n1"]) == ["n1"]


def test_liveness_counts_only_heartbeats_seen_while_continuously_leading() -> None:
    clock = FakeClock()
    live = Liveness(10.0, clock.mono)
    assert live.lost(["n1"]) == []  # not leading yet: nobody is judged
    live.reset()
    live.observe("n1")
    clock.advance(30.0)  # paused: no heartbeat could be read
    live.reset()  # the resumed scheduler leads again and judges from now on
    assert live.lost(["n1", "never-seen"]) == []
    clock.advance(10.0)
    assert sorted(live.lost(["n1", "never-seen"])) == ["n1", "never-seen"]


def test_cancel_stops_are_resent_on_their_period(sessions) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    _add_node(sessions, "n1")
    with sessions.begin() as session:
        session.add(Job(id="j1", name="j", spec={}, spec_digest="", seq=1, state="running", cancel_requested=True))
        session.add(Part(job_id="j1", attempt=1, rank=0, node_id="n1", active=True, state="running"))
    stops = CancelStops(clock.mono)
    sent = []
    for _ in range(12):  # 6 s at 0.5 s a tick
        effects = Effects()
        with sessions.begin() as session:
            stops.run(session, effects, clock.wall())
        sent.extend(effects.stops)
        clock.advance(0.5)
    assert [s[:3] for s in sent] == [("n1", "j1", 1), ("n1", "j1", 1)]  # at 0 s and after 5 s


def test_lost_messages_are_resent_only_after_a_later_heartbeat_does_not_list_them(sessions) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    _add_node(sessions, "n1")
    dispatched = clock.wall()
    with sessions.begin() as session:
        session.add(Job(id="j1", name="j", spec={}, spec_digest="", seq=1, state="scheduled"))
        session.add(Part(job_id="j1", attempt=1, rank=0, node_id="n1", active=True, state="scheduled",
                         dispatched_at=dispatched))  # fmt: skip
    later = dispatched + timedelta(seconds=REDISPATCH_AFTER_S + 1)
    with sessions() as session:
        # The node said nothing since: maybe it is just slow; not re-sent.
        assert lost_messages(session, {}, later) == []
        # It heartbeat later and listed the part: it has it.
        heard = {"n1": (later, {("j1", 1, 0)})}
        assert lost_messages(session, heard, later) == []
        # It heartbeat later without the part: the message was lost.
        assert lost_messages(session, {"n1": (later, set())}, later) == [("j1", 1)]


def test_a_heartbeat_listing_a_part_the_database_no_longer_gives_the_node_stops_it(sessions) -> None:  # type: ignore[no-untyped-def]
    from trainyard.scheduler.nodes import NodeTracker

    clock = FakeClock()
    tracker = NodeTracker(10.0, clock.mono)
    tracker.reset()
    with sessions.begin() as session:
        session.add(Node(id="n1", address="127.0.0.2", pool="default", slots=2, session="s1"))
        session.add(Node(id="n2", address="127.0.0.3", pool="default", slots=2, session="s2"))
        session.add(Job(id="j1", name="j", spec={}, spec_digest="", seq=1, state="running", attempt=2))
        session.add(Part(job_id="j1", attempt=1, rank=0, node_id="n1", active=False, state="lost"))
        session.add(Part(job_id="j1", attempt=2, rank=0, node_id="n2", active=True, state="running"))
    effects = Effects()
    beat = {"kind": "heartbeat", "node": "n1", "session": "s1", "running": [("j1", 1, 0), ("j1", 2, 0), ("gone", 1, 0)]}
    with sessions.begin() as session:
        tracker.heartbeat(session, beat, clock.wall(), effects)
    # Attempt 1 was torn down, attempt 2 is n2's, the third is unknown: all three are strays on n1.
    assert sorted(effects.stops) == [("n1", "gone", 1, "stale"), ("n1", "j1", 1, "stale"), ("n1", "j1", 2, "stale")]
    effects = Effects()
    with sessions.begin() as session:
        tracker.heartbeat(session, {**beat, "node": "n2", "session": "s2", "running": [("j1", 2, 0)]},
                          clock.wall(), effects)  # fmt: skip
    assert effects.stops == []
    clock.advance(9.0)
    assert tracker.liveness.lost(["n1", "n2"]) == []
    clock.advance(1.0)
    assert sorted(tracker.liveness.lost(["n1", "n2"])) == ["n1", "n2"]
