"""Pools with a setup task, host volumes declared by nodes, and pool volumes, on a real cluster.

Each test adds workers of its own to a pool of its own (real `trainyard worker` processes) and
stops them at its end.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from trainyard.client import Client, SpecRejected
from trainyard.up import Cluster

pytestmark = pytest.mark.integration

_addresses = itertools.count(110)


@pytest.fixture
def add_node(cluster: Cluster) -> Iterator[Callable[..., str]]:
    started: list[subprocess.Popen[bytes]] = []

    def add(pool: str, host_volumes: tuple[str, ...] = ()) -> str:
        node_id = f"{pool}-{len(started)}"
        started.append(cluster.add_worker(node_id, f"127.0.0.{next(_addresses)}", pool=pool, slots=1,
                                          host_volumes=host_volumes))  # fmt: skip
        return node_id

    yield add
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _node(client: Client, node_id: str) -> dict[str, Any] | None:
    return next((n for n in client.nodes() if n["id"] == node_id), None)


def _states_until(client: Client, node_id: str, final: set[str], timeout_s: float = 90.0) -> list[str]:
    """The node's states as polled, until one of `final` (every change kept, in order)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        node = _node(client, node_id)
        state = node["state"] if node else "(unregistered)"
        if not seen or seen[-1] != state:
            seen.append(state)
        if state in final:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"node {node_id} never reached {final}; states seen: {seen}")


def _pool_counts(client: Client, pool: str) -> dict[str, int]:
    return next(p["nodes"] for p in client.pools() if p["name"] == pool)


def test_a_node_prepares_with_the_pool_setup_task_before_it_takes_work(
    client: Client, add_node: Callable[..., str], tmp_path: Path
) -> None:
    pool = f"prep-{uuid.uuid4().hex[:6]}"
    marker = tmp_path / "setup-done"
    stored = client.set_pool_setup(pool, {
        "command": f'echo "setting up $TOOL_VERSION on $TRAINYARD_NODE_ID"; test "${{REGISTRY_TOKEN%cret}}" = t0ps3 '
                   f'&& echo token-ok; sleep 3; echo ok > {marker}',
        "env": {"TOOL_VERSION": "1.2.3"}, "secrets": {"REGISTRY_TOKEN": "t0ps3cret"},
    })  # fmt: skip
    # Secrets are write-only: their names come back, never their values.
    assert stored["settings"]["setup"]["secrets"] == {"REGISTRY_TOKEN": "***"}
    assert "t0ps3cret" not in str(stored) and "t0ps3cret" not in str(client.pools())
    node_id = add_node(pool)
    # Submitted while the node prepares: it must not start before the setup task has ended.
    job = client.submit({"name": "after-setup", "pool": pool, "command": f"test -f {marker} && echo saw-setup"})
    states = _states_until(client, node_id, {"up", "unusable"})
    assert "preparing" in states and states[-1] == "up", states
    assert job.wait(timeout=120) == "succeeded", job.refresh().data
    assert "saw-setup" in job.log_bytes().decode()
    log = client.node_logs(node_id)
    assert f"setting up 1.2.3 on {node_id}" in log and "token-ok" in log
    deadline = time.monotonic() + 30
    while _pool_counts(client, pool).get("idle") != 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    counts = _pool_counts(client, pool)
    assert counts["idle"] == 1 and counts["preparing"] == 0 and counts["unusable"] == 0, counts


def test_a_batchai_pools_setup_task_runs_from_its_share_under_the_mount_root_and_keeps_its_output(
    client: Client, add_node: Callable[..., str], tmp_path: Path
) -> None:
    pool = f"bai-setup-{uuid.uuid4().hex[:6]}"
    share = tmp_path / "afs"
    share.mkdir()
    (share / "setup.sh").write_text('echo "prepared $TRAINYARD_NODE_ID"\n')
    client.set_pool_volumes(
        pool, [{"name": "bai_cluster_afs", "kind": "host", "path": str(share), "mount_path": ".batchai/mounts/afs"}]
    )
    # As `trainyard pool create --format batchai` stores nodeSetup.setupTask.
    client.set_pool_setup(pool, {
        "command": "sh $AZ_BATCHAI_MOUNT_ROOT/afs/setup.sh",
        "env": {"AZ_BATCHAI_COMPAT": "2018-05-01", "AZ_BATCHAI_STDOUTERR_PREFIX": "$AZ_BATCHAI_MOUNT_ROOT/afs"},
    })  # fmt: skip
    node_id = add_node(pool, host_volumes=(str(share),))
    states = _states_until(client, node_id, {"up", "unusable"})
    assert states[-1] == "up", (states, client.node_logs(node_id))
    assert f"prepared {node_id}" in client.node_logs(node_id)
    kept = share / pool / node_id / "stdouterr" / "stdout.txt"  # <stdOutErrPathPrefix>/<pool>/<node id>/stdouterr
    assert kept.read_text() == f"prepared {node_id}\n"


def test_a_failing_setup_task_makes_the_node_unusable_with_its_log(
    client: Client, add_node: Callable[..., str], cli_env: dict[str, str]
) -> None:
    pool = f"bad-{uuid.uuid4().hex[:6]}"
    client.set_pool_setup(pool, {"command": "echo fetching drivers; echo 'driver 550 not found' >&2; exit 3"})
    node_id = add_node(pool)
    states = _states_until(client, node_id, {"up", "unusable"})
    assert states[-1] == "unusable", states
    node = _node(client, node_id)
    assert (
        node is not None and "exited with 3" in node["state_detail"] and "driver 550 not found" in node["state_detail"]
    )
    assert _pool_counts(client, pool)["unusable"] == 1
    shown = subprocess.run([sys.executable, "-m", "trainyard", "node", "logs", node_id], env=cli_env,
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "fetching drivers" in shown.stdout and "driver 550 not found" in shown.stdout
    # Work for the pool waits; it never lands on the unusable node.
    job = client.submit({"name": "never-here", "pool": pool, "command": "true"})
    time.sleep(3)
    data = job.refresh().data
    assert data["state"] == "queued" and data["pending_reason"], data
    client.cancel(job.id)


def test_setup_validation_names_the_field(client: Client) -> None:
    with pytest.raises(SpecRejected) as refused:
        client.set_pool_setup("p-valid", {"command": ""})
    assert "command" in str(refused.value)
    with pytest.raises(SpecRejected) as refused:
        client.set_pool_setup("p-valid", {"command": "true", "env": {"TRAINYARD_X": "1"}})
    assert "TRAINYARD_ prefix" in str(refused.value)
    with pytest.raises(SpecRejected) as refused:
        client.set_pool_setup("p-valid", {"command": "true", "env": {"A": "1"}, "secrets": {"A": "2"}})
    assert "both set A" in str(refused.value)
    with pytest.raises(SpecRejected) as refused:
        client.set_pool_setup("p-valid", {"command": "true", "timeout_s": 0})
    assert "timeout_s" in str(refused.value)


def test_jobs_with_a_host_volume_run_only_on_nodes_that_declare_it(
    client: Client, add_node: Callable[..., str], tmp_path: Path
) -> None:
    pool = f"hv-{uuid.uuid4().hex[:6]}"
    data = tmp_path / "nfs"
    (data / "imagenet").mkdir(parents=True)
    (data / "imagenet" / "labels.txt").write_text("cat\ndog\n")
    with_volume = add_node(pool, host_volumes=(str(data),))
    add_node(pool)  # declares none
    spec = {
        "pool": pool,
        "command": 'cat "$TRAINYARD_VOLUME_DATA/labels.txt"',
        "volumes": [{"name": "data", "kind": "host", "path": str(data / "imagenet"), "read_only": True}],
    }
    jobs = [client.submit({**spec, "name": f"hv-{i}"}) for i in range(4)]
    for job in jobs:
        assert job.wait(timeout=120) == "succeeded", job.refresh().data
        assert job.data["attempts"][-1]["nodes"] == [with_volume]
        assert job.log_bytes().decode() == "cat\ndog\n"
    elsewhere = client.submit(
        {**spec, "name": "hv-missing", "volumes": [{"name": "data", "kind": "host", "path": "/srv/not-declared"}]}
    )
    deadline = time.monotonic() + 30
    reason = ""
    while "host volume" not in reason and time.monotonic() < deadline:
        time.sleep(0.5)
        reason = elsewhere.refresh().data.get("pending_reason") or ""
    assert "host volume /srv/not-declared" in reason and "0 declare it" in reason, reason
    assert elsewhere.data["state"] == "queued"
    client.cancel(elsewhere.id)


def test_pool_volumes_reach_every_job_of_the_pool_and_a_job_volume_wins(
    client: Client, add_node: Callable[..., str], tmp_path: Path
) -> None:
    pool = f"pv-{uuid.uuid4().hex[:6]}"
    shared, own = tmp_path / "shared", tmp_path / "own"
    shared.mkdir()
    own.mkdir()
    (shared / "which").write_text("pool\n")
    (own / "which").write_text("job\n")
    client.set_pool_volumes(pool, [{"name": "shared", "kind": "host", "path": str(shared), "read_only": True}])
    add_node(pool, host_volumes=("/",))
    plain = client.submit({"name": "pv-plain", "pool": pool, "command": 'cat "$TRAINYARD_VOLUME_SHARED/which"'})
    assert plain.wait(timeout=120) == "succeeded", plain.refresh().data
    assert plain.log_bytes().decode() == "pool\n"
    overriding = client.submit(
        {
            "name": "pv-own",
            "pool": pool,
            "command": 'cat "$TRAINYARD_VOLUME_SHARED/which"',
            "volumes": [{"name": "shared", "kind": "host", "path": str(own)}],
        }
    )
    assert overriding.wait(timeout=120) == "succeeded", overriding.refresh().data
    assert overriding.log_bytes().decode() == "job\n"


def test_scaling_a_pool_keeps_its_setup_and_volumes(client: Client) -> None:
    pool = f"keep-{uuid.uuid4().hex[:6]}"
    client.set_pool_volumes(pool, [{"name": "scratch", "kind": "host", "path": "/tmp"}])
    client.set_pool_setup(pool, {"command": "true"})
    scaled = client.scale_pool(pool, {"min_nodes": 0, "max_nodes": 0, "autoscale": True})  # never starts a node
    assert scaled["settings"]["volumes"][0]["name"] == "scratch"
    assert scaled["settings"]["setup"]["command"] == "true"
    removed = client.remove_pool_setup(pool)
    assert "setup" not in removed["settings"] and removed["settings"]["volumes"]
