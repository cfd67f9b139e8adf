"""Images from a registry that wants a login: a real Distribution registry with htpasswd auth, a real engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import registry as private
from tests.workers.launchers.gang import Captured
from trainyard.workers.launchers import LaunchContext
from trainyard.workers.launchers.base import job_variables
from trainyard.workers.launchers.container import ContainerRuntime, ImagePullFailed

pytestmark = pytest.mark.integration

SECRET = "REGISTRY_PASSWORD"


registry = private.registry  # the module's registry, started once


@pytest.fixture(scope="module")
def engine(registry: private.PrivateRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with (
        private.registry_engine(tmp_path_factory.mktemp("engine"), registry) as url,
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setenv("TRAINYARD_DOCKER_URL", url)
        yield url


def _context(tmp_path: Path, registry: private.PrivateRegistry, password: str, **login: str) -> LaunchContext:
    ctx = LaunchContext(
        job_id="pull",
        name="pull",
        attempt=1,
        rank=0,
        num_nodes=1,
        node_hosts=["127.0.0.2"],
        node_address="127.0.0.2",
        spec={
            "image": registry.image,
            "container": {"registry": {"username": registry.username, "password_secret": SECRET, **login}},
        },
        gpus=[],
        workdir=tmp_path / "work",
        checkpoint_dir=tmp_path / "checkpoint",
        master_port=29500,
        secrets={SECRET: password, "OTHER_SECRET": "kept"},
    )
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    return ctx


def test_a_wrong_password_fails_the_pull_naming_registry_user_and_secret_never_the_password(
    engine: str, registry: private.PrivateRegistry, tmp_path: Path
) -> None:
    wrong = "not-" + registry.password
    ctx = _context(tmp_path, registry, wrong)
    with pytest.raises(ImagePullFailed) as refused:
        ContainerRuntime(registry.image).run(ctx, ["cat", "/marker"], job_variables(ctx), step_name="main")
    message = str(refused.value)
    assert f"could not pull image {registry.image} from {registry.host} as user '{registry.username}'" in message
    assert f"secret {SECRET}" in message
    assert "unauthorized" in message.lower() or "authentication" in message.lower(), message
    assert wrong not in message and registry.password not in message


def test_the_right_password_pulls_the_image_and_stays_out_of_the_container(
    engine: str, registry: private.PrivateRegistry, tmp_path: Path
) -> None:
    private.remove_local(registry.image)
    ctx = _context(tmp_path, registry, registry.password)
    env = job_variables(ctx)
    assert SECRET not in env and env["OTHER_SECRET"] == "kept"  # the job's other secrets are its environment
    step = ContainerRuntime(registry.image).run(ctx, ["/bin/sh", "-c", "cat /marker; env"], env, step_name="main")
    inspected = dict(step.container.attrs)  # what `docker inspect` shows of the job's container
    output = Captured()
    pumps = [output.pump(step.stdout_fd, "stdout"), output.pump(step.stderr_fd, "stderr")]
    code = step.wait()
    for pump in pumps:
        pump.join(10)
    assert code == 0, output.text("stderr")
    assert output.text("stdout").startswith(private.MARKER + "\n")
    assert registry.password not in output.text("stdout")
    assert registry.password not in repr(inspected) and SECRET not in repr(inspected)
