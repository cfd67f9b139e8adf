"""Celery hardening (SPEC §2 invariant 10): JSON only, no pickle anywhere; Redis with a password and TLS.

A real `trainyard worker` is handed part messages straight through its queue: the JSON one runs,
a pickled one is refused. The same worker runs over a TLS Redis (`rediss://`) with a password.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.services import free_port, unavailable, wait_for_port
from trainyard import transport
from trainyard.spec import JobSpec

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
PASSWORD = "s3cret-redis-password"
_PICKLE = re.compile(r"\bpickle\b|cPickle|dill|x-python-serialize", re.IGNORECASE)


def test_no_pickle_anywhere_in_trainyard() -> None:
    offenders = []
    for path in [*(REPO / "trainyard").rglob("*.py"), REPO / "pyproject.toml", *REPO.glob("docker*/**/*")]:
        if path.is_file() and _PICKLE.search(path.read_text(errors="replace")):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_the_celery_app_speaks_json_only() -> None:
    conf = transport.make_celery("redis://127.0.0.1:1/0").conf
    assert conf.accept_content == ["json"] and conf.result_accept_content == ["json"]
    assert (conf.task_serializer, conf.result_serializer, conf.event_serializer) == ("json", "json", "json")
    assert conf.task_track_started is True


def _part_message(marker: Path, job_id: str) -> dict[str, Any]:
    spec = JobSpec(name=job_id, command=f"touch {marker}").public_dict()
    return {
        "job_id": job_id,
        "name": job_id,
        "attempt": 1,
        "rank": 0,
        "num_nodes": 1,
        "node_hosts": ["127.0.0.40"],
        "gpus": [],
        "cpus": 1.0,
        "master_port": 29500,
        "has_secrets": False,
        "spec": spec,
    }


@contextmanager
def lone_worker(tmp_path: Path, redis_url: str) -> Iterator[Path]:
    """A `trainyard worker` on its own queue (no scheduler, no API); yields its log file."""
    home = tmp_path / "home"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TRAINYARD_HOME": str(home),
        "TRAINYARD_REDIS_URL": redis_url,
        "TRAINYARD_STORAGE_URL": f"file://{home / 'blobs'}",
        "TRAINYARD_SECRET_KEY": "unused",
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trainyard",
                "worker",
                "--node-id",
                "lone",
                "--address",
                "127.0.0.40",
                "--slots",
                "2",
                "--log-level",
                "INFO",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    client = transport.redis_client(redis_url)
    try:
        _wait(lambda: client.exists(transport.EVENTS_STREAM), "the worker never registered", log_path)
        time.sleep(1.0)  # the Celery consumer starts a moment after the agent registers
        yield log_path
    finally:
        process.terminate()
        process.wait(timeout=30)
        client.close()


def _wait(condition: Any, message: str, log_path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{message}; worker log:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.1)


def _send(redis_url: str, message: dict[str, Any], serializer: str) -> None:
    app = transport.make_celery(redis_url)
    app.send_task(
        transport.RUN_TASK,
        kwargs=message,
        queue=transport.node_queue("lone"),
        task_id=f"{message['job_id']}.1.0",
        serializer=serializer,
    )
    app.close()


def _json_runs_and_pickle_is_refused(tmp_path: Path, redis_url: str) -> None:
    pickled_marker, json_marker = tmp_path / "pickled-ran", tmp_path / "json-ran"
    with lone_worker(tmp_path, redis_url) as log_path:
        _send(redis_url, _part_message(pickled_marker, "jpickled"), serializer="pickle")
        _send(redis_url, _part_message(json_marker, "jjson"), serializer="json")
        _wait(json_marker.exists, "the JSON part never ran", log_path)
        time.sleep(0.5)
    assert not pickled_marker.exists(), "a pickled message was executed"
    assert "Refusing to deserialize untrusted content of type pickle" in log_path.read_text()


def test_a_worker_runs_a_json_part_and_refuses_a_pickled_one(tmp_path: Path, redis_server: str) -> None:
    _json_runs_and_pickle_is_refused(tmp_path, redis_server.rsplit("/", 1)[0] + "/9")
    transport.redis_client(redis_server.rsplit("/", 1)[0] + "/9").flushdb()  # database 9 is this test's own


# -- TLS ----------------------------------------------------------------------------------------------


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trainyard test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A private Redis that speaks only TLS and wants a password; yields its port and CA file."""
    binary = "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else shutil.which("redis-server")
    if binary is None:
        unavailable("no redis-server (scripts/install-redis-server.sh installs Debian's, which has TLS)")
    ca, cert, key = _certificates(tmp_path)
    port = free_port()
    log = (tmp_path / "redis.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        try:
            wait_for_port(port)
        except TimeoutError:
            if "Bad directive" in (tmp_path / "redis.log").read_text():
                unavailable(f"{binary} is built without TLS (scripts/install-redis-server.sh installs Debian's)")
            raise
        yield port, ca
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_redis_with_tls_and_a_password_carries_celery_and_the_node_agent(
    tls_redis: tuple[int, Path], tmp_path: Path
) -> None:
    port, ca = tls_redis
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    assert transport.redis_client(url).ping()
    with pytest.raises(redis.AuthenticationError):
        transport.redis_client(url.replace(PASSWORD, "wrong")).ping()
    with pytest.raises(redis.ConnectionError):  # the server's certificate is checked against the CA
        transport.redis_client(url.split("?")[0]).ping()
    _json_runs_and_pickle_is_refused(tmp_path, url)


def test_rediss_urls_turn_on_certificate_checks_for_celery() -> None:
    import ssl

    options = transport.redis_ssl_options("rediss://:pw@h:6380/0?ssl_ca_certs=/ca.pem")
    assert options == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"}
    assert transport.redis_ssl_options("redis://h:6379/0") is None
    assert transport.make_celery("rediss://h:6380/0?ssl_cert_reqs=none").conf.broker_use_ssl == {
        "ssl_cert_reqs": ssl.CERT_NONE
    }
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        transport.redis_ssl_options("rediss://h/0?ssl_cert_reqs=maybe")
