"""Checkpoints survive node death: TRAINYARD_CHECKPOINT_DIR is synced while the job runs, not only at its end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import chaos_cluster, kill_node, wait_until  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

INTERVAL_S = 2


def _steps(progress: Path) -> list[int]:
    return [int(line.split()[0]) for line in progress.read_text().splitlines() if line.strip()]


def test_a_job_killed_with_its_node_resumes_from_a_checkpoint_at_most_one_interval_old(
    chaos_cluster: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    cluster, client = chaos_cluster["cluster"], chaos_cluster["client"]
    progress = tmp_path / "progress.txt"
    progress.touch()
    script = (
        'f="$TRAINYARD_CHECKPOINT_DIR/step"; s=0; '
        'if [ -f "$f" ]; then s=$(cat "$f"); echo "resumed from $s"; fi; '
        'if [ "$TRAINYARD_ATTEMPT" != 1 ]; then exit 0; fi; '
        # one checkpoint a second, written aside then renamed (as torch.save users are told to)
        f'while true; do s=$((s+1)); echo $s > "$f.new"; mv "$f.new" "$f"; echo $s >> {progress}; sleep 1; done'
    )
    job = client.submit(
        {"name": "ckpt-every-second", "command": script, "checkpoint_interval_s": INTERVAL_S, "max_retries": 0}
    )
    wait_until(lambda: len(_steps(progress)) >= 7, 60, "seven checkpoints written")
    node_id = job.refresh().data["attempts"][0]["nodes"][0]
    kill_node(cluster, node_id)  # worker and job at once: nothing runs the part's end
    last_written = _steps(progress)[-1]
    assert job.wait(timeout=90) == "succeeded"
    first, second = job.data["attempts"][0], job.data["attempts"][1]
    assert first["reason"] == "node_lost" and second["nodes"][0] != node_id
    resumed = int(job.log_bytes(attempt=2).decode().split("resumed from ")[1].split()[0])
    # The last sync is at most one interval old when the node dies; one more second for the write cadence.
    assert last_written - (INTERVAL_S + 1) <= resumed <= last_written
