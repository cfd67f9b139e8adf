"""A canary secret reaches its job's environment and nowhere else (SPEC §2 invariant 9).

The job proves it saw the secret by printing its SHA-256. Then every place trainyard writes
to is searched for the canary itself: API responses, Flower's API and pages, every Redis key
and value, every Redis command sent while the job ran (a MONITOR connection), command lines of
all processes, every file under TRAINYARD_HOME (service logs, the SQLite file, blob storage,
node spools) and every row of every table. Base64 runs are decoded before searching, because
Celery message bodies travel base64-encoded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
import redis
from sqlalchemy import MetaData, select

from tests.integration.security.conftest import WS_A, FlowerServer, api, create_token, wait_for_state
from trainyard import transport
from trainyard.db.engine import make_engine
from trainyard.up import Cluster

pytestmark = pytest.mark.integration

_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{16,}={0,2}")
REDIS_DATABASES = range(16)


def views(blob: bytes) -> Iterator[bytes]:
    """The bytes, then every base64 run in them decoded (standard and URL-safe alphabets)."""
    yield blob
    for run in _BASE64_RUN.findall(blob):
        padded = run.rstrip(b"=") + b"=" * (-len(run.rstrip(b"=")) % 4)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                yield decode(padded)
            except (binascii.Error, ValueError):
                continue


def leaks(canary: bytes, blob: bytes) -> bool:
    return any(canary in view for view in views(blob))


class RedisMonitor:
    """Everything sent to a Redis server while it runs, as MONITOR prints it."""

    def __init__(self, redis_url: str):
        parts = urlsplit(redis_url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.password = parts.password
        self.captured = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RedisMonitor:
        self._sock = socket.create_connection(self.address, timeout=5)
        if self.password:
            self._sock.sendall(f"AUTH {self.password}\r\n".encode())
            assert self._sock.recv(64).startswith(b"+OK")
        self._sock.sendall(b"MONITOR\r\n")
        assert self._sock.recv(64).startswith(b"+OK")
        self._sock.settimeout(0.2)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                return
            self.captured += chunk

    def __exit__(self, *_: object) -> None:
        time.sleep(0.5)  # let the last commands arrive
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


def redis_contents(redis_url: str) -> bytes:
    """Every key and value of every database of the server, whatever the type."""
    out = bytearray()
    for db in REDIS_DATABASES:
        client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + f"/{db}")
        for key in client.scan_iter(count=1000):
            out += key + b"\n" + _value(client, key) + b"\n"
        client.close()
    return bytes(out)


def _value(client: redis.Redis, key: bytes) -> bytes:
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    value: Any
    if kind == "string":
        value = client.get(key)
    elif kind == "list":
        value = client.lrange(key, 0, -1)
    elif kind == "hash":
        value = client.hgetall(key)
    elif kind == "set":
        value = client.smembers(key)
    elif kind == "zset":
        value = client.zrange(key, 0, -1, withscores=True)
    elif kind == "stream":
        value = client.xrange(key)
    else:
        value = b""
    return repr(value).encode()


def files_under(root: Path) -> Iterator[tuple[Path, bytes]]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path, path.read_bytes()


def database_rows(database_url: str) -> bytes:
    """Every row of every table (reflected, so tables added later are searched too)."""
    engine = make_engine(database_url)
    metadata = MetaData()
    metadata.reflect(engine)
    out = bytearray()
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(select(table)):
                out += repr(tuple(row)).encode() + b"\n"
    engine.dispose()
    return bytes(out)


def postgres_dump(database_url: str) -> bytes:
    if not database_url.startswith("postgres") or shutil.which("pg_dump") is None:
        return b""
    result = subprocess.run(["pg_dump", "--data-only", database_url], capture_output=True, timeout=60, check=True)
    return result.stdout


def process_command_lines() -> bytes:
    out = bytearray()
    for process in psutil.process_iter(["cmdline"]):
        out += " ".join(process.info["cmdline"] or []).encode() + b"\n"
    return bytes(out)


def flower_pages(flower: FlowerServer, task_ids: list[str]) -> dict[str, bytes]:
    pages = [
        "/api/tasks",
        "/api/workers",
        "/tasks",
        "/workers",
        "/broker",
        "/tasks/datatable?draw=1&start=0&length=100&search%5Bvalue%5D=&order%5B0%5D%5Bcolumn%5D=0"
        "&columns%5B0%5D%5Bdata%5D=name&order%5B0%5D%5Bdir%5D=asc",
    ]
    for task_id in task_ids:
        pages += [f"/api/task/info/{task_id}", f"/task/{task_id}"]
    found = {}
    with httpx.Client(base_url=flower.url, auth=flower.auth, timeout=30) as http:
        for page in pages:
            response = http.get(page)
            assert response.status_code == 200, (page, response.status_code)
            found[f"flower {page}"] = response.content
    return found


def _api_responses(cluster: Cluster, token: str, job_id: str) -> dict[str, bytes]:
    found = {}
    with api(cluster, token) as http, api(cluster, cluster.admin_token) as admin:
        for name, response in {
            "job show": http.get(f"/v1/jobs/{job_id}"),
            "job list": http.get("/v1/jobs"),
            "stdout": http.get(f"/v1/jobs/{job_id}/logs"),
            "stderr": http.get(f"/v1/jobs/{job_id}/logs", params={"stream": "stderr"}),
            "audit": admin.get("/v1/audit", params={"limit": 1000}),
            "tokens": admin.get("/v1/tokens"),
            "metrics": http.get("/metrics"),
        }.items():
            assert response.status_code == 200, (name, response.text)
            found[f"API {name}"] = response.content
    return found


_PRINT_HASH = (
    "import hashlib, os, time; "
    "print(hashlib.sha256(os.environ['CANARY_SECRET'].encode()).hexdigest(), flush=True); time.sleep(2)"
)


def _submit_canaries(cluster: Cluster, token: str, canary: str) -> tuple[list[str], dict[str, bytes]]:
    """A job, and a sweep of two, each with the canary as a secret."""
    template = {
        "name": "canary",
        "workspace": WS_A,
        "command": ["python3", "-c", _PRINT_HASH],
        "secrets": {"CANARY_SECRET": canary},
        "max_retries": 0,
    }
    with api(cluster, token) as http:
        submitted = http.post("/v1/jobs", json=template)
        assert submitted.status_code == 201, submitted.text
        job_ids, responses = [submitted.json()["id"]], {"API submit": submitted.content}
        body = {"template": {**template, "name": "canary-{x}"}, "grid": {"x": [1, 2]}}
        sweep = http.post("/v1/sweeps", json=body)
        assert sweep.status_code == 201, sweep.text
        responses["API sweep submit"] = sweep.content
        responses["API sweep show"] = http.get(f"/v1/sweeps/{sweep.json()['id']}").content
        job_ids += [j["id"] for j in http.get("/v1/jobs", params={"sweep": sweep.json()["id"]}).json()["jobs"]]
    assert len(job_ids) == 3
    return job_ids, responses


def test_a_canary_secret_reaches_its_job_and_nowhere_else(cluster: Cluster, flower: FlowerServer) -> None:
    canary = f"canary-{secrets.token_hex(16)}"
    token = create_token(cluster, "user", WS_A, name="canary-user")["token"]
    redis_url = cluster.env["TRAINYARD_REDIS_URL"]
    with RedisMonitor(redis_url) as monitor:
        job_ids, places = _submit_canaries(cluster, token, canary)
        wait_for_state(cluster, job_ids[0], {"running", "succeeded", "failed"})
        places["process command lines"] = process_command_lines()  # while the job runs
        ended = [wait_for_state(cluster, job_id, {"succeeded", "failed"}) for job_id in job_ids]
    assert [job["state"] for job in ended] == ["succeeded"] * len(job_ids), ended
    expected = hashlib.sha256(canary.encode()).hexdigest().encode() + b"\n"
    with api(cluster, token) as http:
        for job in ended:
            assert http.get(f"/v1/jobs/{job['id']}/logs").content == expected, "a job did not get its secret"
            assert job["spec"]["secrets"] == {"CANARY_SECRET": "***"}
            assert not redis.Redis.from_url(redis_url).exists(transport.secrets_key(job["id"], 1)), "secrets outlived"
    for job_id in job_ids:
        places.update({f"{k} {job_id}": v for k, v in _api_responses(cluster, token, job_id).items()})
    places.update(flower_pages(flower, [f"{job_id}.1.0" for job_id in job_ids]))
    places["Redis MONITOR"] = bytes(monitor.captured)
    places["Redis keys and values"] = redis_contents(redis_url)
    database_url = cluster.env["TRAINYARD_DATABASE_URL"]
    places["database rows"] = database_rows(database_url)
    places["pg_dump"] = postgres_dump(database_url)
    for path, content in files_under(cluster.home):
        places[str(path.relative_to(cluster.home))] = content

    assert b"SET" in places["Redis MONITOR"] and job_ids[0].encode() in places["Redis MONITOR"], "MONITOR saw nothing"
    assert any(job_ids[-1].encode() in content for name, content in places.items() if name.startswith("flower"))
    assert any(name.startswith("logs/") for name in places), "no service logs were searched"
    assert leaks(canary.encode(), base64.b64encode(b'{"env": "' + canary.encode() + b'"}')), "the search is blind"
    leaked = sorted(name for name, content in places.items() if leaks(canary.encode(), content))
    assert leaked == [], f"the canary secret leaked into {leaked}"
