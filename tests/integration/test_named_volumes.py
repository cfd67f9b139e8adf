"""Named volumes: registered once (CLI, /v1/volumes), named by job specs, scoped to their workspace."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from trainyard.client import Client, SpecRejected
from trainyard.up import Cluster

pytestmark = pytest.mark.integration

TRAINYARD = [sys.executable, "-m", "trainyard"]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TRAINYARD, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_volume_create_list_delete_from_the_cli(cli_env: dict[str, str], tmp_path: Path) -> None:
    name = f"ds-{uuid.uuid4().hex[:8]}"
    created = _cli(
        cli_env, "volume", "create", name, "--kind", "host", "--path", str(tmp_path), "--read-only", "--json"
    )
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["read_only"] is True
    listed = json.loads(_cli(cli_env, "volume", "list", "--json").stdout)
    assert {"name": name, "kind": "host", "path": str(tmp_path)}.items() <= next(
        v for v in listed if v["name"] == name
    ).items()
    again = _cli(cli_env, "volume", "create", name, "--kind", "host", "--path", str(tmp_path))
    assert again.returncode == 1 and "already exists" in again.stderr + again.stdout
    bad = _cli(cli_env, "volume", "create", "x", "--kind", "blob", "--uri", "file:///tmp/x")
    assert bad.returncode == 2 and "s3://bucket" in bad.stderr + bad.stdout
    assert _cli(cli_env, "volume", "delete", name).returncode == 0
    assert name not in {v["name"] for v in json.loads(_cli(cli_env, "volume", "list", "--json").stdout)}


def test_a_job_names_a_registered_volume_and_sees_it_resolved(client: Client, tmp_path: Path) -> None:
    name = f"ref-{uuid.uuid4().hex[:8]}"
    (tmp_path / "labels.txt").write_text("cat,dog\n")
    client.create_volume({"name": name, "kind": "host", "path": str(tmp_path), "read_only": True})
    job = client.submit(
        {
            "name": "named-volume",
            "max_retries": 0,
            "volumes": [{"name": "labels", "volume": name, "mount_path": "lbl"}],
            "command": 'cat lbl/labels.txt "$TRAINYARD_VOLUME_LABELS/labels.txt"',
        }
    )
    assert job.wait(timeout=60) == "succeeded"
    assert job.log_bytes() == b"cat,dog\ncat,dog\n"
    stored = job.data["spec"]["volumes"][0]  # what the nodes were sent: the registration, resolved
    assert (stored["kind"], stored["path"], stored["volume"], stored["read_only"]) == (
        "host",
        str(tmp_path),
        None,
        True,
    )


def test_unknown_and_other_workspaces_volumes_are_refused_at_submit(client: Client, cluster: Cluster) -> None:
    name = f"private-{uuid.uuid4().hex[:8]}"
    client.create_volume({"name": name, "kind": "host", "path": "/srv/a", "workspace": "vol-a"})
    for workspace in ("vol-a", "vol-b"):
        spec = {
            "name": "uses-volume",
            "workspace": workspace,
            "command": "true",
            "volumes": [{"name": "d", "volume": "no-such" if workspace == "vol-a" else name}],
        }
        with pytest.raises(SpecRejected) as refused:
            client.submit(spec)
        assert "volumes[0].volume" in str(refused.value.detail)
    token = httpx.post(
        f"{cluster.api_url}/v1/tokens",
        json={"role": "user", "workspace": "vol-b"},
        headers={"Authorization": f"Bearer {cluster.admin_token}"},
    ).json()["token"]
    with Client(api_url=cluster.api_url, token=token) as other:
        assert name not in {v["name"] for v in other.volumes()}
        assert name not in {v["name"] for v in other.volumes("vol-b")}
    assert name in {v["name"] for v in client.volumes("vol-a")}


def test_a_sweep_template_names_a_registered_volume_and_every_point_sees_it(client: Client, tmp_path: Path) -> None:
    name = f"sweep-{uuid.uuid4().hex[:8]}"
    (tmp_path / "base.txt").write_text("base")
    client.create_volume({"name": name, "kind": "host", "path": str(tmp_path)})
    sweep = client.sweep(
        {
            "name": "vol-sweep-{x}",
            "command": 'cat "$TRAINYARD_VOLUME_D/base.txt"; echo " {x}"',
            "volumes": [{"name": "d", "volume": name}],
            "max_retries": 0,
        },
        grid={"x": [1, 2]},
    )
    jobs = sweep.jobs()
    assert len(jobs) == 2
    for job in jobs:
        assert job.wait(timeout=60) == "succeeded"
        assert job.log_bytes() in (b"base 1\n", b"base 2\n")
        assert job.data["spec"]["volumes"][0]["path"] == str(tmp_path)
    with pytest.raises(SpecRejected, match=r"template\.volumes\[0\]\.volume"):
        client.sweep(
            {"name": "bad-{x}", "command": "true", "volumes": [{"name": "d", "volume": "absent"}]}, grid={"x": [1]}
        )
