"""The Python SDK (SPEC §7): a thin, typed client of the REST API."""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

from trainyard.codepack import pack_to_file
from trainyard.config import client_token, load_settings
from trainyard.datarefs import is_local_code, safe_relpath
from trainyard.spec import TERMINAL_STATES, JobSpec, JobState, load_spec_file

BATCH_SIZE = 10_000  # the most POST /v1/jobs:batch takes: one call, one transaction
WAIT_POLL_S = 0.5


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
        """Block until the job ends; returns its final state (TimeoutError after `timeout` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.refresh()
            if JobState(self.data["state"]) in TERMINAL_STATES:
                return str(self.data["state"])
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {self.data['state']} after {timeout} s")
            time.sleep(poll_s)

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
        self.data = self._client._request("POST", f"/v1/sweeps/{self.id}/points", json={"points": points})
        return self

    def cancel(self) -> Sweep:
        self.data = self._client.cancel_sweep(self.id).data
        return self

    def wait(self, timeout: float | None = None, poll_s: float = WAIT_POLL_S) -> str:
        """Block until no job of the sweep can run any more; returns `finished` or `cancelled`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.refresh().data["state"] in ("finished", "cancelled"):
                return str(self.data["state"])
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sweep {self.id} still {self.data['state']} after {timeout} s")
            time.sleep(poll_s)


class Client:
    def __init__(self, api_url: str | None = None, token: str | None = None, timeout_s: float = 60.0):
        self.api_url = (api_url or load_settings().api_url).rstrip("/")
        self.token = token or client_token()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            _raise_for(response)
        return response.json()

    # -- jobs ----------------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any] | JobSpec | str | Path) -> Job:
        data = self._with_code(_as_dict(spec), _spec_dir(spec), {})
        return Job(self, self._request("POST", "/v1/jobs", json=data))

    def submit_many(self, specs: Iterable[dict[str, Any] | JobSpec], batch_size: int = BATCH_SIZE) -> list[Job]:
        """Submit many specs, batch_size per call; each batch is stored whole or refused whole."""
        jobs: list[Job] = []
        batch: list[dict[str, Any]] = []
        uploaded: dict[Path, str] = {}  # one upload per code directory for the whole call
        for spec in specs:
            batch.append(self._with_code(_as_dict(spec), _spec_dir(spec), uploaded))
            if len(batch) >= batch_size:
                jobs.extend(self._submit_batch(batch))
                batch = []
        if batch:
            jobs.extend(self._submit_batch(batch))
        return jobs

    def _submit_batch(self, batch: list[dict[str, Any]]) -> list[Job]:
        reply = self._request("POST", "/v1/jobs:batch", json={"jobs": batch})
        return [Job(self, item) for item in reply["jobs"]]

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
            with archive.open("rb") as body:
                reply = self._request("POST", "/v1/code", content=body,
                                      headers={"Content-Type": "application/gzip"})
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
        digest = hashlib.sha256()
        with self._http.stream("GET", f"/v1/jobs/{job_id}/outputs/{first['key']}", timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for(response)
            with partial.open("wb") as sink:
                for chunk in response.iter_bytes():
                    sink.write(chunk)
                    digest.update(chunk)
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

    def cancel(self, job_id: str) -> Job:
        return Job(self, self._request("POST", f"/v1/jobs/{job_id}:cancel"))

    def log_chunks(
        self,
        job_id: str,
        rank: int = 0,
        stream: str = "stdout",
        attempt: int | None = None,
        follow: bool = False,
        offset: int = 0,
    ) -> Iterator[bytes]:
        params: dict[str, Any] = {"rank": rank, "stream": stream, "offset": offset}
        if attempt is not None:
            params["attempt"] = attempt
        if not follow:
            while True:
                response = self._http.get(f"/v1/jobs/{job_id}/logs", params=params)
                if response.status_code >= 400:
                    _raise_for(response)
                if not response.content:
                    return
                yield response.content
                params["offset"] = int(response.headers["X-Next-Offset"])
        params["follow"] = "true"
        with self._http.stream("GET", f"/v1/jobs/{job_id}/logs", params=params, timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for(response)
            yield from response.iter_bytes()

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
    ) -> Sweep:
        """Submit a sweep: the template's `{param}` placeholders are filled per point (SPEC §3)."""
        options = {"grid": grid, "random": random, "points": points, "samples": samples, "seed": seed,
                   "max_concurrency": max_concurrency, "name": name, "idempotency_key": idempotency_key}
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
        return Sweep(self, self._request("POST", "/v1/sweeps", json=body))

    def get_sweep(self, sweep_id: str, metric: str | None = None, order: str = "min", top: int = 20) -> Sweep:
        params: dict[str, Any] = {"order": order, "top": top}
        if metric is not None:
            params["metric"] = metric
        return Sweep(self, self._request("GET", f"/v1/sweeps/{sweep_id}", params=params))

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
        return Sweep(self, self._request("POST", f"/v1/sweeps/{sweep_id}:cancel"))

    # -- nodes ---------------------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/nodes")["nodes"])

    def drain(self, node_id: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/v1/nodes/{node_id}:drain"))

    def pools(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/pools")["pools"])

    def scale_pool(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        """PUT /v1/pools/{name}: min/max nodes, target or autoscale, idle timeout, deallocation, provider."""
        return dict(self._request("PUT", f"/v1/pools/{name}", json=settings))


def _raise_for(response: httpx.Response) -> None:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text
    status = response.status_code
    kind = {422: SpecRejected, 404: NotFound, 409: Conflict}.get(status, TrainyardError)
    raise kind(status, detail)
