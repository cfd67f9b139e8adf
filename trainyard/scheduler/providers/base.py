"""The node provider interface: start, stop and list the worker nodes a provider runs for a pool."""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class ProviderNode:
    """A worker node a provider started (it registers with the scheduler under `node_id`)."""

    node_id: str
    pool: str
    address: str
    running: bool = True


class NodeProvider(abc.ABC):
    """Starts and stops `trainyard worker` nodes; the seam for cloud VMs later."""

    name: str = "abstract"

    @abc.abstractmethod
    def start_node(self, pool: str, node_id: str, slots: int, gpus: int) -> ProviderNode:
        """Start a worker that joins `pool` as `node_id`; returns at once (it registers later)."""

    @abc.abstractmethod
    def stop_node(self, node_id: str) -> None:
        """Stop that worker (SIGTERM, then kill); no error when it is already gone."""

    @abc.abstractmethod
    def list_nodes(self, pool: str) -> list[ProviderNode]:
        """The nodes this provider runs for `pool` that are still alive."""

    def stop_all(self, pool: str) -> None:
        for node in self.list_nodes(pool):
            self.stop_node(node.node_id)
