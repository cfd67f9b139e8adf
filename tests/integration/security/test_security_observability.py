"""Prometheus /metrics moves when jobs run; the audit trail names who submitted, cancelled, drained
and minted tokens; `trainyard token` and `trainyard audit` do what they say."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import clusters
from tests.integration.security.conftest import api, create_token, wait_for_state
from trainyard import transport
from trainyard.metrics import LOG_LAG_FIELD, LOG_PENDING_FIELD, SchedulerMetrics, read_scheduler_metrics
from trainyard.up import Cluster

pytestmark = pytest.mark.integration

TRAINYARD = [sys.executable, "-m", "trainyard"]
REDIS_DB = 7

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Cluster]:
    """A one-node cluster of this module's own: its counters move only with this module's jobs."""
    with clusters.own_cluster(
        tmp_path_factory.mktemp("observability"), redis_server, REDIS_DB, workers=1, slots=2
    ) as started:
        yield started


def scrape(cluster: Cluster, token: str) -> Samples:
    with api(cluster, token) as http:
        response = http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def cli(args: list[str], cluster: Cluster, token: str) -> subprocess.CompletedProcess[str]:
    env = {**cluster.env, "TRAINYARD_API_URL": cluster.api_url, "TRAINYARD_TOKEN": token}
    return subprocess.run([*TRAINYARD, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def _submit(cluster: Cluster, token: str, spec: dict[str, Any]) -> str:
    with api(cluster, token) as http:
        response = http.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_metrics_parse_and_their_counters_move_when_jobs_run(own_cluster: Cluster, tmp_path: Path) -> None:
    viewer = create_token(own_cluster, "viewer", "obs")["token"]
    user = create_token(own_cluster, "user", "obs")["token"]
    before = scrape(own_cluster, viewer)
    marker = tmp_path / "failed-once"
    flaky = _submit(
        own_cluster,
        user,
        {"name": "flaky", "max_retries": 1, "command": f"if [ -e {marker} ]; then exit 0; fi; touch {marker}; exit 3"},
    )
    sleeper = _submit(own_cluster, user, {"name": "sleeper", "command": "sleep 3"})
    parked = _submit(own_cluster, user, {"name": "parked", "pool": "nowhere", "priority": 321, "command": "true"})
    wait_for_state(own_cluster, sleeper, {"running"})
    during = scrape(own_cluster, viewer)
    assert value(during, "trainyard_parts_running", pool="default") >= 1
    assert value(during, "trainyard_jobs_queued", pool="nowhere", priority="321") == 1
    assert value(during, "trainyard_nodes", pool="default", state="up") == 1
    assert wait_for_state(own_cluster, flaky, {"succeeded", "failed"})["state"] == "succeeded"
    wait_for_state(own_cluster, sleeper, {"succeeded"})
    with api(own_cluster, user) as http:
        http.post(f"/v1/jobs/{parked}:cancel")
    time.sleep(1.2)  # the scheduler adds its figures to Redis twice a second
    after = scrape(own_cluster, viewer)
    assert (
        value(after, "trainyard_requeues_total", reason="exit")
        >= value(before, "trainyard_requeues_total", reason="exit") + 1
    )
    latency = "trainyard_job_start_latency_seconds"
    assert value(after, f"{latency}_count") >= value(before, f"{latency}_count") + 2
    assert value(after, f"{latency}_sum") > value(before, f"{latency}_sum")
    assert value(after, f"{latency}_bucket", le="+Inf") == value(after, f"{latency}_count")
    passes = "trainyard_scheduler_pass_seconds_count"
    assert value(after, passes) > value(before, passes)
    assert value(after, "trainyard_jobs", state="succeeded") >= value(before, "trainyard_jobs", state="succeeded") + 2
    assert value(after, "trainyard_jobs_queued", pool="nowhere", priority="321") == 0


def test_log_upload_lag_reported_in_heartbeats_reaches_the_hash(redis_server: str) -> None:
    client = transport.redis_client(redis_server.rsplit("/", 1)[0] + "/8")
    client.delete(transport.scheduler_metrics_key())
    recorder = SchedulerMetrics(client)
    recorder.heartbeat({"node": "node-7", LOG_LAG_FIELD: 0.75, LOG_PENDING_FIELD: 4096})
    recorder.heartbeat({"node": "node-8", LOG_LAG_FIELD: "not a number"})
    recorder.flush(force=True)
    fields = read_scheduler_metrics(client)
    assert fields[f"{LOG_LAG_FIELD}:node-7"] == 0.75
    assert fields[f"{LOG_PENDING_FIELD}:node-7"] == 4096
    assert f"{LOG_LAG_FIELD}:node-8" not in fields
    client.delete(transport.scheduler_metrics_key())


def test_the_audit_trail_names_who_submitted_cancelled_drained_and_minted(own_cluster: Cluster) -> None:
    admin = create_token(own_cluster, "admin", None, name="audit-admin")
    user = create_token(own_cluster, "user", "obs", name="audit-user")
    job = _submit(own_cluster, user["token"], {"name": "audited", "pool": "nowhere", "command": "true"})
    with api(own_cluster, user["token"]) as http:
        assert http.post(f"/v1/jobs/{job}:cancel").status_code == 200
    own_cluster.add_worker("node-audit", "127.0.0.31", pool="audit", slots=1)
    _wait_for_node(own_cluster, "node-audit")
    drained = cli(["node", "drain", "node-audit"], own_cluster, admin["token"])
    assert drained.returncode == 0, drained.stderr
    with api(own_cluster, admin["token"]) as http:
        by_job = http.get("/v1/audit", params={"job_id": job}).json()["events"]
        by_user = http.get("/v1/audit", params={"actor": "audit-user"}).json()["events"]
        drains = http.get("/v1/audit", params={"kind": "drained", "actor": admin["id"]}).json()["events"]
        minted = http.get("/v1/audit", params={"kind": "token_created", "since": "2000-01-01T00:00:00Z"}).json()
    assert [(e["kind"], e["actor"]) for e in by_job] == [
        ("cancelled", f"{user['id']}:audit-user"),
        ("submitted", f"{user['id']}:audit-user"),
    ]
    assert {e["job_id"] for e in by_user} == {job}
    assert [(e["node_id"], e["actor"]) for e in drains] == [("node-audit", f"{admin['id']}:audit-admin")]
    assert {e["detail"]["token_id"] for e in minted["events"]} >= {admin["id"], user["id"]}
    with api(own_cluster, user["token"]) as http:
        assert http.get("/v1/audit").status_code == 403


def test_audit_pages_with_a_cursor(own_cluster: Cluster) -> None:
    seen: list[int] = []
    with api(own_cluster, own_cluster.admin_token) as http:
        params: dict[str, Any] = {"limit": 2}
        while True:
            page = http.get("/v1/audit", params=params).json()
            seen += [e["id"] for e in page["events"]]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        everything = [e["id"] for e in http.get("/v1/audit", params={"limit": 1000}).json()["events"]]
    assert seen == everything and len(seen) > 2


def _wait_for_node(cluster: Cluster, node_id: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    with api(cluster, cluster.admin_token) as http:
        while node_id not in {n["id"] for n in http.get("/v1/nodes").json()["nodes"]}:
            assert time.monotonic() < deadline, f"{node_id} never registered"
            time.sleep(0.2)


def test_token_commands_show_the_token_once_and_deleted_tokens_stop_working(own_cluster: Cluster) -> None:
    created = cli(
        [
            "token",
            "create",
            "--role",
            "viewer",
            "--workspace",
            "cli-ws",
            "--name",
            "cli-viewer",
            "--expires-in",
            "1h",
            "--json",
        ],
        own_cluster,
        own_cluster.admin_token,
    )
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)
    assert token["token"].startswith("ty_") and token["role"] == "viewer" and token["expires_at"]
    listed = cli(["token", "list", "--json"], own_cluster, own_cluster.admin_token)
    assert listed.returncode == 0 and token["token"] not in listed.stdout
    assert token["id"] in {t["id"] for t in json.loads(listed.stdout)}
    assert cli(["job", "list", "--json"], own_cluster, token["token"]).returncode == 0
    refused = cli(["token", "list"], own_cluster, token["token"])
    assert refused.returncode == 1 and "403" in refused.stderr
    plain = cli(["token", "create", "--role", "user", "--workspace", "cli-ws"], own_cluster, own_cluster.admin_token)
    assert plain.returncode == 0 and plain.stdout.strip().startswith("ty_") and len(plain.stdout.split()) == 1
    assert cli(["token", "delete", token["id"]], own_cluster, own_cluster.admin_token).returncode == 0
    gone = cli(["job", "list"], own_cluster, token["token"])
    assert gone.returncode == 1 and "401" in gone.stderr
    bad = cli(["token", "create", "--role", "user"], own_cluster, own_cluster.admin_token)
    assert bad.returncode == 2 and "workspace" in bad.stderr
    audit = cli(["audit", "list", "--kind", "token_deleted", "--json"], own_cluster, own_cluster.admin_token)
    assert audit.returncode == 0
    assert token["id"] in {e["detail"]["token_id"] for e in json.loads(audit.stdout)}
