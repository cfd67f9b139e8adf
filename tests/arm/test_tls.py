"""The API over TLS: `trainyard api --tls-cert/--tls-key`, `start_cluster(tls=…)`, and why /arm needs it."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.arm.clients import ArmTarget, run_client
from tests.arm.conftest import TlsFiles
from trainyard.client import Client
from trainyard.up import Cluster, free_port, wait_for_port

pytestmark = pytest.mark.integration

WORKSPACES_LIST = """
from clients import emit, sdk7_client
emit([w.name for w in sdk7_client().workspaces.list()])
"""
FAILURE_OF_WORKSPACES_LIST = """
from clients import emit, sdk7_client
try:
    list(sdk7_client().workspaces.list())
except Exception as exc:
    emit({"type": type(exc).__name__, "status": getattr(exc, "status_code", None), "message": str(exc)})
else:
    emit(None)
"""
# azure-core retries a refused request three times, backing off (about 5 s), before it raises the same
# error: one try shows the refusal.
FAILURE_OF_ONE_TRY = FAILURE_OF_WORKSPACES_LIST.replace("sdk7_client()", "sdk7_client(retry_total=0)")


def test_the_cluster_api_serves_https_with_the_given_certificate(arm_cluster: Cluster, tls_files: TlsFiles) -> None:
    assert arm_cluster.api_url.startswith("https://127.0.0.1:")
    assert (arm_cluster.home / "api-url").read_text().strip() == arm_cluster.api_url
    trusting_our_ca = ssl.create_default_context(cafile=tls_files.ca)
    assert httpx.get(f"{arm_cluster.api_url}/healthz", verify=trusting_our_ca).is_success
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{arm_cluster.api_url}/healthz")  # the public roots do not know our CA: it really is TLS
    plain = arm_cluster.api_url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/healthz", timeout=5)


def test_the_trainyard_sdk_trusts_the_ca_named_by_ssl_cert_file(
    arm_cluster: Cluster, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.ca))
    with Client(api_url=arm_cluster.api_url, token=arm_cluster.admin_token) as client:
        assert isinstance(client.jobs(), list)


def test_trainyard_api_serves_https_with_tls_cert_and_tls_key(tmp_path: Path, tls_files: TlsFiles) -> None:
    port = free_port()
    command = [sys.executable, "-m", "trainyard", "api", "--port", str(port),
               "--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key)]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "TRAINYARD_HOME": str(tmp_path), "TRAINYARD_ADMIN_TOKEN": "tls-test-token"}
    with (tmp_path / "api.log").open("wb") as log:
        api = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for_port(port, timeout_s=60), (tmp_path / "api.log").read_text()
        trusting_our_ca = ssl.create_default_context(cafile=tls_files.ca)
        answer = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trusting_our_ca)
        assert answer.is_success and answer.url.scheme == "https"
    finally:
        api.terminate()
        api.wait(timeout=30)


def test_trainyard_up_with_tls_cert_and_tls_key_writes_an_https_api_url(tmp_path: Path, tls_files: TlsFiles) -> None:
    command = [sys.executable, "-m", "trainyard", "up", "--workers", "0", "--port", str(free_port()),
               "--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key)]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "TRAINYARD_HOME": str(tmp_path)}
    with (tmp_path / "up.log").open("wb") as log:
        up = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        token_file = tmp_path / "admin-token"  # written last, once the API answers
        deadline = time.monotonic() + 60
        while not token_file.exists() and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        api_url = (tmp_path / "api-url").read_text().strip()
        assert api_url.startswith("https://127.0.0.1:"), (tmp_path / "up.log").read_text()
        trusting_our_ca = ssl.create_default_context(cafile=tls_files.ca)
        assert httpx.get(f"{api_url}/healthz", verify=trusting_our_ca).is_success
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0


def test_api_refuses_a_certificate_without_its_key(tmp_path: Path, tls_files: TlsFiles) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trainyard", "api", "--port", "1", "--tls-cert", str(tls_files.cert)],
        env={"PATH": "/usr/bin:/bin", "TRAINYARD_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--tls-key" in result.stdout + result.stderr


def test_azure_core_refuses_a_bearer_token_over_plain_http(arm_clients: Path, tls_files: TlsFiles) -> None:
    # Why the API speaks TLS: BearerTokenCredentialPolicy will not send a token to an http URL.
    target = ArmTarget(base_url="http://127.0.0.1:9/arm", token="any", ca_bundle=tls_files.ca)
    failure = run_client("sdk7", code=FAILURE_OF_ONE_TRY, target=target)
    assert failure["type"] == "ServiceRequestError"
    assert "non-TLS" in failure["message"] or "https" in failure["message"]


def test_sdk7_sends_its_bearer_token_to_arm_over_https(arm_target: ArmTarget) -> None:
    assert isinstance(run_client("sdk7", code=WORKSPACES_LIST, target=arm_target), list)
    refused = run_client("sdk7", code=FAILURE_OF_WORKSPACES_LIST, target=arm_target.with_token("not-a-token"))
    assert refused["status"] == 401, refused
