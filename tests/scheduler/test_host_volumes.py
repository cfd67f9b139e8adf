"""Placement of jobs with host volumes: only on nodes that declared them; preemption and reservation too."""

from __future__ import annotations

from dataclasses import replace

from tests.scheduler.builders import NOW_S, job, node, occupy
from trainyard.scheduler.placement import Snapshot, plan
from trainyard.scheduler.views import has_host_paths


def test_a_declared_host_volume_holds_its_subdirectories_and_nothing_beside_it() -> None:
    assert has_host_paths(("/mnt/nfs",), ("/mnt/nfs", "/mnt/nfs/data/a"))
    assert not has_host_paths(("/mnt/nfs",), ("/mnt/nfs2",))  # a sibling with a longer name
    assert not has_host_paths(("/mnt/nfs",), ("/mnt",))
    assert not has_host_paths((), ("/data",))
    assert has_host_paths(("/",), ("/anything/at/all",))
    assert has_host_paths((), ())


def test_a_job_goes_only_to_nodes_that_have_its_host_volume() -> None:
    plain = node("plain", gpus=0, cpus=4)
    nfs = replace(node("nfs", gpus=0, cpus=4), host_volumes=("/mnt/nfs",))
    needs = job("needs", 1, cpus=1, host_paths=("/mnt/nfs/imagenet",))
    free = job("free", 2, cpus=1)
    result = plan(Snapshot(nodes=[plain, nfs], queued=[needs, free], now_s=NOW_S))
    placed = {p.job_id: p.parts[0].node_id for p in result.placements}
    assert placed["needs"] == "nfs"
    assert "free" in placed


def test_a_gang_needs_every_node_with_the_volume_and_says_how_many_have_it() -> None:
    nodes = [node("a", gpus=0, cpus=4), replace(node("b", gpus=0, cpus=4), host_volumes=("/data",))]
    gang = job("gang", 1, nodes=2, cpus=1, host_paths=("/data",))
    result = plan(Snapshot(nodes=nodes, queued=[gang], now_s=NOW_S))
    assert not result.placements
    reason = result.pending["gang"]
    assert "host volume /data" in reason and "1 declares it" in reason and "--host-volume" in reason


def test_a_job_behind_it_of_another_shape_still_starts() -> None:
    nodes = [node("a", gpus=0, cpus=4)]
    stuck = job("stuck", 1, cpus=1, host_paths=("/data",))
    other = job("other", 2, cpus=1)
    result = plan(Snapshot(nodes=nodes, queued=[stuck, other], now_s=NOW_S))
    assert [p.job_id for p in result.placements] == ["other"]
    assert "host volume /data" in result.pending["stuck"]


def test_preemption_frees_room_only_on_a_node_with_the_volume() -> None:
    plain = node("plain", gpus=0, cpus=1)
    nfs = replace(node("nfs", gpus=0, cpus=1), host_volumes=("/data",))
    running = [
        occupy([plain], "low-plain", cpus=1, priority=100, preemptible=True),
        occupy([nfs], "low-nfs", cpus=1, priority=100, preemptible=True),
    ]
    high = job("high", 1, cpus=1, priority=900, host_paths=("/data",))
    result = plan(Snapshot(nodes=[plain, nfs], queued=[high], running=running, now_s=NOW_S))
    assert [job_id for job_id, _ in result.preemptions] == ["low-nfs"]


def test_a_busy_pool_reserves_a_node_that_has_the_volume() -> None:
    plain = node("plain", gpus=0, cpus=1)
    nfs = replace(node("nfs", gpus=0, cpus=1), host_volumes=("/data",))
    running = [occupy([plain], "r1", cpus=1, ends_in_s=60), occupy([nfs], "r2", cpus=1, ends_in_s=600)]
    waiting = job("waiting", 1, cpus=1, host_paths=("/data",))
    result = plan(Snapshot(nodes=[plain, nfs], queued=[waiting], running=running, now_s=NOW_S))
    assert [r.node_ids for r in result.reservations] == [["nfs"]]


def test_shortcut_and_full_walk_agree_with_host_volumes() -> None:
    nodes = [node(f"n{i}", gpus=0, cpus=2) for i in range(3)]
    nodes[2] = replace(nodes[2], host_volumes=("/data",))
    queued = [job(f"j{i}", i, cpus=1, host_paths=("/data",) if i % 2 else ()) for i in range(12)]
    fast = plan(Snapshot(nodes=[replace(n) for n in nodes], queued=queued, now_s=NOW_S))
    slow = plan(Snapshot(nodes=[replace(n) for n in nodes], queued=queued, now_s=NOW_S), shortcut_tail=False)
    assert [(p.job_id, p.parts[0].node_id) for p in fast.placements] == [
        (p.job_id, p.parts[0].node_id) for p in slow.placements
    ]
    assert fast.pending == slow.pending
    needing = [p for p in fast.placements if int(p.job_id[1:]) % 2]
    assert needing and all(p.parts[0].node_id == "n2" for p in needing)
