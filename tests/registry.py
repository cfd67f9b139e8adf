"""A private image registry with basic auth (Debian's docker-registry) and an engine that pulls from it.

`private_registry(dir)` starts the Distribution registry on 127.0.0.1 with an htpasswd file of
one user, pushes an image of its own there (the local test image plus a marker file, so it is
not already on the node) and removes it from the local store. `registry_engine(dir, registry)`
starts a Podman API service of the test's own that treats that registry as plain HTTP, as Docker
does for 127.0.0.0/8 by default (the shared service of scripts/install-podman.sh is left as it is).
scripts/install-registry.sh installs the packages (skipped when they are there).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.services import REPO_ROOT, free_port, unavailable, wait_for_port
from tests.workers.launchers import components

REGISTRY_USER = "trainer"
MARKER = "from-the-private-registry"
PODMAN_CONF = REPO_ROOT / ".test-services" / "podman" / "containers.conf"


@dataclass
class PrivateRegistry:
    host: str  # 127.0.0.1:PORT
    image: str  # HOST/trainyard/private:TAG, on the registry only
    username: str
    password: str = field(repr=False)


def _install() -> str:
    script = REPO_ROOT / "scripts" / "install-registry.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        unavailable(f"docker-registry could not be installed: {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def _podman(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CONTAINERS_CONF=str(PODMAN_CONF)) if PODMAN_CONF.exists() else None
    return subprocess.run(["podman", *args], input=stdin, capture_output=True, text=True, env=env, timeout=300)


def _checked(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(done.args)} failed: {done.stderr[-2000:]}")


def _htpasswd(path: Path, user: str, password: str) -> None:
    done = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True, text=True, timeout=30, check=True)
    path.write_text(done.stdout)


def _config(directory: Path, port: int) -> Path:
    config = directory / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {directory / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: {secrets.token_hex(16)}\n"
        f"auth:\n  htpasswd:\n    realm: trainyard-test\n    path: {directory / 'htpasswd'}\n"
    )
    return config


def _push_private_image(registry: PrivateRegistry, directory: Path) -> None:
    """The test image plus a marker file, pushed as registry.image; then gone from the local store."""
    context = directory / "build"
    context.mkdir()
    (context / "marker").write_text(MARKER + "\n")
    (context / "Dockerfile").write_text(f"FROM {components.TEST_IMAGE}\nCOPY marker /marker\n")
    _checked(_podman("build", "--pull=never", "-t", registry.image, str(context)))
    _checked(
        _podman(
            "push",
            "--tls-verify=false",
            "--creds",
            f"{registry.username}:{registry.password}",
            registry.image,
        )
    )
    remove_local(registry.image)


def remove_local(image: str) -> None:
    done = _podman("rmi", "--force", image)
    if done.returncode != 0 and "image not known" not in done.stderr:
        raise RuntimeError(f"podman rmi {image}: {done.stderr[-1000:]}")


@contextmanager
def private_registry(directory: Path) -> Iterator[PrivateRegistry]:
    binary = _install()
    if shutil.which("podman") is None:
        unavailable("podman is not installed (scripts/install-podman.sh)")
    components.docker_url()  # the test image is made by install-podman.sh
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    registry = PrivateRegistry(
        host=f"127.0.0.1:{port}",
        image=f"127.0.0.1:{port}/trainyard/private:{secrets.token_hex(4)}",
        username=REGISTRY_USER,
        password=secrets.token_urlsafe(16),
    )
    _htpasswd(directory / "htpasswd", registry.username, registry.password)
    log = (directory / "registry.log").open("wb")
    process = subprocess.Popen([binary, "serve", str(_config(directory, port))], stdout=log, stderr=log)
    try:
        wait_for_port(port)
        _push_private_image(registry, directory)
        yield registry
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
        remove_local(registry.image)


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


@contextmanager
def registry_engine(directory: Path, registry: PrivateRegistry) -> Iterator[str]:
    """A Podman API service of our own for which `registry` speaks plain HTTP; yields its unix:// URL."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "registries.conf"
    conf.write_text(
        f'unqualified-search-registries = []\n\n[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n'
    )
    sock = directory / "podman.sock"
    env = dict(os.environ, CONTAINERS_REGISTRIES_CONF=str(conf))
    if PODMAN_CONF.exists():
        env["CONTAINERS_CONF"] = str(PODMAN_CONF)
    log = (directory / "podman.log").open("wb")
    process = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"], stdout=log, stderr=log, env=env
    )
    url = f"unix://{sock}"
    try:
        deadline = time.monotonic() + 30
        while not _listening(sock):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the registry test's podman service did not start: see {directory / 'podman.log'}")
            time.sleep(0.2)
        if not components.engine_answers(url):
            raise RuntimeError(f"the registry test's podman service does not answer: see {directory / 'podman.log'}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRegistry]:
    """One private registry per test module that assigns this fixture (`registry = private.registry`)."""
    with private_registry(tmp_path_factory.mktemp("registry")) as found:
        yield found
