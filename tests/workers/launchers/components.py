"""The real components the launcher tests need (Open MPI + mpi4py, Ray, torch, a container engine), found or refused.

A missing component fails the test under CI=true and skips it elsewhere (tests/services.py). The
Makefile's test target installs them first: scripts/install-mpi.sh, scripts/install-intel-mpi.sh
(Intel MPI in a prefix of its own, off PATH), scripts/install-podman.sh and the `launchers` extra.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from tests.services import unavailable

ROOT = Path(__file__).resolve().parents[3]
PODMAN_SOCKET = ROOT / ".test-services" / "podman" / "podman.sock"
# scripts/install-intel-mpi.sh's prefix: never on the default PATH (Open MPI stays every other test's mpirun).
INTEL_MPI_PREFIX = Path(os.environ.get("INTEL_MPI_PREFIX", ROOT / ".test-services" / "intel-mpi"))
TEST_IMAGE = "localhost/trainyard-test:busybox"


def require_mpi() -> None:
    if shutil.which("mpirun") is None:
        unavailable("Open MPI is not installed (scripts/install-mpi.sh)")
    if importlib.util.find_spec("mpi4py") is None:
        unavailable("mpi4py is not installed (scripts/install-mpi.sh)")


def require_intel_mpi() -> dict[str, str]:
    """The job variables that put Intel MPI (impi-rt) first for one job: PATH and LD_LIBRARY_PATH."""
    if not (INTEL_MPI_PREFIX / "bin" / "mpirun").exists():
        unavailable(f"Intel MPI is not installed in {INTEL_MPI_PREFIX} (scripts/install-intel-mpi.sh)")
    library_path = os.environ.get("LD_LIBRARY_PATH")
    return {
        "PATH": f"{INTEL_MPI_PREFIX / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "LD_LIBRARY_PATH": f"{INTEL_MPI_PREFIX / 'lib'}" + (f":{library_path}" if library_path else ""),
    }


def require_ray() -> None:
    if importlib.util.find_spec("ray") is None:
        unavailable("Ray is not installed (pip install -e '.[ray]')")


def require_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        unavailable("torch is not installed (pip install torch==2.13.0)")


def require(launcher: str) -> None:
    if launcher in ("mpi", "horovod"):
        require_mpi()
    elif launcher == "ray":
        require_ray()
    elif launcher == "torchrun":
        require_torch()


def docker_url() -> str:
    """The engine for container tests: TRAINYARD_TEST_DOCKER_URL, DOCKER_HOST, or the Podman service the
    install script starts (started here when Podman is installed but its service is not running)."""
    url = os.environ.get("TRAINYARD_TEST_DOCKER_URL") or os.environ.get("DOCKER_HOST")
    if url:
        return url
    if not engine_answers(f"unix://{PODMAN_SOCKET}") and shutil.which("podman"):
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "install-podman.sh")], check=False, capture_output=True, timeout=300
        )
    if not engine_answers(f"unix://{PODMAN_SOCKET}"):
        unavailable("no container engine: run scripts/install-podman.sh (Podman's Docker API service)")
    return f"unix://{PODMAN_SOCKET}"


def cluster_docker_url() -> str | None:
    """What a test cluster's nodes get as TRAINYARD_DOCKER_URL: the configured engine, or the Podman
    service when it answers; None when there is none (container jobs then fail; their tests call
    docker_url() first, which skips or fails them)."""
    url = os.environ.get("TRAINYARD_TEST_DOCKER_URL") or os.environ.get("DOCKER_HOST")
    engine = f"unix://{PODMAN_SOCKET}"
    return url or (engine if engine_answers(engine) else None)


def engine_answers(url: str) -> bool:
    try:
        import importlib

        # Imported by name: the repository's docker/ folder would shadow the SDK for mypy.
        docker = importlib.import_module("docker")
        client = docker.DockerClient(base_url=url, timeout=5)
        try:
            client.ping()
            client.images.get(TEST_IMAGE)
        finally:
            client.close()
        return True
    except Exception:
        return False
