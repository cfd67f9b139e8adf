"""The /arm suite's fixtures: a private CA, one real SQLite cluster serving HTTPS, the client venvs."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.arm.clients import ArmTarget, ensure_clients
from tests.workers.launchers import components
from trainyard.up import Cluster, start_cluster

# The cluster's own database number on the session's private Redis (others use 1 to 10).
REDIS_DB = 12
TLS_HOST = "127.0.0.1"


@dataclass(frozen=True)
class TlsFiles:
    """A private CA and the API's certificate for 127.0.0.1/localhost issued by it (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path, host: str = TLS_HOST) -> TlsFiles:
    """A CA and a server certificate it issued, as strict verifiers want them (key usages, SAN, key ids)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trainyard test CA")])
    ca_key_id = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = _issued(ca_name, ca_key.public_key(), ca_name, ca_key, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),  # cert and CRL signing
        (ca_key_id, False),
    ])  # fmt: skip
    server_cert = _issued(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]), server_key.public_key(),
                          ca_name, ca_key, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(True, False, True, False, False, False, False, False, False), True),  # signature, key exchange
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]), False),
        (x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), False),
        (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), False),
    ])  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(ca=directory / "ca.pem", cert=directory / "api-cert.pem", key=directory / "api-key.pem")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files.key.write_bytes(key_pem)
    files.key.chmod(0o600)
    return files


def _issued(subject: Any, public_key: Any, issuer: Any, issuer_key: Any, extensions: list[tuple[Any, bool]]) -> Any:
    """A certificate valid from a few minutes ago for two days, signed with SHA-256."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("arm-tls"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Install the client venvs before any /arm test runs (`make test` did; a bare pytest may not have).

    Here rather than in a fixture: on a fresh machine the install takes minutes, more than a test's timeout.
    """
    here = Path(__file__).parent
    if any(item.path.is_relative_to(here) for item in session.items):
        ensure_clients()


@pytest.fixture(scope="session")
def arm_clients() -> Path:
    """The pinned client venvs (sdk7, sdk2, azcli); a no-op check once installed."""
    return ensure_clients()


@pytest.fixture(scope="session")
def arm_cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: str, tls_files: TlsFiles) -> Iterator[Cluster]:
    """One real cluster (SQLite, API over HTTPS, scheduler, two nodes) for the whole /arm suite; its nodes
    have the container engine when there is one (as the launcher tests' cluster: Podman's Docker API)."""
    home = tmp_path_factory.mktemp("arm-cluster")
    extra_env = {
        "TRAINYARD_DATABASE_URL": f"sqlite:///{home / 'trainyard.db'}",
        "TRAINYARD_REDIS_URL": redis_server.rsplit("/", 1)[0] + f"/{REDIS_DB}",
        "TRAINYARD_ADMIN_TOKEN": "",
        "TRAINYARD_SECRET_KEY": "",
        "TRAINYARD_PREEMPT_GRACE_S": "5",
    }
    if docker_url := components.cluster_docker_url():
        extra_env["TRAINYARD_DOCKER_URL"] = docker_url
    started = start_cluster(workers=2, slots=4, home=home, extra_env=extra_env, tls=(tls_files.cert, tls_files.key))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def arm_target(arm_cluster: Cluster, tls_files: TlsFiles, arm_clients: Path) -> ArmTarget:
    """What a client needs to reach the cluster's /arm as admin: https base URL, token, CA bundle."""
    return ArmTarget(base_url=f"{arm_cluster.api_url}/arm", token=arm_cluster.admin_token, ca_bundle=tls_files.ca)
