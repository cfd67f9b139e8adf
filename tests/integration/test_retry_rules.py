"""Retry rules on a real cluster and both databases: a rule retries by exit code with its own max and
backoff, attempts name the rule, and an outcome no rule names falls back to max_retries."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from trainyard.client import Client, SpecRejected

pytestmark = pytest.mark.integration

TRAINYARD = [sys.executable, "-m", "trainyard"]
BACKOFF_S = 1.0


def _cli(cli_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TRAINYARD, *args], env=cli_env, capture_output=True, text=True, timeout=60, check=False)


def test_a_job_killed_with_137_is_retried_by_its_rule_up_to_max_and_attempts_name_the_rule(
    client: Client, cli_env: dict[str, str]
) -> None:
    # A real SIGKILL of the job's shell: the node reports 137 (128 + 9), as the kernel's OOM killer would.
    job = client.submit(
        {
            "name": "retry-oom",
            "command": 'echo "attempt=$TRAINYARD_ATTEMPT"; kill -KILL $$',
            "max_retries": 0,
            "retry": [
                {"exit_codes": [1], "max": 5},
                {"exit_codes": [137, 143], "max": 2, "backoff": f"{BACKOFF_S:g}s"},
            ],
        }
    )
    assert job.wait(timeout=180) == "failed"
    data = job.refresh().data
    attempts = data["attempts"]
    assert [a["exit_codes"] for a in attempts] == [[137], [137], [137]]
    assert [a["retried_by"] for a in attempts] == ["retry[1]", "retry[1]", None]
    assert [a["state"] for a in attempts] == ["failed"] * 3 and data["exit_code"] == 137
    assert data["retries_by_rule"] == {"retry[1]": 2} and data["retries_used"] == 0
    assert [job.log_bytes(attempt=n).decode() for n in (1, 2, 3)] == [f"attempt={n}\n" for n in (1, 2, 3)]
    for ended, started in itertools.pairwise(attempts):  # each retry waited the rule's backoff
        gap_s = (
            datetime.fromisoformat(started["started_at"]) - datetime.fromisoformat(ended["ended_at"])
        ).total_seconds()
        assert gap_s >= BACKOFF_S, (ended, started)

    shown = _cli(cli_env, "job", "show", job.id)
    assert shown.returncode == 0, shown.stderr
    assert "RETRIED BY" in shown.stdout and shown.stdout.count("retry[1]") >= 3  # two attempts and the totals line
    as_json = json.loads(_cli(cli_env, "job", "show", job.id, "--json").stdout)
    assert [a["retried_by"] for a in as_json["attempts"]] == ["retry[1]", "retry[1]", None]


def test_an_exit_code_no_rule_names_with_max_retries_0_is_not_retried(client: Client) -> None:
    job = client.submit(
        {"name": "retry-none", "command": "exit 3", "max_retries": 0, "retry": [{"exit_codes": [137], "max": 3}]}
    )
    assert job.wait(timeout=120) == "failed"
    data = job.refresh().data
    assert data["exit_code"] == 3 and data["attempt"] == 1 and len(data["attempts"]) == 1
    assert data["attempts"][0]["retried_by"] is None and data["retries_by_rule"] == {}


def test_a_rule_naming_an_unknown_reason_is_refused_with_its_field_and_nothing_is_stored(
    client: Client, cli_env: dict[str, str], tmp_path: Path
) -> None:
    before = len(client.jobs(name_prefix="retry-bad"))
    with pytest.raises(SpecRejected) as refused:
        client.submit(
            {"name": "retry-bad", "command": "true", "retry": [{"exit_codes": [137], "reasons": ["node_lost", "oom"]}]}
        )
    assert [p["field"] for p in refused.value.problems] == ["retry[0].reasons[1]"]
    assert "'oom' is not a reason" in refused.value.problems[0]["reason"]
    bad = tmp_path / "job.yaml"
    bad.write_text("name: retry-bad\ncommand: 'true'\nretry:\n  - {exit_codes: [137], backoff: soon}\n")
    result = _cli(cli_env, "job", "submit", str(bad))
    assert result.returncode == 2 and "retry[0].backoff" in result.stderr, result.stderr
    assert len(client.jobs(name_prefix="retry-bad")) == before
