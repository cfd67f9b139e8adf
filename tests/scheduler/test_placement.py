"""One scheduling pass: priority, aging, fair share, gangs, backfill, preemption, limits, packing, reasons."""

from __future__ import annotations

import copy
from unittest import mock

from tests.scheduler.builders import NOW_S, job, node, occupy
from trainyard.scheduler.capacity import PoolIndex
from trainyard.scheduler.pending import never_fits
from trainyard.scheduler.placement import PassPlan, Snapshot, plan
from trainyard.scheduler.priority import AGING_STEP_S, effective_priority, queue_order


def placed(result: PassPlan) -> dict[str, list[str]]:
    return {p.job_id: [part.node_id for part in p.parts] for p in result.placements}


# Priority, aging, fair share


def test_high_priority_job_placed_before_older_normal_ones() -> None:
    nodes = [node("a", gpus=1)]
    queued = [
        job("old-1", 1, gpus=1, submitted_s=NOW_S - 30),
        job("old-2", 2, gpus=1, submitted_s=NOW_S - 20),
        job("urgent", 3, gpus=1, priority=750),
    ]
    result = plan(Snapshot(nodes=nodes, queued=queued, now_s=NOW_S))
    assert placed(result) == {"urgent": ["a"]}
    assert set(result.pending) == {"old-1", "old-2"}


def test_equal_priority_goes_in_submit_order() -> None:
    queued = [job("second", 2, gpus=1), job("first", 1, gpus=1)]
    result = plan(Snapshot(nodes=[node("a", gpus=1)], queued=queued, now_s=NOW_S))
    assert placed(result) == {"first": ["a"]}


def test_effective_priority_gains_a_point_per_minute_waited_and_caps_at_1000() -> None:
    assert effective_priority(250, NOW_S, NOW_S) == 250
    assert effective_priority(250, NOW_S - AGING_STEP_S + 1, NOW_S) == 250
    assert effective_priority(250, NOW_S - 10 * AGING_STEP_S, NOW_S) == 260
    assert effective_priority(900, NOW_S - 1000 * AGING_STEP_S, NOW_S) == 1000
    assert effective_priority(500, None, NOW_S) == 500


def test_low_priority_job_that_waited_long_goes_before_fresh_normal_work() -> None:
    five_hours_s = 5 * 3600
    queued = [job("fresh-normal", 2, gpus=1), job("old-low", 1, gpus=1, priority=250, submitted_s=NOW_S - five_hours_s)]
    result = plan(Snapshot(nodes=[node("a", gpus=1)], queued=queued, now_s=NOW_S))
    assert placed(result) == {"old-low": ["a"]}


def test_a_stream_of_higher_priority_work_does_not_starve_a_low_job() -> None:
    # Each pass a fresh normal job arrives; the low job ages until it goes first.
    low = job("low", 0, gpus=1, priority=250, submitted_s=0.0)
    for minute in range(0, 24 * 60, 10):
        now_s = minute * 60.0
        fresh = job(f"normal-{minute}", minute + 1, gpus=1, submitted_s=now_s)
        result = plan(Snapshot(nodes=[node("a", gpus=1)], queued=[low, fresh], now_s=now_s))
        if "low" in placed(result):
            assert minute * 60 <= 5 * 3600  # about 4 h 10 min to 5 h of waiting
            return
    raise AssertionError("the low-priority job never went first")


def test_less_used_workspace_goes_first_among_equal_priority() -> None:
    queued = [job("busy-team", 1, gpus=1, workspace="busy"), job("quiet-team", 2, gpus=1, workspace="quiet")]
    snapshot = Snapshot(
        nodes=[node("a", gpus=1)], queued=queued, now_s=NOW_S, workspace_usage={"busy": 5e6, "quiet": 10.0}
    )
    assert placed(plan(snapshot)) == {"quiet-team": ["a"]}


def test_fair_share_holds_across_minutes_of_waiting_within_a_band() -> None:
    # A sweep submitted 20 minutes earlier must not outrank another workspace's fresh job.
    queued = [
        job("sweep-point", 1, gpus=1, workspace="busy", submitted_s=NOW_S - 20 * 60),
        job("quiet-job", 2, gpus=1, workspace="quiet"),
    ]
    snapshot = Snapshot(nodes=[node("a", gpus=1)], queued=queued, now_s=NOW_S, workspace_usage={"busy": 9e9})
    assert placed(plan(snapshot)) == {"quiet-job": ["a"]}


def test_fair_share_does_not_outrank_a_higher_priority_level() -> None:
    queued = [job("busy-high", 1, gpus=1, workspace="busy", priority=750), job("quiet-normal", 2, gpus=1)]
    snapshot = Snapshot(nodes=[node("a", gpus=1)], queued=queued, now_s=NOW_S, workspace_usage={"busy": 9e9})
    assert placed(plan(snapshot)) == {"busy-high": ["a"]}


def test_queue_order_is_priority_then_fair_share_then_seq() -> None:
    queued = [job("c", 3), job("a", 1, workspace="busy"), job("b", 2), job("top", 4, priority=1000)]
    snapshot = Snapshot(nodes=[], queued=queued, now_s=NOW_S, workspace_usage={"busy": 1.0})
    assert [j.id for j in queue_order(snapshot)] == ["top", "b", "c", "a"]


# Gangs, reservations and backfill


def test_gang_is_placed_whole_or_not_at_all() -> None:
    nodes = [node("a"), node("b"), node("c")]
    running = [occupy([nodes[2]], "busy", gpus=2)]
    queued = [job("gang", 1, nodes=3, gpus=4)]
    blocked = plan(Snapshot(nodes=nodes, queued=queued, running=running, now_s=NOW_S))
    assert blocked.placements == []
    assert blocked.pending["gang"].startswith("needs 3 nodes with 4 free GPUs in pool gpu; 2 have them")

    result = plan(Snapshot(nodes=[node("a"), node("b"), node("c")], queued=queued, now_s=NOW_S))
    (placement,) = result.placements
    assert sorted(part.node_id for part in placement.parts) == ["a", "b", "c"]
    assert [part.rank for part in placement.parts] == [0, 1, 2]
    assert all(part.gpus == [0, 1, 2, 3] for part in placement.parts)


def test_blocked_gang_reserves_the_nodes_that_free_first() -> None:
    nodes = [node("a"), node("b"), node("c")]
    running = [occupy([nodes[0]], "soon", gpus=4, ends_in_s=100), occupy([nodes[1]], "late", gpus=4, ends_in_s=9000)]
    result = plan(Snapshot(nodes=nodes, queued=[job("gang", 1, nodes=2, gpus=4)], running=running, now_s=NOW_S))
    (reservation,) = result.reservations
    assert (reservation.job_id, sorted(reservation.node_ids)) == ("gang", ["a", "c"])
    assert reservation.expected_start_s == NOW_S + 100
    assert result.pending["gang"] == (
        "needs 2 nodes with 4 free GPUs in pool gpu; 1 has them (2 of 48 slots and 8 of 12 GPUs busy); "
        "2 nodes reserved for it, expected to start in ~2 min"
    )


def test_backfill_only_when_it_ends_before_reservation() -> None:
    nodes = [node("a"), node("b")]
    running = [occupy([nodes[0]], "busy", gpus=4, ends_in_s=1000)]
    queued = [
        job("gang", 1, nodes=2, gpus=4, priority=750),
        job("long", 2, gpus=1, max_wall_clock_s=2000),
        job("short", 3, gpus=1, max_wall_clock_s=600),
    ]
    result = plan(Snapshot(nodes=nodes, queued=queued, running=running, now_s=NOW_S))
    assert placed(result) == {"short": ["b"]}
    assert result.pending["long"] == "waiting for 2 nodes reserved for job gang (expected in ~17 min)"


def test_jobs_that_avoid_the_reserved_nodes_still_start() -> None:
    nodes = [node("a"), node("b"), node("c", gpus=0, pool="cpu")]
    running = [occupy([nodes[0]], "busy", gpus=4, ends_in_s=1000)]
    queued = [job("gang", 1, nodes=2, gpus=4, priority=750), job("cpu-work", 2, pool="cpu", max_wall_clock_s=9e9)]
    result = plan(Snapshot(nodes=nodes, queued=queued, running=running, now_s=NOW_S))
    assert placed(result) == {"cpu-work": ["c"]}


def test_two_gangs_on_three_nodes_both_finish() -> None:
    """Pass after pass, with jobs ending at their wall clock: neither gang holds part of the other's nodes."""
    queued = {"g1": job("g1", 1, nodes=2, gpus=4, max_wall_clock_s=100), "g2": job("g2", 2, nodes=2, gpus=4)}
    running: dict[str, tuple[list[str], float]] = {}  # job id → (nodes, end time)
    finished: list[str] = []
    for tick in range(10):
        now_s = NOW_S + tick * 60.0
        for job_id, (_, end_s) in list(running.items()):
            if end_s <= now_s:
                del running[job_id]
                finished.append(job_id)
        nodes = {name: node(name) for name in "abc"}
        views = [occupy([nodes[n] for n in held], jid, gpus=4, ends_in_s=end_s - NOW_S)
                 for jid, (held, end_s) in running.items()]  # fmt: skip
        result = plan(Snapshot(nodes=list(nodes.values()), queued=list(queued.values()), running=views, now_s=now_s))
        for placement in result.placements:
            running[placement.job_id] = ([p.node_id for p in placement.parts], now_s + 100)
            del queued[placement.job_id]
    assert finished == ["g1", "g2"]


# Preemption


def test_preempts_lowest_priority_preemptible_job() -> None:
    nodes = [node("a")]
    running = [
        occupy(nodes, "normal-spot", gpus=2, priority=500, preemptible=True),
        occupy(nodes, "low-spot", gpus=2, priority=250, preemptible=True),
    ]
    result = plan(Snapshot(nodes=nodes, queued=[job("urgent", 1, gpus=2, priority=750)], running=running, now_s=NOW_S))
    assert result.preemptions == [("low-spot", 1)]
    assert result.placements == []  # the room frees when the preempted job exits
    assert result.pending["urgent"] == "preempting 1 lower-priority job to make room"


def test_preemption_picks_the_fewest_victims() -> None:
    nodes = [node("a"), node("b")]
    running = [
        occupy([nodes[0]], "small-1", gpus=2, priority=250, preemptible=True),
        occupy([nodes[0]], "small-2", gpus=2, priority=250, preemptible=True),
        occupy([nodes[1]], "whole", gpus=4, priority=250, preemptible=True),
    ]
    result = plan(Snapshot(nodes=nodes, queued=[job("big", 1, gpus=4, priority=750)], running=running, now_s=NOW_S))
    assert result.preemptions == [("whole", 1)]


def test_never_preempts_protected_or_equal_priority_work() -> None:
    nodes = [node("a")]
    running = [
        occupy(nodes, "protected", gpus=2, priority=250, preemptible=False),
        occupy(nodes, "peer", gpus=2, priority=750, preemptible=True),
    ]
    result = plan(Snapshot(nodes=nodes, queued=[job("urgent", 1, gpus=2, priority=750)], running=running, now_s=NOW_S))
    assert result.preemptions == []


def test_does_not_preempt_for_a_job_that_could_never_fit() -> None:
    nodes = [node("a")]
    running = [occupy(nodes, "spot", gpus=4, priority=250, preemptible=True)]
    result = plan(Snapshot(nodes=nodes, queued=[job("huge", 1, gpus=8, priority=750)], running=running, now_s=NOW_S))
    assert result.preemptions == []
    assert result.pending["huge"] == (
        "needs 1 node with 8 free GPUs in pool gpu; 0 have them; no node in pool gpu is big enough"
    )


def test_a_stopping_job_is_waited_for_not_preempted_again() -> None:
    nodes = [node("a")]
    running = [occupy(nodes, "spot", gpus=4, priority=250, preemptible=True, stopping=True)]
    result = plan(Snapshot(nodes=nodes, queued=[job("urgent", 1, gpus=4, priority=750)], running=running, now_s=NOW_S))
    assert result.preemptions == []
    assert result.pending["urgent"] == "waiting for 1 preempted job to exit"


def test_preempted_room_is_held_for_the_preempting_job() -> None:
    nodes = [node("a")]
    running = [occupy(nodes, "spot", gpus=2, priority=250, preemptible=True)]
    queued = [job("urgent", 1, gpus=4, priority=750), job("filler", 2, gpus=1, priority=500)]
    result = plan(Snapshot(nodes=nodes, queued=queued, running=running, now_s=NOW_S))
    assert result.preemptions == [("spot", 1)]
    assert "filler" not in placed(result)  # the 2 free GPUs wait for "urgent"


# Limits and drain


def test_workspace_gpu_quota_holds_gpu_jobs_back() -> None:
    queued = [job("gpu-job", 1, gpus=2, workspace="ml"), job("cpu-job", 2, workspace="ml"), job("other", 3, gpus=1)]
    snapshot = Snapshot(
        nodes=[node("a")], queued=queued, now_s=NOW_S,
        workspace_gpu_quota={"ml": 16}, workspace_gpus_in_use={"ml": 15},
    )  # fmt: skip
    result = plan(snapshot)
    assert set(placed(result)) == {"cpu-job", "other"}
    assert result.pending["gpu-job"] == "workspace ml GPU quota reached: 15 of 16 GPUs in use, this job needs 2"


def test_quota_counts_what_the_pass_places() -> None:
    queued = [job("first", 1, gpus=2, workspace="ml"), job("second", 2, gpus=2, workspace="ml")]
    snapshot = Snapshot(nodes=[node("a")], queued=queued, now_s=NOW_S, workspace_gpu_quota={"ml": 3})
    result = plan(snapshot)
    assert set(placed(result)) == {"first"}
    assert "quota" in result.pending["second"]


def test_sweep_concurrency_limit_holds_the_rest_of_the_sweep() -> None:
    queued = [job(f"point-{i}", i, sweep_id="s1") for i in range(5)] + [job("solo", 9)]
    snapshot = Snapshot(
        nodes=[node("a")], queued=queued, now_s=NOW_S, sweep_max_concurrency={"s1": 3}, sweep_running={"s1": 1}
    )
    result = plan(snapshot)
    assert set(placed(result)) == {"point-0", "point-1", "solo"}
    assert result.pending["point-2"] == "sweep concurrency limit 3 reached"


def test_draining_node_takes_no_new_work() -> None:
    nodes = [node("draining", schedulable=False), node("open")]
    result = plan(Snapshot(nodes=nodes, queued=[job("a", 1, gpus=1)], now_s=NOW_S))
    assert placed(result) == {"a": ["open"]}

    all_draining = [node("x", schedulable=False), node("y", schedulable=False)]
    result = plan(Snapshot(nodes=all_draining, queued=[job("a", 1, gpus=1)], now_s=NOW_S))
    assert result.pending["a"] == "draining: all 2 nodes in pool gpu take no new work"


# Packing


def test_packing_prefers_partially_used_nodes() -> None:
    nodes = [node("empty"), node("half")]
    running = [occupy([nodes[1]], "busy", gpus=2)]
    queued = [job("one-gpu", 1, gpus=1), job("four-gpus", 2, gpus=4)]
    result = plan(Snapshot(nodes=nodes, queued=queued, running=running, now_s=NOW_S))
    assert placed(result) == {"one-gpu": ["half"], "four-gpus": ["empty"]}


def test_packing_fills_the_fullest_node_that_fits() -> None:
    nodes = [node("one-used"), node("three-used"), node("empty")]
    running = [occupy([nodes[0]], "x", gpus=1), occupy([nodes[1]], "y", gpus=3)]
    result = plan(Snapshot(nodes=nodes, queued=[job("j", 1, gpus=1)], running=running, now_s=NOW_S))
    assert placed(result) == {"j": ["three-used"]}


def test_cpu_only_work_stays_off_free_gpus() -> None:
    nodes = [node("gpu-box"), node("cpu-box", gpus=0, cpus=8)]
    result = plan(Snapshot(nodes=nodes, queued=[job("etl", 1, cpus=2)], now_s=NOW_S))
    assert placed(result) == {"etl": ["cpu-box"]}


def test_gpu_indices_are_never_given_twice() -> None:
    nodes = [node("a")]
    running = [occupy(nodes, "holder", gpus=1)]  # holds GPU 0
    result = plan(Snapshot(nodes=nodes, queued=[job(f"j{i}", i, gpus=1) for i in range(4)], running=running))
    given = [gpu for p in result.placements for part in p.parts for gpu in part.gpus]
    assert sorted(given) == [1, 2, 3]


# Pending reasons


def test_pending_reason_names_nodes_gpus_and_pool() -> None:
    nodes = [node("a"), node("b"), node("c")]
    running = [occupy([nodes[1]], "x", gpus=1), occupy([nodes[2]], "y", gpus=1)]
    result = plan(Snapshot(nodes=nodes, queued=[job("gang", 1, nodes=2, gpus=4)], running=running, now_s=NOW_S))
    assert result.pending["gang"].startswith("needs 2 nodes with 4 free GPUs in pool gpu; 1 has them")


def test_cpu_and_memory_asks_are_named() -> None:
    nodes = [node("a", gpus=0, cpus=2, pool="cpu")]
    queued = [job("j", 1, pool="cpu", cpus=4.0, memory_bytes=8 * 2**30)]
    reason = plan(Snapshot(nodes=nodes, queued=queued, now_s=NOW_S)).pending["j"]
    assert reason.startswith("needs 1 node with 4 free CPUs and 8 GiB free memory in pool cpu; 0 have them")


def test_jobs_behind_say_how_many_wait_ahead_of_them() -> None:
    queued = [job(f"j{i}", i, gpus=4) for i in range(4)]
    running = []
    nodes = [node("a")]
    running.append(occupy(nodes, "x", gpus=4))
    result = plan(Snapshot(nodes=nodes, queued=queued, running=running, now_s=NOW_S))
    assert result.pending["j1"] == "behind 1 job in the queue for pool gpu (1 of 16 slots and 4 of 4 GPUs busy)"
    assert result.pending["j3"] == "behind 3 jobs in the queue for pool gpu (1 of 16 slots and 4 of 4 GPUs busy)"


def test_long_queues_round_the_count_so_the_reason_rarely_changes() -> None:
    nodes = [node("a")]
    running = [occupy(nodes, "x", gpus=4)]
    queued = [job(f"j{i}", i, gpus=4) for i in range(4300)]
    result = plan(Snapshot(nodes=nodes, queued=queued, running=running, now_s=NOW_S))
    assert result.pending["j99"] == "behind 99 jobs in the queue for pool gpu (1 of 16 slots and 4 of 4 GPUs busy)"
    assert result.pending["j100"] == "behind 100+ jobs in the queue for pool gpu"
    assert result.pending["j4250"] == "behind 4,200+ jobs in the queue for pool gpu"
    assert len(result.pending) == 4300


def test_a_pool_without_nodes_says_so() -> None:
    result = plan(Snapshot(nodes=[node("a")], queued=[job("j", 1, pool="tpu")], now_s=NOW_S))
    assert result.pending["j"] == "no nodes in pool tpu"


def test_every_queued_job_not_placed_has_a_reason() -> None:
    nodes = [node("a"), node("b", schedulable=False)]
    queued = [job(f"j{i}", i, gpus=1 + i % 4, nodes=1 + i % 2, sweep_id="s" if i % 3 == 0 else None)
              for i in range(50)]  # fmt: skip
    snapshot = Snapshot(nodes=nodes, queued=queued, now_s=NOW_S, sweep_max_concurrency={"s": 1})
    result = plan(snapshot)
    assert set(result.pending) | set(placed(result)) == {j.id for j in queued}
    assert not set(result.pending) & set(placed(result))


# Submit-time refusal


def test_never_fits_refuses_more_gpus_per_node_than_the_largest_node() -> None:
    nodes = [node("a", gpus=4), node("b", gpus=2)]
    assert never_fits(job("j", 1, gpus=8), nodes) == "asks 8 GPUs per node but the largest node in pool gpu has 4"


def test_never_fits_refuses_more_nodes_than_the_pool_has() -> None:
    assert never_fits(job("j", 1, nodes=3), [node("a"), node("b")]) == "asks for 3 nodes but pool gpu has 2"


def test_never_fits_counts_nodes_big_enough_for_a_gang() -> None:
    nodes = [node("a", gpus=4), node("b", gpus=2), node("c", gpus=2)]
    assert never_fits(job("j", 1, nodes=2, gpus=4), nodes) == (
        "needs 2 nodes with 4 GPUs each but only 1 node in pool gpu is that big"
    )


def test_never_fits_says_nothing_for_a_pool_with_no_nodes_yet_or_a_job_that_fits() -> None:
    assert never_fits(job("j", 1, gpus=64, pool="new"), [node("a")]) is None
    assert never_fits(job("j", 1, gpus=4), [node("a", schedulable=False)]) is None


def test_never_fits_refuses_a_job_over_the_workspace_quota() -> None:
    reason = never_fits(job("j", 1, nodes=2, gpus=4), [node("a"), node("b")], gpu_quota=4)
    assert reason == "asks for 8 GPUs in all but the workspace's GPU quota is 4"


def test_plan_leaves_the_snapshot_untouched() -> None:
    nodes = [node("a"), node("b")]
    running = [occupy([nodes[0]], "spot", gpus=4, priority=250, preemptible=True)]
    queued = [job("g", 1, nodes=2, gpus=4, priority=750), job("s", 2, gpus=1)]
    snapshot = Snapshot(nodes=nodes, queued=queued, running=running, now_s=NOW_S)
    before = copy.deepcopy(snapshot)
    plan(snapshot)
    assert snapshot == before


# Speed, structurally: blocked jobs of a shape that already failed cost no node lookup.


def test_ten_thousand_blocked_jobs_of_three_shapes_cost_a_few_lookups() -> None:
    nodes = [node(f"n{i}") for i in range(50)]
    running = [occupy([n], f"r{i}", gpus=4) for i, n in enumerate(nodes)]
    queued = [job(f"j{i}", i, gpus=1 + i % 3, max_wall_clock_s=3600) for i in range(10_000)]
    with mock.patch.object(PoolIndex, "candidates", autospec=True, side_effect=PoolIndex.candidates) as lookups:
        result = plan(Snapshot(nodes=nodes, queued=queued, running=running, now_s=NOW_S))
    assert len(result.pending) == 10_000
    assert lookups.call_count == 3  # one per shape
