"""The Python SDK (SPEC §7): a thin, typed client of the REST API that rides out API restarts.

Calls that are safe to send twice (reads, keyed submits, cancels) are retried on connection
errors and 502/503/504 (client_retry.py); every submit carries an idempotency key, so a retried
submit never makes a second job.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

from trainyard.client_retry import RetryPolicy as RetryPolicy  # re-exported: Client(retry=RetryPolicy(...))
from trainyard.client_retry import retryable_error, transient
from trainyard.codepack import pack_to_file
from trainyard.config import client_token, load_settings
from trainyard.datarefs import is_local_code, safe_relpath
from trainyard.spec import TERMINAL_STATES, JobSpec, JobState, load_spec_file

log = logging.getLogger(__name__)

BATCH_SIZE = 10_000  # the most POST /v1/jobs:batch takes: one call, one transaction
WAIT_POLL_S = 0.5
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# As many idle connections kept as open ones: httpcore 1.0.9 may close a surplus idle connection
# it has just handed to a queued request (encode/httpcore#1110), which fails that request with
# EBADF or hangs it until its read timeout when more threads than connections share a Client.
MAX_CONNECTIONS = 100
# Below uvicorn's 5 s keep-alive, so the server rarely closes a connection as we reuse it.
KEEPALIVE_EXPIRY_S = 3.0


class TrainyardError(Exception):
    """The API refused or failed a request."""

    def __init__(self, status: int, detail: Any):
        self.status, self.detail = status, detail
        super().__init__(f"HTTP {status}: {detail}")


class SpecRejected(TrainyardError):
    """A spec was refused (HTTP 422); `problems` lists each field and reason."""

    @property
    def problems(self) -> list[dict[str, str]]:
        detail = self.detail
        if isinstance(detail, dict):
            return list(detail.get("problems", []))
        if isinstance(detail, list):  # FastAPI's own request validation
            return [{"field": ".".join(str(x) for x in d.get("loc", [])), "reason": d.get("msg", "")} for d in detail]
        return [{"field": "(request)", "reason": str(detail)}]


class NotFound(TrainyardError):
    pass


class Conflict(TrainyardError):
    pass


def _as_dict(spec: dict[str, Any] | JobSpec | str | Path) -> dict[str, Any]:
    if isinstance(spec, JobSpec):
        data = spec.model_dump(mode="json", exclude_defaults=True)
        data["secrets"] = dict(spec.secrets)
        return data
    if isinstance(spec, (str, Path)):
        return load_spec_file(spec)
    return dict(spec)


def new_idempotency_key() -> str:
    return f"sdk-{uuid.uuid4().hex}"


def _keyed(data: dict[str, Any], key: str) -> dict[str, Any]:
    """The body with an idempotency key (the caller's, else `key`): a retried submit finds what it made."""
    return data if data.get("idempotency_key") else {**data, "idempotency_key": key}


def _wait_until(
    fetch: Callable[[float | None], dict[str, Any]],
    done: Callable[[dict[str, Any]], bool],
    timeout: float | None,
    poll_s: float,
    what: str,
) -> dict[str, Any]:
    """Poll `fetch(retry_budget_s)` until `done`; an API outage is polled through until `timeout`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining_s = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            data = fetch(remaining_s)  # with no timeout, the Client's retry budget bounds one outage
        except (httpx.TransportError, TrainyardError) as exc:
            if deadline is None or not transient(exc):
                raise
            raise TimeoutError(f"{what}: no answer from the API within {timeout} s ({exc})") from exc
        if done(data):
            return data
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{what} still {data['state']} after {timeout} s")
        time.sleep(poll_s)


def _spec_dir(spec: dict[str, Any] | JobSpec | str | Path) -> Path:
    """Where a relative `code:` directory is found: beside a spec file, else the current directory."""
    return Path(spec).resolve().parent if isinstance(spec, (str, Path)) else Path.cwd()


class _ApiObject:
    """An object as the API last described it: its fields read as attributes (`job.state`)."""

    def __init__(self, client: Client, data: dict[str, Any]):
        self._client = client
        self.data = data

    @property
    def id(self) -> str:
        return str(self.data["id"])

    def __getattr__(self, name: str) -> Any:
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(name) from None


class Job(_ApiObject):
    """A job as the API last described it; `refresh()` asks again."""

    def __repr__(self) -> str:
        return f"Job({self.id!r}, state={self.data.get('state')!r})"

    def refresh(self) -> Job:
        self.data = self._client.job(self.id).data
        return self

    def wait(self, timeout: float | None = None, poll_s: float = WAIT_POLL_S) -> str:
        """Block until the job ends; returns its final state (TimeoutError after `timeout` seconds).

        Connection errors and 502/503/504 (an API restart) are polled through until `timeout`.
        """

        def fetch(retry_total_s: float | None) -> dict[str, Any]:
            self.data = self._client._request("GET", f"/v1/jobs/{self.id}", retry_total_s=retry_total_s)
            return self.data

        done = _wait_until(fetch, lambda d: JobState(d["state"]) in TERMINAL_STATES, timeout, poll_s, f"job {self.id}")
        return str(done["state"])

    def metrics(
        self, name: str | None = None, attempt: int | None = None, since_step: int | None = None
    ) -> list[dict[str, Any]]:
        """The series `trainyard.report` sent, while the job runs and after: `[{step, time, attempt, values}]`.

        (The job's latest value of each metric stays in `job.data["metrics"]`.)
        """
        return self._client.job_metrics(self.id, name=name, attempt=attempt, since_step=since_step)

    def log_bytes(self, rank: int = 0, stream: str = "stdout", attempt: int | None = None) -> bytes:
        """Everything the stream holds so far, byte-exact."""
        return b"".join(self.log_chunks(rank=rank, stream=stream, attempt=attempt, follow=False))

    def log_chunks(
        self, rank: int = 0, stream: str = "stdout", attempt: int | None = None, follow: bool = False
    ) -> Iterator[bytes]:
        return self._client.log_chunks(self.id, rank=rank, stream=stream, attempt=attempt, follow=follow)

    def logs(
        self, rank: int = 0, stream: str = "stdout", follow: bool = False, attempt: int | None = None
    ) -> Iterator[str]:
        """Lines of output (newline kept). Undecodable bytes survive as surrogates:
        `line.encode('utf-8', 'surrogateescape')` gives back the exact bytes."""
        pending = b""
        for chunk in self.log_chunks(rank=rank, stream=stream, attempt=attempt, follow=follow):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield (line + b"\n").decode("utf-8", "surrogateescape")
        if pending:
            yield pending.decode("utf-8", "surrogateescape")

    def outputs(self, attempt: int | None = None) -> list[dict[str, Any]]:
        """Output files the job's nodes uploaded: key, attempt, rank, output, path, size, sha256."""
        return self._client.outputs(self.id, attempt=attempt)

    def manifests(self, attempt: int | None = None) -> list[dict[str, Any]]:
        """The provenance manifest of each part of each attempt (spec, code, inputs, outputs, nodes, times)."""
        return self._client.manifests(self.id, attempt=attempt)

    def download(self, dest: str | Path = ".", output: str | None = None, attempt: int | None = None) -> list[Path]:
        """Download the output files of the latest attempt that has some (or `attempt`) into dest/<output>/<path>."""
        return self._client.download(self.id, dest, output=output, attempt=attempt)


class Sweep(_ApiObject):
    """A sweep as the API last described it: state counts, progress, and its leaderboard when asked."""

    def __repr__(self) -> str:
        return f"Sweep({self.id!r}, state={self.data.get('state')!r}, total={self.data.get('total')!r})"

    def refresh(self) -> Sweep:
        self.data = self._client.get_sweep(self.id).data
        return self

    def show(self, metric: str | None = None, order: str = "min", top: int = 20) -> dict[str, Any]:
        """The sweep object now (with `leaderboard` when a metric is named)."""
        self.data = self._client.get_sweep(self.id, metric=metric, order=order, top=top).data
        return self.data

    def leaderboard(self, metric: str, order: str = "min", top: int = 20) -> list[dict[str, Any]]:
        """Points that reported `metric`, best first: rank, job_id, name, state, params, value, metrics."""
        return list(self.show(metric=metric, order=order, top=top)["leaderboard"])

    def jobs(self, state: str | None = None, limit: int | None = None) -> list[Job]:
        return self._client.jobs(state=state, limit=limit, sweep=self.id)

    def add_points(self, points: list[dict[str, Any]]) -> Sweep:
        """Not retried once sent: the route takes no idempotency key, and a repeat would add the points twice."""
        self.data = self._client._request("POST", f"/v1/sweeps/{self.id}/points", json={"points": points})
        return self

    def cancel(self) -> Sweep:
        self.data = self._client.cancel_sweep(self.id).data
        return self

    def rerun(self, failed: bool = False) -> Sweep:
        """Rerun the ended points (only failed and cancelled ones with `failed`) inside this sweep;
        `data["reruns"]` lists each new job with the job it reruns."""
        self.data = self._client.rerun_sweep(self.id, failed=failed).data
        return self

    def wait(self, timeout: float | None = None, poll_s: float = WAIT_POLL_S) -> str:
        """Block until no job of the sweep can run any more; returns `finished` or `cancelled`.

        Connection errors and 502/503/504 (an API restart) are polled through until `timeout`.
        """

        def fetch(retry_total_s: float | None) -> dict[str, Any]:
            self.data = self._client._request("GET", f"/v1/sweeps/{self.id}", retry_total_s=retry_total_s)
            return self.data

        done = _wait_until(
            fetch, lambda d: d["state"] in ("finished", "cancelled"), timeout, poll_s, f"sweep {self.id}"
        )
        return str(done["state"])


class Client:
    """One Client may be shared by many threads (its connection pool is; nothing else is mutable).

    `timeout_s` bounds each HTTP request; `retry` how long a call is retried (RetryPolicy:
    60 s in all by default; `RetryPolicy(total_s=0)` never retries). `transport` replaces
    httpx's (a proxy, a test stub).
    """

    def __init__(
        self,
        api_url: str | None = None,
        token: str | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        self.api_url = (api_url or load_settings().api_url).rstrip("/")
        self.token = token or client_token()
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        limits = httpx.Limits(
            max_connections=MAX_CONNECTIONS,
            max_keepalive_connections=MAX_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        )
        self._http = httpx.Client(
            base_url=self.api_url, headers=headers, timeout=timeout_s, limits=limits, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        idempotent: bool | None = None,
        retry_total_s: float | None = None,
        **kwargs: Any,
    ) -> Any:
        return self._send(method, path, idempotent=idempotent, retry_total_s=retry_total_s, **kwargs).json()

    def _send(
        self,
        method: str,
        path: str,
        idempotent: bool | None = None,
        retry_total_s: float | None = None,
        stream: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """One call, retried by the policy; raises TrainyardError for a 4xx/5xx answer.

        `idempotent` (default: GET/HEAD/OPTIONS) says the call may be sent twice; otherwise only
        a connection that never opened is retried. `retry_total_s` overrides the policy's budget.
        With `stream`, the caller reads the body and closes the response.
        """
        safe = method in SAFE_METHODS if idempotent is None else idempotent

        def send() -> httpx.Response:
            body: Any = kwargs.get("content")
            if hasattr(body, "seek"):  # a file body is sent from its start on every try
                body.seek(0)
            response = self._http.send(self._http.build_request(method, path, **kwargs), stream=stream)
            if stream and response.status_code >= 400:
                response.read()
                response.close()
            return response

        response = self.retry.call(send, safe, f"{method} {path}", total_s=retry_total_s)
        if response.status_code >= 400:
            _raise_for(response)
        return response

    # -- jobs ----------------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any] | JobSpec | str | Path) -> Job:
        """Submit one job. Without an `idempotency_key` in the spec one is generated, so the retry
        of a submit whose answer was lost returns the job the first try made."""
        data = _keyed(self._with_code(_as_dict(spec), _spec_dir(spec), {}), new_idempotency_key())
        return Job(self, self._request("POST", "/v1/jobs", idempotent=True, json=data))

    def submit_many(self, specs: Iterable[dict[str, Any] | JobSpec], batch_size: int = BATCH_SIZE) -> list[Job]:
        """Submit many specs, batch_size per call; each batch is stored whole or refused whole.

        Specs without an `idempotency_key` get `<one key per call>-<index>`: a retried batch
        returns the jobs its first try stored. A DAG (specs whose `depends_on` names other jobs of
        the call by `name`) is checked and stored as a whole, so it must fit in one batch.
        """
        specs = list(specs)
        if len(specs) > batch_size and any(_as_dict(spec).get("depends_on") for spec in specs):
            raise ValueError(
                f"{len(specs):,} specs with depends_on do not fit one batch of {batch_size:,}: "
                "a DAG is submitted in one call (split it where no job of one part names a job of another)"
            )
        jobs: list[Job] = []
        batch: list[dict[str, Any]] = []
        uploaded: dict[Path, str] = {}  # one upload per code directory for the whole call
        call_key = new_idempotency_key()
        for index, spec in enumerate(specs):
            data = self._with_code(_as_dict(spec), _spec_dir(spec), uploaded)
            if set(data) == {"sweep"}:
                raise ValueError(f"specs[{index}] is a sweep entry: submit a pipeline with submit_pipeline")
            batch.append(_keyed(data, f"{call_key}-{index}"))
            if len(batch) >= batch_size:
                jobs.extend(self._submit_batch(batch))
                batch = []
        if batch:
            jobs.extend(self._submit_batch(batch))
        return jobs

    def _submit_batch(self, batch: list[dict[str, Any]]) -> list[Job]:
        reply = self._request("POST", "/v1/jobs:batch", idempotent=True, json={"jobs": batch})
        return [Job(self, item) for item in reply["jobs"]]

    def submit_pipeline(self, entries: Iterable[dict[str, Any] | JobSpec]) -> list[Job | Sweep]:
        """Submit jobs and sweeps (`{"sweep": {...}}` entries) that depend on each other by name, in one call.

        Stored whole or refused whole; each job comes back as a Job, each sweep as a Sweep. Every
        entry gets an idempotency key (a sweep's inside its body), so a retried call stores nothing twice.
        """
        call_key = new_idempotency_key()
        batch: list[dict[str, Any]] = []
        for index, entry in enumerate(entries):
            data = _as_dict(entry)
            if set(data) == {"sweep"}:
                batch.append({"sweep": _keyed(dict(data["sweep"]), f"{call_key}-{index}")})
            else:
                batch.append(_keyed(self._with_code(data, _spec_dir(entry), {}), f"{call_key}-{index}"))
        reply = self._request("POST", "/v1/jobs:batch", idempotent=True, json={"jobs": batch})
        items = reply["jobs"]
        return [
            Sweep(self, self.get_sweep(i["id"]).data) if i.get("kind") == "sweep" else self.job(i["id"]) for i in items
        ]

    def _with_code(self, data: dict[str, Any], base: Path, uploaded: dict[Path, str]) -> dict[str, Any]:
        """A spec whose `code:` names a local directory gets it packed, uploaded and replaced by its URI."""
        code = data.get("code")
        if not isinstance(code, str) or not is_local_code(code):
            return data
        directory = (base / code).resolve()
        if directory not in uploaded:
            uploaded[directory] = self.upload_code(directory)
        return {**data, "code": uploaded[directory]}

    def upload_code(self, directory: str | Path) -> str:
        """Pack a directory (deterministic tar.gz) and upload it; returns the `code` URI to put in a spec."""
        with tempfile.TemporaryDirectory(prefix="trainyard-code-") as scratch:
            archive = Path(scratch) / "code.tar.gz"
            try:
                pack_to_file(Path(directory), archive)
            except (OSError, ValueError) as exc:
                raise SpecRejected(422, {"problems": [{"field": "code", "reason": str(exc)}]}) from None
            with archive.open("rb") as body:  # content-addressed: the same bytes twice store one archive
                reply = self._request(
                    "POST", "/v1/code", idempotent=True, content=body, headers={"Content-Type": "application/gzip"}
                )
        return str(reply["code"])

    # -- outputs -------------------------------------------------------------------------------

    def outputs(self, job_id: str, attempt: int | None = None) -> list[dict[str, Any]]:
        params = {} if attempt is None else {"attempt": attempt}
        return list(self._request("GET", f"/v1/jobs/{job_id}/outputs", params=params)["outputs"])

    def manifests(self, job_id: str, attempt: int | None = None) -> list[dict[str, Any]]:
        params = {} if attempt is None else {"attempt": attempt}
        return list(self._request("GET", f"/v1/jobs/{job_id}/manifests", params=params)["manifests"])

    def download(
        self, job_id: str, dest: str | Path = ".", output: str | None = None, attempt: int | None = None
    ) -> list[Path]:
        """Output files into dest/<output>/<path>, each checked against its sha256; returns the paths."""
        files = [f for f in self.outputs(job_id, attempt=attempt) if output is None or f["output"] == output]
        if attempt is None and files:
            latest = max(f["attempt"] for f in files)
            files = [f for f in files if f["attempt"] == latest]
        # Ranks of a gang upload to the same URI: one download per path, any rank's checksum.
        by_path: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for item in files:
            by_path.setdefault((item["output"], item["path"]), []).append(item)
        return [self._download_one(job_id, Path(dest), entries) for entries in by_path.values()]

    def _download_one(self, job_id: str, dest: Path, entries: list[dict[str, Any]]) -> Path:
        first = entries[0]
        if not safe_relpath(first["path"]) or not safe_relpath(first["output"]):
            raise TrainyardError(0, f"refusing to write output path {first['path']!r} outside {dest}")
        target = Path(dest, str(first["output"]), str(first["path"]))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        path = f"/v1/jobs/{job_id}/outputs/{first['key']}"
        while True:
            digest = hashlib.sha256()
            response = self._send("GET", path, stream=True, timeout=self._stream_timeout())
            try:
                with partial.open("wb") as sink:
                    for chunk in response.iter_bytes():
                        sink.write(chunk)
                        digest.update(chunk)
                break
            except httpx.TransportError as exc:  # cut off mid-file: fetch it again from the start
                self._before_reopening(exc, f"downloading {path}: {exc}; starting the file again")
            finally:
                response.close()
        if digest.hexdigest() not in {e["sha256"] for e in entries}:
            partial.unlink(missing_ok=True)
            raise TrainyardError(0, f"{first['output']}/{first['path']}: checksum mismatch (changed in its store?)")
        partial.replace(target)
        return target

    def job(self, job_id: str) -> Job:
        return Job(self, self._request("GET", f"/v1/jobs/{job_id}"))

    def jobs(
        self, state: str | None = None, experiment: str | None = None, limit: int | None = None, **filters: str
    ) -> list[Job]:
        """Jobs matching the filters, newest first (follows the cursor across pages)."""
        params: dict[str, Any] = {
            k: v for k, v in {"state": state, "experiment": experiment, **filters}.items() if v is not None
        }
        found: list[Job] = []
        while True:
            page_size = min(1000, limit - len(found)) if limit else 1000
            reply = self._request("GET", "/v1/jobs", params={**params, "limit": page_size})
            found.extend(Job(self, item) for item in reply["jobs"])
            if reply["next_cursor"] is None or (limit and len(found) >= limit):
                return found
            params["cursor"] = reply["next_cursor"]

    def job_metrics(
        self, job_id: str, name: str | None = None, attempt: int | None = None, since_step: int | None = None
    ) -> list[dict[str, Any]]:
        """A job's reported metrics over steps (GET /v1/jobs/{id}/metrics, following its pages)."""
        params: dict[str, Any] = {"limit": 10_000}
        for key, value in (("name", name), ("attempt", attempt), ("since_step", since_step)):
            if value is not None:
                params[key] = value
        points: list[dict[str, Any]] = []
        while True:
            page = self._request("GET", f"/v1/jobs/{job_id}/metrics", params=params)
            points.extend(page["points"])
            if not page.get("next_cursor"):
                return points
            params["cursor"] = page["next_cursor"]

    def cancel(self, job_id: str) -> Job:
        """Retried like a read: cancelling twice is cancelling once."""
        return Job(self, self._request("POST", f"/v1/jobs/{job_id}:cancel", idempotent=True))

    def rerun(self, job_id: str) -> Job:
        """A new job with the same spec, linked to this one (`rerun_of`). Not retried after it may
        have been sent: a retry could make a second rerun."""
        return Job(self, self._request("POST", f"/v1/jobs/{job_id}:rerun"))

    def log_chunks(
        self,
        job_id: str,
        rank: int = 0,
        stream: str = "stdout",
        attempt: int | None = None,
        follow: bool = False,
        offset: int = 0,
    ) -> Iterator[bytes]:
        """Bytes of one stream from `offset` (the newest attempt unless `attempt` is given).

        With `follow`, until the attempt has ended and every byte is in; when the API goes away
        meanwhile, the follow reconnects at the offset it reached: no byte is lost or repeated.
        """
        params: dict[str, Any] = {"rank": rank, "stream": stream, "offset": offset}
        if attempt is not None:
            params["attempt"] = attempt
        if follow:
            yield from self._follow(job_id, params)
            return
        while True:
            response = self._send("GET", f"/v1/jobs/{job_id}/logs", params=params)
            if not response.content:
                return
            yield response.content
            params["offset"] = int(response.headers["X-Next-Offset"])
            if "X-Attempt" in response.headers:  # every page from the same attempt, even if one starts meanwhile
                params.setdefault("attempt", int(response.headers["X-Attempt"]))

    def _follow(self, job_id: str, params: dict[str, Any]) -> Iterator[bytes]:
        path = f"/v1/jobs/{job_id}/logs"
        start = params["offset"]
        if "attempt" not in params:
            # The route follows the newest attempt it finds: pin it, so that a reconnection reads
            # on in the attempt whose bytes came (a requeue meanwhile makes a newer one).
            numbers = self._attempt_numbers(job_id)
            if numbers:
                params["attempt"] = max(numbers)
        while True:
            if "attempt" not in params and params["offset"] > start:
                self._pin_first_attempt(params, self._request("GET", f"/v1/jobs/{job_id}"))
            # Opening is retried like any read (the Client's budget from each cut).
            response = self._send(
                "GET", path, params={**params, "follow": "true"}, stream=True, timeout=self._stream_timeout()
            )
            try:
                for chunk in response.iter_bytes():
                    params["offset"] += len(chunk)
                    yield chunk
            except httpx.TransportError as exc:  # the API went away (a killed API cuts the chunked body)
                self._before_reopening(exc, f"following {path}: {exc}; reconnecting at byte {params['offset']}")
                continue
            finally:
                response.close()
            # The route ends a follow once the attempt is over and its logs are in; an API that shuts
            # down cleanly ends it too: then the attempt still runs, and the follow goes on.
            if self._follow_done(job_id, params):
                return
            log.warning(
                "following %s: the stream ended before the attempt did; reconnecting at byte %d", path, params["offset"]
            )
            self.retry.sleep(self.retry.first_backoff_s)

    @staticmethod
    def _pin_first_attempt(params: dict[str, Any], job: dict[str, Any]) -> None:
        """There was no attempt when the follow began: the bytes that came are the first attempt's."""
        numbers = [int(a["number"]) for a in job.get("attempts") or []]
        if numbers:
            params["attempt"] = min(numbers)

    def _follow_done(self, job_id: str, params: dict[str, Any]) -> bool:
        job = self._request("GET", f"/v1/jobs/{job_id}")
        attempts = job.get("attempts") or []
        if "attempt" not in params:
            if not attempts:  # no attempt began: the follow ended with the job
                return JobState(job["state"]) in TERMINAL_STATES
            # None had begun when the follow did, and no byte came (an attempt that failed to start
            # writes no stdout): the follow is the first attempt's, pinned from now on.
            params["attempt"] = min(int(a["number"]) for a in attempts)
        found = next((a for a in attempts if int(a["number"]) == params["attempt"]), None)
        return found is None or found.get("ended_at") is not None

    def _attempt_numbers(self, job_id: str) -> list[int]:
        return [int(a["number"]) for a in self._request("GET", f"/v1/jobs/{job_id}").get("attempts") or []]

    def _stream_timeout(self) -> httpx.Timeout:
        """A stream may be quiet for long (a follow waits for output): only connecting is bounded."""
        return httpx.Timeout(None, connect=self.timeout_s, pool=self.timeout_s)

    def _before_reopening(self, exc: httpx.TransportError, message: str) -> None:
        """A stream was cut: re-raise what no retry mends, else pause briefly before opening it again."""
        if not retryable_error(exc, idempotent=True) or self.retry.total_s <= 0:
            raise exc
        log.warning(message)
        self.retry.sleep(self.retry.first_backoff_s)

    # -- sweeps --------------------------------------------------------------------------------

    def sweep(
        self,
        template: dict[str, Any] | JobSpec | str | Path,
        grid: dict[str, list[Any]] | None = None,
        random: dict[str, dict[str, Any]] | None = None,
        points: list[dict[str, Any]] | None = None,
        samples: int | None = None,
        seed: int | None = None,
        max_concurrency: int | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
        notify: list[dict[str, Any]] | None = None,
    ) -> Sweep:
        """Submit a sweep: the template's `{param}` placeholders are filled per point (SPEC §3).

        `notify` targets get one webhook when the whole sweep has ended (the template's own `notify`
        is sent for each point)."""
        options = {
            "notify": notify,
            "grid": grid,
            "random": random,
            "points": points,
            "samples": samples,
            "seed": seed,
            "max_concurrency": max_concurrency,
            "name": name,
            "idempotency_key": idempotency_key,
        }
        template_data = self._with_code(_as_dict(template), _spec_dir(template), {})
        body = {"template": template_data, **{k: v for k, v in options.items() if v is not None}}
        return self.submit_sweep(body)

    def submit_sweep(self, definition: dict[str, Any] | str | Path) -> Sweep:
        """Submit a whole sweep definition: a dict, or a YAML/JSON file (`template:` or a flat job spec)."""
        body = load_spec_file(definition) if isinstance(definition, (str, Path)) else definition
        base = _spec_dir(definition) if isinstance(definition, (str, Path)) else Path.cwd()
        if isinstance(body.get("template"), dict):  # a local `code:` directory is uploaded once for all points
            body = {**body, "template": self._with_code(body["template"], base, {})}
        else:
            body = self._with_code(body, base, {})
        body = _keyed(body, new_idempotency_key())
        return Sweep(self, self._request("POST", "/v1/sweeps", idempotent=True, json=body))

    def get_sweep(self, sweep_id: str, metric: str | None = None, order: str = "min", top: int = 20) -> Sweep:
        params: dict[str, Any] = {"order": order, "top": top}
        if metric is not None:
            params["metric"] = metric
        return Sweep(self, self._request("GET", f"/v1/sweeps/{sweep_id}", params=params))

    def workspace_notify(self, workspace: str) -> dict[str, Any]:
        """A workspace's webhook targets and signing key (admin): `{workspace, notify, signing_key}`."""
        data: dict[str, Any] = self._request("GET", f"/v1/workspaces/{workspace}/notify")
        return data

    def set_workspace_notify(
        self, workspace: str, notify: list[dict[str, Any]], signing_key: str | None = None
    ) -> dict[str, Any]:
        """Replace a workspace's webhook targets (admin); `signing_key` sets its own key instead of the derived one."""
        body: dict[str, Any] = {"notify": notify}
        if signing_key is not None:
            body["signing_key"] = signing_key
        data: dict[str, Any] = self._request("PUT", f"/v1/workspaces/{workspace}/notify", idempotent=True, json=body)
        return data

    def sweeps(self, limit: int | None = None) -> list[Sweep]:
        """Sweeps, newest first (follows the cursor across pages)."""
        found: list[Sweep] = []
        params: dict[str, Any] = {}
        while True:
            params["limit"] = min(1000, limit - len(found)) if limit else 1000
            reply = self._request("GET", "/v1/sweeps", params=params)
            found.extend(Sweep(self, item) for item in reply["sweeps"])
            if reply["next_cursor"] is None or (limit and len(found) >= limit):
                return found
            params["cursor"] = reply["next_cursor"]

    def cancel_sweep(self, sweep_id: str) -> Sweep:
        return Sweep(self, self._request("POST", f"/v1/sweeps/{sweep_id}:cancel", idempotent=True))

    def rerun_sweep(self, sweep_id: str, failed: bool = False) -> Sweep:
        """Rerun a sweep's ended points inside it (only those that failed or were cancelled with
        `failed`): new jobs with the same values, each linked by `rerun_of` to the job it reruns,
        listed in `data["reruns"]`. Not retried after it may have been sent, like `rerun`."""
        return Sweep(self, self._request("POST", f"/v1/sweeps/{sweep_id}:rerun", json={"failed": failed}))

    # -- nodes ---------------------------------------------------------------------------------

    def nodes(self, retry_total_s: float | None = None) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/nodes", retry_total_s=retry_total_s)["nodes"])

    def drain(self, node_id: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/v1/nodes/{node_id}:drain", idempotent=True))

    def node_logs(self, node_id: str) -> str:
        """The output of the node's setup task (its latest run; so far, while it runs)."""
        response = self._http.get(f"/v1/nodes/{node_id}/logs")
        if response.status_code >= 400:
            _raise_for(response)
        return response.text

    def pools(self, retry_total_s: float | None = None) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/pools", retry_total_s=retry_total_s)["pools"])

    def set_pool_setup(self, name: str, setup: dict[str, Any]) -> dict[str, Any]:
        """PUT /v1/pools/{name}/setup: {command, env, secrets, timeout_s}, run by each node before it takes work."""
        return dict(self._request("PUT", f"/v1/pools/{name}/setup", json=setup))

    def remove_pool_setup(self, name: str) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/v1/pools/{name}/setup"))

    def set_pool_volumes(self, name: str, volumes: list[dict[str, Any]]) -> dict[str, Any]:
        """PUT /v1/pools/{name}/volumes: volumes every job of the pool sees (a job's own of that name wins)."""
        return dict(self._request("PUT", f"/v1/pools/{name}/volumes", json={"volumes": volumes}))

    def scale_pool(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        """PUT /v1/pools/{name}: min/max nodes, target or autoscale, idle timeout, deallocation, provider."""
        return dict(self._request("PUT", f"/v1/pools/{name}", idempotent=True, json=settings))

    # -- named volumes -------------------------------------------------------------------------

    def create_volume(self, volume: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/volumes: {name, kind: host|sync|blob, path | uri, read_only, sync_interval_s, workspace}."""
        return dict(self._request("POST", "/v1/volumes", json=volume))

    def volumes(self, workspace: str | None = None) -> list[dict[str, Any]]:
        params = {"workspace": workspace} if workspace else {}
        return list(self._request("GET", "/v1/volumes", params=params)["volumes"])

    def delete_volume(self, name: str, workspace: str | None = None) -> dict[str, Any]:
        params = {"workspace": workspace} if workspace else {}
        return dict(self._request("DELETE", f"/v1/volumes/{name}", params=params))


def _raise_for(response: httpx.Response) -> None:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text
    status = response.status_code
    kind = {422: SpecRejected, 404: NotFound, 409: Conflict}.get(status, TrainyardError)
    raise kind(status, detail)
