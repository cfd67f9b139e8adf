"""Node providers: who starts and stops the worker nodes of an autoscaled pool (local, docker)."""

from __future__ import annotations

from trainyard.scheduler.providers.base import NodeProvider, ProviderNode

__all__ = ["NodeProvider", "ProviderNode", "make_provider"]


def make_provider(kind: str) -> NodeProvider:
    """The provider named in a pool's settings (`local` or `docker`)."""
    if kind == "local":
        from trainyard.scheduler.providers.local import LocalProvider

        return LocalProvider()
    if kind == "docker":
        from trainyard.scheduler.providers.docker import DockerProvider

        return DockerProvider()
    raise ValueError(f"unknown node provider {kind!r} (local or docker)")
