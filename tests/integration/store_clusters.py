"""A small real cluster whose blob store is a local directory, a moto S3 server or an Azurite server.

Each cluster has its own home, SQLite database, embedded Redis and blob server, so tests that stop
the store or fill a node's spool touch nothing else.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.services import BlobServer
from trainyard.client import Client
from trainyard.storage_adapters import Storage, open_storage
from trainyard.up import Cluster, start_cluster

STORES = ("file", "s3", "az")
SERVER_KIND = {"s3": "moto", "az": "azurite"}


@dataclass
class StoreCluster:
    store: str
    cluster: Cluster
    client: Client
    storage_url: str
    server: BlobServer | None = None
    env: dict[str, str] = field(default_factory=dict)

    def storage(self, url: str | None = None) -> Storage:
        """An adapter on the cluster's store (or another root on the same server)."""
        return open_storage(url or self.storage_url)

    def new_root(self, tmp_path: Path) -> str:
        """A fresh root URL on this cluster's kind of store, for a job's inputs and outputs."""
        if self.server is None:
            return f"file://{tmp_path / uuid.uuid4().hex[:8]}"
        return self.server.create_root(f"data-{uuid.uuid4().hex[:12]}")

    def cli_env(self) -> dict[str, str]:
        return dict(
            os.environ,
            TRAINYARD_API_URL=self.cluster.api_url,
            TRAINYARD_TOKEN=self.cluster.admin_token,
            TRAINYARD_HOME=str(self.cluster.home),
            **self.env,
        )


def _isolated_cloud_env(tmp: Path) -> dict[str, str]:
    # A developer's own AWS/Azure set-up must not leak into the cluster.
    return {"AWS_CONFIG_FILE": str(tmp / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-creds")}


@contextmanager
def store_cluster(
    store: str,
    tmp: Path,
    workers: int = 1,
    slots: int = 4,
    extra_env: dict[str, str] | None = None,
    server: BlobServer | None = None,
) -> Iterator[StoreCluster]:
    """Start the blob server (unless given), a cluster on it, and set the client-side variables."""
    own_server = server is None and store != "file"
    if own_server:
        server = BlobServer(SERVER_KIND[store], tmp / "blobserver")
        server.start()
    try:
        env = _isolated_cloud_env(tmp)
        if server is None:
            storage_url = f"file://{tmp / 'blobs'}"
        else:
            env.update(server.environment())
            storage_url = server.create_root(f"cluster-{uuid.uuid4().hex[:12]}") + "/trainyard"
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            cluster = start_cluster(
                workers=workers,
                slots=slots,
                home=tmp / "home",
                extra_env={
                    "TRAINYARD_STORAGE_URL": storage_url,
                    "TRAINYARD_REDIS_URL": "",
                    "TRAINYARD_DATABASE_URL": "",
                    "TRAINYARD_ADMIN_TOKEN": "",
                    "TRAINYARD_SECRET_KEY": "",
                    **env,
                    **(extra_env or {}),
                },
            )
            try:
                with Client(api_url=cluster.api_url, token=cluster.admin_token) as client:
                    yield StoreCluster(store, cluster, client, storage_url, server, env)
            finally:
                cluster.stop()
    finally:
        if own_server and server is not None:
            server.stop()
