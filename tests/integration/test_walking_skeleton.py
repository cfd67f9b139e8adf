"""End to end on real Redis, Celery workers, subprocesses and both databases: submit → run → logs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import psutil
import pytest

from trainyard.client import Client, SpecRejected
from trainyard.up import Cluster

pytestmark = pytest.mark.integration

TRAINYARD = [sys.executable, "-m", "trainyard"]


def _cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*TRAINYARD, *args], env=env, capture_output=True, timeout=timeout, check=False)


def _wait_all(client: Client, ids: list[str], timeout_s: float = 180) -> dict[str, dict]:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout_s
    pending = set(ids)
    done: dict[str, dict] = {}  # type: ignore[type-arg]
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            data = client.job(job_id).data
            if data["state"] in ("succeeded", "failed", "cancelled"):
                done[job_id] = data
                pending.discard(job_id)
        time.sleep(0.3)
    assert not pending, f"{len(pending)} jobs did not end within {timeout_s} s"
    return done


def test_fifty_jobs_with_mixed_exit_codes_end_right_with_their_output(client: Client) -> None:
    codes = [0, 1, 2, 0, 7, 0, 42, 0, 3, 0] * 5
    specs = [
        {
            "name": f"mixed-{i}",
            "experiment": "mixed",
            "max_retries": 0,
            "command": f"printf 'out-{i}\\n'; printf 'err-{i}\\n' >&2; exit {code}",
        }
        for i, code in enumerate(codes)
    ]
    jobs = client.submit_many(specs)
    done = _wait_all(client, [j.id for j in jobs])
    for i, (job, code) in enumerate(zip(jobs, codes, strict=True)):
        data = done[job.id]
        assert data["state"] == ("succeeded" if code == 0 else "failed"), data
        assert data["exit_code"] == code
        assert data["attempts"][0]["exit_codes"] == [code]
        assert job.log_bytes() == f"out-{i}\n".encode()
        assert job.log_bytes(stream="stderr") == f"err-{i}\n".encode()
    nodes_used = {done[j.id]["attempts"][0]["nodes"][0] for j in jobs}
    assert nodes_used == {"node-1", "node-2"}


def test_five_megabytes_of_binary_output_read_back_byte_exact(client: Client, cli_env: dict[str, str]) -> None:
    script = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 20480); sys.stderr.buffer.write(b'\\xff\\xfe\\n')"
    expected = bytes(range(256)) * 20480
    job = client.submit({"name": "binary", "command": ["python3", "-c", script]})
    assert job.wait(timeout=120) == "succeeded"
    assert hashlib.sha256(job.log_bytes()).hexdigest() == hashlib.sha256(expected).hexdigest()
    assert job.log_bytes(stream="stderr") == b"\xff\xfe\n"
    from_cli = _cli(["job", "logs", job.id], cli_env)
    assert from_cli.returncode == 0, from_cli.stderr
    assert from_cli.stdout == expected
    lines = list(job.logs(stream="stderr"))
    assert [line.encode("utf-8", "surrogateescape") for line in lines] == [b"\xff\xfe\n"]


def test_following_a_job_shows_lines_live_and_ends_with_the_job(client: Client, cli_env: dict[str, str]) -> None:
    job = client.submit({"name": "ticker", "command": "for i in $(seq 1 30); do echo line-$i; sleep 0.1; done"})
    arrivals: list[tuple[float, str]] = []
    for line in job.logs(follow=True):
        arrivals.append((time.monotonic(), line))
    assert [line for _, line in arrivals] == [f"line-{i}\n" for i in range(1, 31)]
    # Live: the first lines arrived while the job was still printing (it prints for ~3 s).
    assert arrivals[-1][0] - arrivals[0][0] > 1.5
    assert job.refresh().state == "succeeded"
    again = client.submit({"name": "ticker-cli", "command": "for i in $(seq 1 10); do echo tick-$i; sleep 0.1; done"})
    followed = _cli(["job", "logs", again.id, "--follow"], cli_env, timeout=60)
    assert followed.returncode == 0
    assert followed.stdout == b"".join(f"tick-{i}\n".encode() for i in range(1, 11))


def _job_processes(job_id: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("TRAINYARD_JOB_ID") == job_id:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_cancelling_a_running_job_leaves_no_process_alive(client: Client) -> None:
    job = client.submit({"name": "tree", "command": "sleep 300 & (setsid sleep 300 &) ; sleep 300 & wait"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (job.refresh().state != "running" or len(_job_processes(job.id)) < 3):
        time.sleep(0.2)
    assert len(_job_processes(job.id)) >= 3
    client.cancel(job.id)
    cancelled_at = time.monotonic()
    while _job_processes(job.id) and time.monotonic() - cancelled_at < 5:
        time.sleep(0.1)
    assert _job_processes(job.id) == []
    assert job.wait(timeout=30) == "cancelled"
    assert job.data["attempts"][-1]["reason"] == "cancelled"


BAD_SPECS = [
    ({"command": "true"}, "name"),
    ({"name": "x"}, "command"),
    ({"name": "x", "command": ""}, "command"),
    ({"name": "x", "command": "true", "priority": "urgent"}, "priority"),
    ({"name": "x", "command": "true", "priority": 1001}, "priority"),
    ({"name": "x", "command": "true", "nodes": 0}, "nodes"),
    ({"name": "x", "command": "true", "resources": {"gpus": -1}}, "resources.gpus"),
    ({"name": "x", "command": "true", "resources": {"memory": "lots"}}, "resources.memory"),
    ({"name": "x", "command": "true", "max_wall_clock": "forever"}, "max_wall_clock"),
    ({"name": "x", "command": "true", "launcher": "slurm"}, "launcher"),
    ({"name": "x", "command": "true", "env": {"1BAD": "v"}}, "env"),
    ({"name": "x", "command": "true", "colour": "red"}, "colour"),
    ({"name": "x", "command": "true", "inputs": [{"id": "data"}]}, "inputs[0].uri"),
    ({"name": "x", "command": "true", "max_retries": -1}, "max_retries"),
    ({"name": "x", "command": "true", "workspace": "no spaces"}, "workspace"),
]


def test_bad_specs_are_refused_naming_the_field_and_nothing_is_stored(
    client: Client, cli_env: dict[str, str], tmp_path: object
) -> None:
    import json
    from pathlib import Path

    before = len(client.jobs(limit=100_000))
    for spec, field in BAD_SPECS:
        with pytest.raises(SpecRejected) as refused:
            client.submit(spec)
        fields = [p["field"] for p in refused.value.problems]
        assert field in fields, (spec, refused.value.problems)
    bad_file = Path(str(tmp_path)) / "bad.json"
    bad_file.write_text(json.dumps({"name": "x", "command": "true", "nodes": 0, "priority": "urgent"}))
    result = _cli(["job", "submit", str(bad_file)], cli_env)
    assert result.returncode == 2
    assert b"nodes" in result.stderr and b"priority" in result.stderr
    with pytest.raises(SpecRejected) as batch_refused:
        client.submit_many([{"name": "ok", "command": "true"}, {"name": "bad", "command": "true", "nodes": 0}])
    assert [p["field"] for p in batch_refused.value.problems] == ["jobs[1].nodes"]
    assert len(client.jobs(limit=100_000)) == before


def test_high_priority_job_submitted_after_normal_ones_starts_first(client: Client, cluster: Cluster) -> None:
    pool = f"prio-{int(time.time() * 1000) % 100000}"
    cluster.add_worker(f"{pool}-node", "127.0.0.9", pool=pool, slots=1)
    blocker = client.submit({"name": "blocker", "pool": pool, "command": "sleep 3"})
    deadline = time.monotonic() + 60
    while blocker.refresh().state != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert blocker.data["state"] == "running"
    normals = [client.submit({"name": f"normal-{i}", "pool": pool, "command": "true"}) for i in range(5)]
    high = client.submit({"name": "high", "pool": pool, "command": "true", "priority": "high"})
    done = _wait_all(client, [high.id, *[n.id for n in normals]], timeout_s=120)
    started = {job_id: data["attempts"][0]["started_at"] for job_id, data in done.items()}
    assert started[high.id] == min(started.values())
    assert all(data["state"] == "succeeded" for data in done.values())
