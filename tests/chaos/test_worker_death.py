"""The worker process dies but the machine lives; a job is preempted and resumes from its checkpoint."""

from __future__ import annotations

import signal
import time
from typing import Any

import psutil
import pytest

from tests.chaos.conftest import wait_until

pytestmark = pytest.mark.chaos


def _job_processes(job_id: str, attempt: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if env.get("TRAINYARD_JOB_ID") == job_id and env.get("TRAINYARD_ATTEMPT") == str(attempt):
            found.append(proc)
    return found


def test_killing_only_the_worker_process_kills_its_jobs_and_requeues_them(chaos_cluster: dict[str, Any]) -> None:
    cluster, client = chaos_cluster["cluster"], chaos_cluster["client"]
    job = client.submit(
        {
            "name": "orphan",
            "max_retries": 0,
            "command": 'if [ "$TRAINYARD_ATTEMPT" = 1 ]; then sleep 300 & sleep 300; fi; echo done',
        }
    )
    wait_until(lambda: job.refresh().state == "running" and len(_job_processes(job.id, 1)) >= 2, 60, "the job")
    node_id = job.data["attempts"][0]["nodes"][0]
    worker = cluster.process(node_id)
    worker.send_signal(signal.SIGKILL)  # the worker alone: its job processes are not touched
    killed_at = time.monotonic()
    wait_until(lambda: not _job_processes(job.id, 1), 15, "the orphaned job processes to die")
    orphans_gone_s = time.monotonic() - killed_at
    assert job.wait(timeout=60) == "succeeded"
    first = job.data["attempts"][0]
    assert first["reason"] == "node_lost" and job.data["retries_used"] == 0
    assert orphans_gone_s < 15


def test_a_preempted_job_finds_its_checkpoint_in_the_next_attempt(chaos_cluster: dict[str, Any]) -> None:
    cluster, client = chaos_cluster["cluster"], chaos_cluster["client"]
    pool = "ckpt"
    cluster.add_worker("ckpt-1", "127.0.0.60", pool=pool, slots=1)
    wait_until(lambda: any(n["id"] == "ckpt-1" and n["state"] == "up" for n in client.nodes()), 30, "ckpt-1")
    script = (
        'f="$TRAINYARD_CHECKPOINT_DIR/step"; '
        'if [ -f "$f" ]; then echo "resumed from $(cat "$f")"; exit 0; fi; '
        'echo 41 > "$f"; trap "exit 143" TERM; sleep 300 & wait'
    )
    low = client.submit(
        {"name": "checkpointed", "pool": pool, "preemptible": True, "priority": "low", "command": script}
    )
    wait_until(lambda: low.refresh().state == "running", 30, "the low job")
    time.sleep(1)
    high = client.submit({"name": "urgent", "pool": pool, "priority": "high", "command": "true"})
    assert high.wait(timeout=90) == "succeeded"
    assert low.wait(timeout=90) == "succeeded"
    assert low.data["attempts"][0]["reason"] == "preempted"
    assert low.log_bytes(attempt=2) == b"resumed from 41\n"


def test_a_worker_stopped_with_sigterm_saves_what_its_job_checkpoints_on_sigterm(
    chaos_cluster: dict[str, Any],
) -> None:
    """The job writes its checkpoint only in its SIGTERM handler: the node's shutdown must keep it."""
    cluster, client = chaos_cluster["cluster"], chaos_cluster["client"]
    pool = "ckpt-term"
    first = cluster.add_worker("ckpt-term-1", "127.0.0.61", pool=pool, slots=1)
    wait_until(lambda: any(n["id"] == "ckpt-term-1" and n["state"] == "up" for n in client.nodes()), 30, "node 1")
    script = (
        'f="$TRAINYARD_CHECKPOINT_DIR/step"; '
        'if [ -f "$f" ]; then echo "resumed from $(cat "$f")"; exit 0; fi; '
        "trap 'echo 42 > \"$f\"; exit 143' TERM; sleep 300 & wait"
    )
    job = client.submit({"name": "term-checkpoint", "pool": pool, "command": script})
    wait_until(lambda: job.refresh().state == "running", 30, "the job")
    time.sleep(1)
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=60)
    cluster.add_worker("ckpt-term-2", "127.0.0.62", pool=pool, slots=1)
    assert job.wait(timeout=120) == "succeeded", job.refresh().data
    attempts = job.data["attempts"]
    # The node said it was leaving: no attempt went to it after its SIGTERM.
    assert [a["nodes"] for a in attempts] == [["ckpt-term-1"], ["ckpt-term-2"]], attempts
    assert job.log_bytes(attempt=len(attempts)) == b"resumed from 42\n"
