"""Container jobs whose image is on a registry that wants a login, through a real cluster.

A Distribution registry with htpasswd auth (Debian's docker-registry) holds the image; the node's
engine does not have it. The login is a job secret named by `container.registry.password_secret`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests import registry as private
from tests.integration.launchers_conftest_helpers import finished
from trainyard.batchai import REGISTRY_PASSWORD_SECRET, batchai_to_spec
from trainyard.client import Client
from trainyard.up import Cluster, start_cluster

pytestmark = pytest.mark.integration

SECRET = "REGISTRY_PASSWORD"


registry = private.registry  # the module's registry, started once


@pytest.fixture(scope="module")
def registry_cluster(registry: private.PrivateRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with private.registry_engine(tmp_path_factory.mktemp("engine"), registry) as url:
        extra_env = {
            "TRAINYARD_REDIS_URL": "",
            "TRAINYARD_DATABASE_URL": "",
            "TRAINYARD_ADMIN_TOKEN": "",
            "TRAINYARD_SECRET_KEY": "",
            "TRAINYARD_DOCKER_URL": url,
        }
        cluster = start_cluster(workers=1, slots=2, home=tmp_path_factory.mktemp("cluster"), extra_env=extra_env)
        try:
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture
def client(registry_cluster: Cluster, registry: private.PrivateRegistry) -> Iterator[Client]:
    private.remove_local(registry.image)  # every test pulls it again
    with Client(api_url=registry_cluster.api_url, token=registry_cluster.admin_token) as found:
        yield found


def _job(registry: private.PrivateRegistry, password: str, name: str) -> dict[str, object]:
    return {
        "name": name,
        "image": registry.image,
        "max_retries": 0,
        "command": 'cat /marker; echo "secret in env: ${REGISTRY_PASSWORD:-no}"',
        "secrets": {SECRET: password},
        "container": {"registry": {"username": registry.username, "password_secret": SECRET}},
    }


def test_a_job_pulls_its_image_with_the_login_from_its_secret(
    client: Client, registry: private.PrivateRegistry
) -> None:
    job = client.submit(_job(registry, registry.password, "private-image"))
    data = finished(job, timeout_s=180)
    assert data["state"] == "succeeded", job.log_bytes(stream="stderr")
    assert job.log_bytes().decode() == f"{private.MARKER}\nsecret in env: no\n"
    assert registry.password not in json.dumps(job.refresh().data)


def test_a_wrong_password_fails_the_job_with_the_registrys_refusal(
    client: Client, registry: private.PrivateRegistry
) -> None:
    job = client.submit(_job(registry, "wrong-" + registry.password, "private-image-refused"))
    data = finished(job, timeout_s=180)
    assert data["state"] == "failed"
    stderr = job.log_bytes(stream="stderr").decode()
    assert f"could not pull image {registry.image} from {registry.host} as user '{registry.username}'" in stderr
    assert f"(password: secret {SECRET})" in stderr
    assert "wrong-" not in stderr and registry.password not in stderr


def test_a_batchai_job_file_with_registry_credentials_runs(client: Client, registry: private.PrivateRegistry) -> None:
    server, image = registry.image.split("/", 1)
    doc = {
        "properties": {
            "nodeCount": 1,
            "customToolkitSettings": {"commandLine": "cat /marker"},
            "containerSettings": {
                "imageSourceRegistry": {
                    "serverUrl": server,
                    "image": image,
                    "credentials": {"username": registry.username, "password": registry.password},
                }
            },
        }
    }
    spec, warnings = batchai_to_spec(doc, name="bai-private-image", pool="default")
    assert spec["secrets"] == {REGISTRY_PASSWORD_SECRET: registry.password}
    assert any("credentials.password: kept as the job's write-only secret" in w for w in warnings)
    job = client.submit(spec)
    data = finished(job, timeout_s=180)
    assert data["state"] == "succeeded", job.log_bytes(stream="stderr")
    assert job.log_bytes().decode() == f"{private.MARKER}\n"
    assert registry.password not in json.dumps(job.refresh().data)
