"""Real blob servers for the adapter tests: moto (S3) and Azurite (Azure Blob), one each per session.

A server that cannot start skips its tests on a laptop, but fails them when CI is set.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.services import free_port, unavailable

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_AZURITE = REPO_ROOT / "scripts" / "install-azurite.sh"
HOST = "127.0.0.1"
SERVER_START_TIMEOUT_S = 60
INSTALL_TIMEOUT_S = 240

# The well-known development account every Azurite accepts (public, not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _unavailable(reason: str) -> NoReturn:
    unavailable(reason)  # skips on a laptop, fails under CI: both raise
    raise AssertionError("unreachable")


def _die_with_parent() -> None:
    # If pytest is killed outright, the kernel takes the server down too (Linux only).
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, log: Path, name: str) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _unavailable(f"{name} exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    _unavailable(f"{name} did not listen on {HOST}:{port} within {SERVER_START_TIMEOUT_S} s")


@contextlib.contextmanager
def _server(command: list[str], port: int, log: Path, name: str) -> Iterator[None]:
    """Runs one server process for the session and stops it (only it, by its own handle) at the end."""
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
    try:
        started = time.monotonic()
        _wait_until_listening(process, port, log, name)
        sys.stderr.write(f"\n{name} listening on {HOST}:{port} after {time.monotonic() - started:.2f} s\n")
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3 endpoint URL served by moto_server from this virtualenv."""
    binary = Path(sys.executable).with_name("moto_server")
    if not binary.exists():
        _unavailable("moto_server is not installed: pip install 'moto[server]'")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with _server([str(binary), "-H", HOST, "-p", str(port)], port, log, "moto_server"):
        yield f"http://{HOST}:{port}"


@pytest.fixture(scope="session")
def azurite_blob_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A blob endpoint URL (account devstoreaccount1) served by Azurite, installed on first use."""
    try:
        installed = subprocess.run(
            ["bash", str(INSTALL_AZURITE)],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"{INSTALL_AZURITE.name} took longer than {INSTALL_TIMEOUT_S} s")
    if installed.returncode != 0:
        _unavailable(f"Azurite could not be installed: {installed.stderr[-2000:]}")
    binary = installed.stdout.strip().splitlines()[-1]
    port = free_port()
    location = tmp_path_factory.mktemp("azurite")
    command = [
        binary,
        "--blobHost", HOST,
        "--blobPort", str(port),
        "--location", str(location),
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",
    ]  # fmt: skip
    with _server(command, port, location / "azurite.log", "azurite-blob"):
        yield f"http://{HOST}:{port}/{AZURITE_ACCOUNT}"


@pytest.fixture
def s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A fresh bucket, with the AWS_* variables pointing at moto for the test's duration."""
    with fresh_s3_bucket(moto_endpoint, monkeypatch, tmp_path) as bucket:
        yield bucket


@contextlib.contextmanager
def fresh_s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """s3_bucket for a fixture of any scope: the AWS_* variables are set through `monkeypatch`."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Keep a developer's own AWS set-up out of the tests.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"test-{uuid.uuid4().hex[:20]}"
    client = boto3.session.Session().client("s3")
    client.create_bucket(Bucket=bucket)
    yield bucket
    # Free moto's memory: the session runs many tests with objects of several MiB.
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        if objects := [{"Key": item["Key"]} for item in page.get("Contents", [])]:
            client.delete_objects(Bucket=bucket, Delete={"Objects": objects})
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=bucket)


def _connection_string(blob_endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={blob_endpoint};"
    )


@pytest.fixture
def azure_container(azurite_blob_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh container, with AZURE_STORAGE_CONNECTION_STRING pointing at Azurite for the test."""
    from azure.storage.blob import BlobServiceClient

    connection_string = _connection_string(azurite_blob_endpoint)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string)
    for name in ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_BLOB_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    container = f"test-{uuid.uuid4().hex[:20]}"
    service = BlobServiceClient.from_connection_string(connection_string)
    service.create_container(container)
    yield container
    service.delete_container(container)
