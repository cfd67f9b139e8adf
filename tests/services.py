"""Real servers for the test session: a private Redis, a private PostgreSQL database."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "TRAINYARD_TEST_POSTGRES_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """In CI a missing service fails the run; on a laptop the test is skipped."""
    if in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def redis_binary() -> str:
    from trainyard.up import redis_server_binary

    return redis_server_binary()


@contextmanager
def private_redis(data_dir: Path, appendonly: bool = False, port: int | None = None) -> Iterator[tuple[str, int]]:
    """A redis-server of our own on loopback; nothing of anyone else's is touched."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    from trainyard.up import redis_server_args

    process = subprocess.Popen(
        redis_server_args(port, data_dir, appendonly), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0", port
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def private_postgres_database() -> Iterator[str]:
    """A database of our own on the PostgreSQL server, dropped afterwards."""
    import psycopg

    name = f"trainyard_test_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc} (run scripts/ensure-services.sh)")
        raise
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


# -- blob servers (moto for S3, Azurite for Azure Blob) that a test may stop and start again --

REPO_ROOT = Path(__file__).resolve().parents[1]
AZURITE_ACCOUNT = "devstoreaccount1"
# The well-known development key every Azurite accepts (public, not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BLOB_SERVER_START_TIMEOUT_S = 60.0


def azurite_binary() -> str:
    """Path of azurite-blob, installed by scripts/install-azurite.sh on first use (skips/fails if it cannot)."""
    script = REPO_ROOT / "scripts" / "install-azurite.sh"
    try:
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=240, check=False)
    except subprocess.TimeoutExpired:
        unavailable("installing Azurite took longer than 240 s")
        raise
    if done.returncode != 0:
        unavailable(f"Azurite could not be installed: {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def moto_binary() -> str:
    import sys

    binary = Path(sys.executable).with_name("moto_server")
    if not binary.exists():
        unavailable("moto_server is not installed: pip install 'moto[server]'")
    return str(binary)


def azurite_connection_string(endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};"
    )


class BlobServer:
    """A moto or Azurite server on a fixed port (of loopback, or of `host`); stop() and start() again keep the port.

    Azurite keeps its blobs in `data_dir` (--location), so they survive a restart; moto keeps
    them in memory only.
    """

    def __init__(self, kind: str, data_dir: Path, port: int | None = None, host: str = "127.0.0.1"):
        self.kind, self.data_dir, self.host = kind, data_dir, host
        self.port = port or free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        base = f"http://{self.host}:{self.port}"
        return f"{base}/{AZURITE_ACCOUNT}" if self.kind == "azurite" else base

    def _command(self) -> list[str]:
        if self.kind == "moto":
            return [moto_binary(), "-H", self.host, "-p", str(self.port)]
        return [
            azurite_binary(),
            "--blobHost",
            self.host,
            "--blobPort",
            str(self.port),
            "--location",
            str(self.data_dir),
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ]

    def start(self) -> None:
        with (self.data_dir / f"{self.kind}.log").open("ab") as log:
            self.process = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + BLOB_SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                unavailable(f"{self.kind} exited with {self.process.returncode}; see {self.data_dir}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        unavailable(f"{self.kind} did not listen on {self.host}:{self.port}")

    def stop(self) -> None:
        """SIGTERM, so that Azurite writes its metadata out; SIGKILL after 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> BlobServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def environment(self) -> dict[str, str]:
        """The ecosystem's own variables (SPEC §9) that point clients at this server."""
        if self.kind == "moto":
            return {
                "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        return {"AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(self.endpoint)}

    def create_root(self, name: str) -> str:
        """A fresh bucket (moto) or container (Azurite); returns the storage URL of its root."""
        if self.kind == "moto":
            import boto3

            env = self.environment()
            boto3.session.Session().client(
                "s3",
                endpoint_url=env["AWS_ENDPOINT_URL"],
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                region_name="us-east-1",
            ).create_bucket(Bucket=name)
            return f"s3://{name}"
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient.from_connection_string(azurite_connection_string(self.endpoint))
        service.create_container(name)
        return f"az://{name}"
