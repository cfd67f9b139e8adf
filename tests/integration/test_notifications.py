"""Webhooks on a real cluster (SQLite and PostgreSQL): a receiver on 127.0.0.1 gets signed bodies of
ended jobs and sweeps, without their secrets; retries reach a flaky receiver; a dead one delays nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.webhook_receiver import WebhookReceiver
from trainyard import notify
from trainyard.client import Client, SpecRejected

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    started = WebhookReceiver().start()
    yield started
    started.stop()


def _key(client: Client) -> bytes:
    return str(client.workspace_notify("default")["signing_key"]).encode()


def _delivered(client: Client, job_id: str, timeout_s: float = 60) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        shown = client.job(job_id).data["notifications"]
        if shown and all(n["status"] != "pending" for n in shown):
            return list(shown)
        time.sleep(0.3)
    raise AssertionError(f"notifications of {job_id} still pending: {client.job(job_id).data['notifications']}")


def test_a_succeeded_and_a_failed_job_send_signed_bodies_without_secrets(
    client: Client, receiver: WebhookReceiver
) -> None:
    hook = [{"url": receiver.url, "events": ["succeeded", "failed"]}]
    secrets = {"API_TOKEN": "s3cr3t-hook-value"}
    ok = client.submit({"name": "hook-ok", "command": "echo $API_TOKEN", "secrets": secrets, "notify": hook})
    bad = client.submit({"name": "hook-bad", "command": "exit 7", "max_retries": 0, "secrets": secrets,
                         "notify": hook})  # fmt: skip
    assert ok.wait(timeout=120) == "succeeded" and bad.wait(timeout=120) == "failed"
    got = receiver.wait_for(2, timeout_s=60)
    assert len(got) == 2
    key = _key(client)
    by_job = {}
    for request in got:
        assert notify.verify(key, request.body, request.headers, now_s=time.time()), request.headers
        assert b"s3cr3t-hook-value" not in request.body and b"API_TOKEN" not in request.body
        body = json.loads(request.body)
        assert request.headers[notify.DELIVERY_HEADER] == body["delivery"]
        assert request.headers[notify.EVENT_HEADER] == body["event"]
        by_job[body["job"]["id"]] = body
    assert by_job[ok.id]["event"] == "job.succeeded" and by_job[ok.id]["job"]["exit_codes"] == [0]
    assert by_job[bad.id]["event"] == "job.failed" and by_job[bad.id]["job"]["exit_code"] == 7
    assert by_job[bad.id]["job"]["attempt_count"] == 1 and by_job[bad.id]["job"]["workspace"] == "default"
    (shown,) = _delivered(client, ok.id)
    assert shown["status"] == "delivered" and shown["attempts"] == 1 and shown["event"] == "job.succeeded"


def test_a_receiver_that_fails_twice_gets_the_notification_on_the_third_try(
    client: Client, receiver: WebhookReceiver
) -> None:
    receiver.answers = [500, 500, 200]
    job = client.submit({"name": "hook-flaky", "command": "true", "notify": [{"url": receiver.url}]})
    assert job.wait(timeout=120) == "succeeded"
    (shown,) = _delivered(client, job.id, timeout_s=90)
    assert shown["status"] == "delivered" and shown["attempts"] == 3
    got = receiver.received
    assert len(got) == 3 and len({r.headers[notify.DELIVERY_HEADER] for r in got}) == 1


def test_a_receiver_that_is_down_does_not_delay_the_next_job(client: Client) -> None:
    down = WebhookReceiver().start()
    url = down.url
    down.stop()
    first = client.submit({"name": "hook-down", "command": "true", "notify": [{"url": url}]})
    assert first.wait(timeout=120) == "succeeded"
    started = time.monotonic()
    after = client.submit({"name": "hook-next", "command": "true"})
    assert after.wait(timeout=60) == "succeeded"
    assert time.monotonic() - started < 20
    (shown,) = first.refresh().data["notifications"]
    assert shown["status"] in ("pending", "failed") and shown["last_error"]


def test_a_sweep_sends_one_notification_when_it_ends(client: Client, receiver: WebhookReceiver) -> None:
    sweep = client.sweep({"name": "hook-pt-{x}", "command": "true"}, grid={"x": [1, 2, 3]},
                         notify=[{"url": receiver.url, "events": ["ended"]}])  # fmt: skip
    assert sweep.wait(timeout=120) == "finished"
    (got,) = receiver.wait_for(1, timeout_s=60)
    body = json.loads(got.body)
    assert body["event"] == "sweep.succeeded" and body["sweep"]["id"] == sweep.id
    assert notify.verify(_key(client), got.body, got.headers, now_s=time.time())
    time.sleep(1.5)
    assert len(receiver.received) == 1  # not one per point


def test_a_bad_target_is_refused_with_its_field_and_nothing_is_stored(client: Client) -> None:
    before = len(client.jobs(name_prefix="hook-refused"))
    with pytest.raises(SpecRejected) as refused:
        client.submit({"name": "hook-refused", "command": "true", "notify": [{"url": "file:///etc/passwd"}]})
    assert "notify[0].url" in str(refused.value)
    assert len(client.jobs(name_prefix="hook-refused")) == before


def test_workspace_targets_are_set_by_an_admin_and_validated(client: Client, receiver: WebhookReceiver) -> None:
    with pytest.raises(SpecRejected) as refused:
        client.set_workspace_notify("hooks-ws", [{"url": "gopher://x", "events": ["ended"]}])
    assert "notify[0].url" in str(refused.value)
    assert client.workspace_notify("hooks-ws")["notify"] == []
    shown = client.set_workspace_notify("hooks-ws", [{"url": receiver.url, "events": ["failed"]}])
    assert shown["notify"] == [{"url": receiver.url, "events": ["failed"]}]
    job = client.submit({"name": "hook-ws", "workspace": "hooks-ws", "command": "exit 1", "max_retries": 0})
    assert job.wait(timeout=120) == "failed"
    (got,) = receiver.wait_for(1, timeout_s=60)
    assert json.loads(got.body)["job"]["id"] == job.id
    assert notify.verify(str(shown["signing_key"]).encode(), got.body, got.headers, now_s=time.time())


def test_the_cli_sets_and_shows_workspace_targets_and_job_show_lists_deliveries(
    client: Client, cli_env: dict[str, str], receiver: WebhookReceiver
) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "trainyard", *args], env=cli_env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    refused = cli("workspace", "notify", "hooks-cli", "--url", "ftp://x", "--events", "ended")
    assert refused.returncode == 2 and "notify[0].url" in refused.stderr
    done = cli("workspace", "notify", "hooks-cli", "--url", receiver.url, "--events", "succeeded", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["notify"] == [{"url": receiver.url, "events": ["succeeded"]}]
    job = client.submit({"name": "hook-cli", "workspace": "hooks-cli", "command": "true"})
    assert job.wait(timeout=120) == "succeeded"
    _delivered(client, job.id)
    shown = cli("job", "show", job.id)
    assert shown.returncode == 0 and f"notify job.succeeded → {receiver.url}: delivered after 1 tries" in shown.stdout
