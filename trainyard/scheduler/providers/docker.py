"""Docker provider: worker containers through the Docker Engine API (Docker or Podman's service).

Containers are labelled with their pool and node id, so any scheduler finds them again. The
image is the worker image of docker/Dockerfile.worker (TRAINYARD_WORKER_IMAGE); the containers
join TRAINYARD_DOCKER_NETWORK when set (the compose network, say) and get the scheduler's
TRAINYARD_* and storage variables. Never privileged; no engine socket is mounted into them.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from trainyard.config import load_settings
from trainyard.scheduler.providers.base import NodeProvider, ProviderNode

POOL_LABEL = "trainyard.pool"
NODE_LABEL = "trainyard.node"
PASSED_PREFIXES = ("TRAINYARD_", "AZURE_STORAGE_", "AWS_")
STOP_TIMEOUT_S = 10


def worker_environment(env: dict[str, str]) -> dict[str, str]:
    """What a worker container needs of the scheduler's environment (not TRAINYARD_HOME: its own)."""
    return {k: v for k, v in env.items() if k.startswith(PASSED_PREFIXES) and k != "TRAINYARD_HOME"}


def _sdk(module: str = "docker") -> Any:
    # By name: the repository's own docker/ folder would shadow the SDK for the type checker.
    return importlib.import_module(module)


class DockerProvider(NodeProvider):
    """One container per node, named `trainyard-<node_id>`."""

    name = "docker"

    def __init__(
        self,
        base_url: str | None = None,
        image: str | None = None,
        network: str | None = None,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        docker = _sdk()
        env_source = dict(os.environ if env is None else env)
        settings = load_settings(env_source)  # docker_url, worker_image, docker_network
        url = base_url or settings.docker_url or env_source.get("DOCKER_HOST")
        self.client: Any = docker.DockerClient(base_url=url) if url else docker.from_env()
        self.image = image or settings.worker_image
        self.network = network or settings.docker_network
        self.command = command  # a stand-in for tests; default: `trainyard worker ...`
        self.env = worker_environment(env_source)

    def _worker_command(self, pool: str, node_id: str, slots: int, gpus: int) -> list[str]:
        return [
            "worker",
            "--pool",
            pool,
            "--node-id",
            node_id,
            "--address",
            node_id,
            "--slots",
            str(slots),
            "--gpus",
            str(gpus),
        ]

    def start_node(self, pool: str, node_id: str, slots: int, gpus: int) -> ProviderNode:
        options: dict[str, Any] = {
            "name": f"trainyard-{node_id}",
            "hostname": node_id,
            "detach": True,
            "labels": {POOL_LABEL: pool, NODE_LABEL: node_id},
            "environment": self.env,
            "privileged": False,
            "security_opt": ["no-new-privileges"],
        }
        if self.network:
            # The node id as a DNS name on that network (the container's hostname is not one):
            # gang peers reach the node at the address it registers.
            options["network"] = self.network
            options["networking_config"] = {self.network: self.client.api.create_endpoint_config(aliases=[node_id])}
        if gpus:
            options["device_requests"] = [_sdk("docker.types").DeviceRequest(count=gpus, capabilities=[["gpu"]])]
        command = self.command or self._worker_command(pool, node_id, slots, gpus)
        self.client.containers.run(self.image, command, **options)
        return ProviderNode(node_id=node_id, pool=pool, address=node_id)

    def stop_node(self, node_id: str) -> None:
        try:
            container = self.client.containers.get(f"trainyard-{node_id}")
        except _sdk("docker.errors").NotFound:
            return
        try:
            container.stop(timeout=STOP_TIMEOUT_S)
        finally:
            container.remove(force=True)

    def list_nodes(self, pool: str) -> list[ProviderNode]:
        containers = self.client.containers.list(filters={"label": f"{POOL_LABEL}={pool}"})
        return [ProviderNode(node_id=c.labels[NODE_LABEL], pool=pool, address=c.labels[NODE_LABEL]) for c in containers]
