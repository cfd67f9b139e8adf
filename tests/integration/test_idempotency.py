"""Idempotent submission under concurrency: many clients, few keys, exactly one job per key."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from trainyard.client import Client, Conflict
from trainyard.up import Cluster

pytestmark = pytest.mark.integration


def test_a_thousand_concurrent_submissions_over_a_hundred_keys_create_a_hundred_jobs(cluster: Cluster) -> None:
    tag = f"idem-{id(cluster)}-{cluster.api_url.rsplit(':', 1)[-1]}"

    def submit(index: int) -> str:
        with Client(api_url=cluster.api_url, token=cluster.admin_token) as client:
            key = f"{tag}-{index % 100}"
            return client.submit({"name": key, "experiment": "idem", "command": "true", "idempotency_key": key}).id

    with ThreadPoolExecutor(max_workers=32) as pool:
        ids = list(pool.map(submit, range(1000)))
    by_key: dict[int, set[str]] = {}
    for index, job_id in enumerate(ids):
        by_key.setdefault(index % 100, set()).add(job_id)
    assert all(len(found) == 1 for found in by_key.values())
    assert len(set(ids)) == 100
    with Client(api_url=cluster.api_url, token=cluster.admin_token) as client:
        stored = [j for j in client.jobs(experiment="idem", limit=100_000) if j.name.startswith(tag)]
        assert len(stored) == 100
        with pytest.raises(Conflict):
            client.submit({"name": f"{tag}-0", "experiment": "idem", "command": "false", "idempotency_key": f"{tag}-0"})
