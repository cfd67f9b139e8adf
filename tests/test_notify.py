"""Webhook bodies, signatures and backoff: pure functions, no database."""

from __future__ import annotations

import json

import pytest

from trainyard import notify
from trainyard.retrying import Backoff
from trainyard.spec import SpecError, parse_job_spec
from trainyard.sweeps import parse_sweep_spec as parse_sweep

KEY = b"0123456789abcdef0123456789abcdef"

JOB = {
    "id": "j0123456789ab", "name": "train", "state": "failed", "reason": "exit", "exit_code": 3,
    "workspace": "team-a", "experiment": "e1", "pool": "default", "sweep_id": None, "attempt": 2,
    "rerun_of": None, "submitted_at": "2030-01-01T00:00:00Z", "ended_at": "2030-01-01T00:01:00Z",
    "spec": {"env": {"DB_PASSWORD": "hunter2-env"}, "secrets": {"API_TOKEN": "***"}},
    "attempts": [
        {"number": 1, "state": "failed", "reason": "exit", "exit_codes": [3], "started_at": "2030-01-01T00:00:01Z",
         "ended_at": "2030-01-01T00:00:30Z", "nodes": ["n1"], "gpus": [[0]]},
        {"number": 2, "state": "failed", "reason": "exit", "exit_codes": [3, 0], "started_at": "2030-01-01T00:00:40Z",
         "ended_at": "2030-01-01T00:01:00Z", "nodes": ["n1", "n2"], "gpus": [[0], [1]]},
    ],
}  # fmt: skip


def test_a_job_body_carries_its_outcome_and_nothing_of_its_spec() -> None:
    body = notify.job_payload(JOB, "job.failed", "d1")
    assert body["event"] == "job.failed" and body["delivery"] == "d1" and body["kind"] == "job"
    job = body["job"]
    assert job["id"] == JOB["id"] and job["state"] == "failed" and job["exit_codes"] == [3, 0]
    assert job["attempt_count"] == 2 and job["started_at"] == "2030-01-01T00:00:01Z"
    assert job["workspace"] == "team-a" and job["experiment"] == "e1" and job["sweep_id"] is None
    raw = notify.encode(body).decode()
    assert "hunter2-env" not in raw and "DB_PASSWORD" not in raw and "API_TOKEN" not in raw and "spec" not in raw


def test_a_signature_verifies_and_any_change_breaks_it() -> None:
    body = notify.encode(notify.job_payload(JOB, "job.failed", "d1"))
    headers = notify.headers(KEY, 1_900_000_000, body, "job.failed", "d1")
    assert headers[notify.SIGNATURE_HEADER].startswith("sha256=")
    assert headers[notify.DELIVERY_HEADER] == "d1" and headers[notify.EVENT_HEADER] == "job.failed"
    assert notify.verify(KEY, body, headers, now_s=1_900_000_010)
    assert not notify.verify(b"another key", body, headers, now_s=1_900_000_010)
    assert not notify.verify(KEY, body.replace(b"failed", b"succeeded"), headers, now_s=1_900_000_010)
    restamped = {**headers, notify.TIMESTAMP_HEADER: "1900000005"}  # the timestamp is signed too
    assert not notify.verify(KEY, body, restamped, now_s=1_900_000_010)


def test_an_old_signature_is_refused_as_a_replay() -> None:
    body = b"{}"
    headers = notify.headers(KEY, 1_900_000_000, body, "job.succeeded", "d2")
    assert not notify.verify(KEY, body, headers, now_s=1_900_000_000 + notify.REPLAY_TOLERANCE_S + 1)


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(KEY, b"1700000000." + b'{"a":1}', hashlib.sha256).hexdigest()
    assert notify.signature(KEY, 1_700_000_000, b'{"a":1}') == f"sha256={expected}"


def test_workspace_keys_differ_by_workspace_and_secret_key() -> None:
    assert notify.workspace_key("a", "k1") != notify.workspace_key("b", "k1")
    assert notify.workspace_key("a", "k1") != notify.workspace_key("a", "k2")
    assert notify.workspace_key("a", "k1") == notify.workspace_key("a", "k1")


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(first_s=2.0, max_s=20.0)
    assert [notify.retry_delay_s(n, backoff) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0]


def test_only_server_errors_timeouts_and_rate_limits_are_retried() -> None:
    assert all(notify.retryable_status(c) for c in (500, 502, 503, 408, 429))
    assert not any(notify.retryable_status(c) for c in (400, 401, 404, 410))


def test_notify_targets_default_to_any_end_and_name_the_bad_field() -> None:
    spec = parse_job_spec({"name": "n", "command": "true", "notify": [{"url": "https://example.test/h"}]})
    assert spec.notify[0].events == ["ended"] and spec.notify[0].fires_on("cancelled")
    with pytest.raises(SpecError) as refused:
        parse_job_spec({"name": "n", "command": "true", "notify": [
            {"url": "ftp://example.test/h", "events": ["succeeded"]},
            {"url": "http://127.0.0.1:9/h", "events": ["exploded"]},
        ]})  # fmt: skip
    fields = {p["field"] for p in refused.value.problems}
    assert {"notify[0].url", "notify[1].events[0]"} <= fields, refused.value.problems


def test_a_sweeps_own_notify_is_apart_from_its_templates() -> None:
    sweep = parse_sweep({"template": {"name": "p-{x}", "command": "true"}, "grid": {"x": [1, 2]},
                         "notify": [{"url": "http://127.0.0.1:9/h", "events": ["failed"]}]})  # fmt: skip
    assert sweep.notify[0].events == ["failed"] and sweep.template.notify == []
    assert json.dumps(sweep.model_dump(mode="json")["notify"])
