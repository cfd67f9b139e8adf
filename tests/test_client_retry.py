"""The SDK's retry policy against a stub transport: which calls are retried, on what, for how long."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from trainyard.client import Client, NotFound, Sweep, TrainyardError
from trainyard.client_retry import RetryPolicy

FAST = RetryPolicy(total_s=5.0, first_backoff_s=0.001, max_backoff_s=0.01)
Handler = Callable[[httpx.Request], httpx.Response]


class Script:
    """Answers requests in order (an exception is raised, a response returned) and records them."""

    def __init__(self, *answers: httpx.Response | Exception | Handler):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return answer(request)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


def client_for(script: Script, policy: RetryPolicy = FAST) -> Client:
    return Client(api_url="http://api.test", token="t", retry=policy, transport=httpx.MockTransport(script))


def job(state: str = "queued", **extra: object) -> httpx.Response:
    return httpx.Response(200, json={"id": "j1", "name": "n", "state": state, **extra})


def test_a_read_is_retried_through_connection_errors_and_502_503_504() -> None:
    script = Script(
        httpx.ConnectError("refused"),
        httpx.ReadError("[Errno 9] Bad file descriptor"),
        httpx.RemoteProtocolError("Server disconnected"),
        httpx.ReadTimeout("slow"),
        httpx.Response(502),
        httpx.Response(503),
        httpx.Response(504),
        job(),
    )
    assert client_for(script).job("j1").state == "queued"
    assert len(script.requests) == 8


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 429, 500])
def test_no_4xx_and_no_500_is_retried(status: int) -> None:
    script = Script(httpx.Response(status, json={"detail": "no"}), job())
    with pytest.raises(TrainyardError) as raised:
        client_for(script).job("j1")
    assert raised.value.status == status and len(script.requests) == 1


def test_a_call_that_is_not_idempotent_is_retried_only_when_its_request_never_left() -> None:
    added = httpx.Response(201, json={"id": "s1", "state": "running"})
    sent = Script(httpx.ReadError("reset"), added)
    with pytest.raises(httpx.ReadError):
        Sweep(client_for(sent), {"id": "s1"}).add_points([{"lr": 1}])
    assert len(sent.requests) == 1
    not_sent = Script(httpx.ConnectError("refused"), added)
    Sweep(client_for(not_sent), {"id": "s1"}).add_points([{"lr": 1}])
    assert len(not_sent.requests) == 2


def test_a_503_is_not_retried_for_a_call_that_is_not_idempotent() -> None:
    script = Script(httpx.Response(503, json={"detail": "busy"}), httpx.Response(201, json={}))
    with pytest.raises(TrainyardError) as raised:
        client_for(script).create_volume({"name": "v", "kind": "host", "path": "/x"})
    assert raised.value.status == 503 and len(script.requests) == 1


def test_retries_stop_within_the_total_budget_with_the_last_answer() -> None:
    script = Script(httpx.Response(503, json={"detail": "the log store is unavailable"}))
    started = time.monotonic()
    with pytest.raises(TrainyardError) as raised:
        client_for(script, RetryPolicy(total_s=0.5, first_backoff_s=0.01, max_backoff_s=0.05)).job("j1")
    assert raised.value.status == 503 and "log store" in str(raised.value)
    assert len(script.requests) > 3 and time.monotonic() - started < 1.5


def test_a_zero_budget_never_retries() -> None:
    script = Script(httpx.ConnectError("refused"), job())
    with pytest.raises(httpx.ConnectError):
        client_for(script, RetryPolicy(total_s=0)).job("j1")
    assert len(script.requests) == 1


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    slept: list[float] = []
    policy = RetryPolicy(total_s=60.0, first_backoff_s=0.1, max_backoff_s=1.0, sleep=slept.append)
    script = Script(*[httpx.ConnectError("refused")] * 12, job())
    client_for(script, policy).job("j1")
    assert len(slept) == 12 and all(0 <= s <= 1.0 for s in slept)
    assert max(slept[:2]) <= 0.2 and len(set(slept)) > 6  # small at first, never twice the same


def test_submit_generates_one_idempotency_key_and_sends_it_on_every_try() -> None:
    script = Script(httpx.ReadError("reset after commit"), httpx.Response(201, json={"id": "j1", "state": "queued"}))
    assert client_for(script).submit({"name": "n", "command": "true"}).id == "j1"
    first, second = script.bodies()
    assert first == second and str(first["idempotency_key"]).startswith("sdk-")
    other = Script(httpx.Response(201, json={"id": "j2", "state": "queued"}))
    client_for(other).submit({"name": "n", "command": "true"})
    assert other.bodies()[0]["idempotency_key"] != first["idempotency_key"]


def test_a_callers_idempotency_key_is_kept() -> None:
    script = Script(httpx.Response(201, json={"id": "j1", "state": "queued"}))
    client_for(script).submit({"name": "n", "command": "true", "idempotency_key": "mine"})
    assert script.bodies()[0]["idempotency_key"] == "mine"


def test_submit_many_keys_every_spec_and_a_retried_batch_carries_the_same_keys() -> None:
    def stored(request: httpx.Request) -> httpx.Response:
        specs = json.loads(request.content)["jobs"]
        return httpx.Response(201, json={"jobs": [{"id": f"j{i}", "name": s["name"]} for i, s in enumerate(specs)]})

    script = Script(httpx.RemoteProtocolError("Server disconnected"), stored, stored)
    specs = [{"name": f"p{i}", "command": "true"} for i in range(5)] + [
        {"name": "k", "command": "true", "idempotency_key": "mine"}
    ]
    jobs = client_for(script).submit_many(specs, batch_size=3)
    assert [j.id for j in jobs] == ["j0", "j1", "j2", "j0", "j1", "j2"]
    batches = [b["jobs"] for b in script.bodies()]
    assert batches[0] == batches[1]  # the retried first batch
    keys = [spec["idempotency_key"] for batch in batches[1:] for spec in batch]
    assert keys[-1] == "mine" and len(set(keys)) == 6
    assert len({str(k).rsplit("-", 1)[0] for k in keys[:-1]}) == 1  # one key per call, then the index


def test_a_sweep_carries_its_key_at_the_top_not_in_its_template() -> None:
    script = Script(httpx.ConnectTimeout("slow"), httpx.Response(201, json={"id": "s1", "state": "running"}))
    client_for(script).sweep({"name": "lr{lr}", "command": "true"}, grid={"lr": [1, 2]})
    first, second = script.bodies()
    assert first == second and "idempotency_key" in first
    assert "idempotency_key" not in first["template"]


def test_cancel_is_retried_after_its_request_may_have_been_sent() -> None:
    script = Script(httpx.ReadError("reset"), job("cancelled"))
    assert client_for(script).cancel("j1").state == "cancelled" and len(script.requests) == 2


def test_a_code_upload_is_sent_whole_on_every_try(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print('hi')\n" * 1000)
    script = Script(httpx.ReadError("reset"), httpx.Response(201, json={"code": "trainyard-code://abc"}))
    assert client_for(script).upload_code(tmp_path) == "trainyard-code://abc"
    first, second = script.requests
    assert len(first.content) > 0 and first.content == second.content


def test_wait_polls_through_an_outage_until_the_job_ends() -> None:
    script = Script(job("running"), *[httpx.ConnectError("refused")] * 5, httpx.Response(503), job("succeeded"))
    client = client_for(script)
    assert client.job("j1").wait(timeout=30, poll_s=0.001) == "succeeded"


def test_wait_raises_timeout_error_when_the_api_stays_away_past_its_timeout() -> None:
    script = Script(job("running"), httpx.ConnectError("refused"))
    client = client_for(script, RetryPolicy(total_s=600, first_backoff_s=0.01, max_backoff_s=0.05))
    handle = client.job("j1")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        handle.wait(timeout=0.5, poll_s=0.01)
    assert time.monotonic() - started < 2.0  # its own timeout, not the Client's 600 s


def test_wait_does_not_poll_through_a_404() -> None:
    script = Script(job("running"), httpx.Response(404, json={"detail": "no job j1"}))
    handle = client_for(script).job("j1")
    with pytest.raises(NotFound):
        handle.wait(timeout=10, poll_s=0.001)


def _cut_after(data: bytes) -> Iterator[bytes]:
    yield data
    raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def test_a_follow_cut_mid_stream_reconnects_at_the_offset_it_reached_in_the_same_attempt() -> None:
    text = b"".join(f"line {i}\n".encode() for i in range(1, 101))
    follows: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/logs"):
            return job("running", attempts=[{"number": 1}, {"number": 2, "ended_at": "2026-12-02T00:00:00.000000Z"}])
        follows.append(request)
        if len(follows) == 2:
            raise httpx.ConnectError("refused")  # the API is still restarting
        piece = {1: text[:300], 3: text[300:500]}.get(len(follows))
        return httpx.Response(200, content=_cut_after(piece) if piece else iter([text[500:]]))

    lines = list(client_for(Script(api)).job("j1").logs(follow=True))
    assert "".join(lines).encode() == text
    assert [int(r.url.params["offset"]) for r in follows] == [0, 300, 300, 500]
    assert {r.url.params["attempt"] for r in follows} == {"2"}  # pinned to the newest when it began


def test_a_follow_that_ends_cleanly_is_not_reopened() -> None:
    calls: list[httpx.Request] = []

    def logs(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if not request.url.path.endswith("/logs"):
            return job("cancelled", attempts=[])
        return httpx.Response(200, content=iter([b"a\n", b"b\n"]))

    lines = list(client_for(Script(logs)).job("j1").logs(follow=True))
    assert lines == ["a\n", "b\n"] and len(calls) == 4  # job(), the attempts, one follow, the end checked
    assert "attempt" not in calls[-2].url.params  # no attempt yet: the route picks the first one


def test_a_follow_begun_before_any_attempt_ends_with_that_attempt_and_is_not_reopened() -> None:
    """The route picked the first attempt once it began; its end is what the client checks."""
    calls: list[httpx.Request] = []
    ended = [{"number": 1, "ended_at": "2026-12-02T00:00:00.000000Z"}]

    def api(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if not request.url.path.endswith("/logs"):
            logs_seen = any(r.url.path.endswith("/logs") for r in calls)
            return job("succeeded" if logs_seen else "queued", attempts=ended if logs_seen else [])
        return httpx.Response(200, content=iter([b"a\n", b"b\n"]))

    lines = list(client_for(Script(api)).job("j1").logs(follow=True))
    assert lines == ["a\n", "b\n"]
    assert sum(r.url.path.endswith("/logs") for r in calls) == 1  # one follow: it ended with attempt 1


def test_a_follow_begun_before_any_attempt_ends_with_a_first_attempt_that_wrote_nothing() -> None:
    calls: list[httpx.Request] = []
    ended = {"number": 1, "started_at": None, "ended_at": "2026-12-02T00:00:00.000000Z"}

    def api(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if request.url.path.endswith("/logs"):
            return httpx.Response(200, content=iter([]))  # the attempt failed to start: no stdout
        # Queued when the follow begins; then its one attempt has ended, a retry of it queued.
        return job("queued", attempts=[]) if len(calls) <= 2 else job("queued", attempts=[ended])

    assert list(client_for(Script(api)).job("j1").logs(follow=True)) == []
    assert len(calls) == 4  # job(), the attempts, one follow, the end checked: not reopened
