"""The spec's volumes, checkpoint interval and container settings: defaults and refusals that name the field."""

from __future__ import annotations

import pytest

from trainyard import datarefs
from trainyard.spec import AttemptReason, SpecError, parse_job_spec


def _problems(**fields: object) -> list[dict[str, str]]:
    with pytest.raises(SpecError) as refused:
        parse_job_spec({"name": "a", "command": "x", **fields})
    return refused.value.problems


def test_volumes_of_each_kind_are_accepted_with_their_defaults() -> None:
    spec = parse_job_spec(
        {
            "name": "a",
            "command": "x",
            "volumes": [
                {"name": "nfs", "kind": "host", "path": "/mnt/nfs", "read_only": True},
                {"name": "ckpt", "kind": "sync", "uri": "s3://bucket/ckpt/", "sync_interval_s": 10},
                {"name": "data", "kind": "blob", "uri": "az://container/imagenet", "mount_path": "/mnt//data/"},
                {"name": "shared", "volume": "team-datasets"},
            ],
        }
    )
    assert [v.job_path for v in spec.volumes] == ["nfs", "ckpt", "/mnt/data", "shared"]
    assert spec.checkpoint_interval_s == 60 and spec.container is None
    assert spec.public_dict()["volumes"][2]["mount_path"] == "/mnt/data"


@pytest.mark.parametrize(
    ("volume", "field", "reason"),
    [
        ({"name": "d", "kind": "host"}, "volumes[0]", "needs `path`"),
        ({"name": "d", "kind": "host", "path": "rel/dir"}, "volumes[0]", "absolute directory"),
        ({"name": "d", "kind": "blob", "uri": "file:///x"}, "volumes[0]", "s3://bucket"),
        ({"name": "d", "kind": "sync"}, "volumes[0]", "needs `uri`"),
        ({"name": "d", "kind": "nfs", "path": "/x"}, "volumes[0].kind", "'host', 'sync' or 'blob'"),
        ({"name": "d"}, "volumes[0]", "needs `kind`"),
        ({"name": "d", "volume": "v", "kind": "host", "path": "/x"}, "volumes[0]", "from the registration"),
        ({"name": "1d", "kind": "host", "path": "/x"}, "volumes[0].name", "start with a letter"),
        (
            {"name": "d", "kind": "host", "path": "/x", "mount_path": "/etc"},
            "volumes[0].mount_path",
            "system directory",
        ),
        ({"name": "d", "kind": "host", "path": "/x", "mount_path": "../up"}, "volumes[0].mount_path", "'..'"),
        ({"name": "d", "kind": "blob", "uri": "s3://b/x", "sync_interval_s": 5}, "volumes[0]", "sync volumes only"),
        ({"name": "d", "kind": "host", "path": "/x", "extra": 1}, "volumes[0].extra", "unknown field"),
    ],
)
def test_bad_volumes_are_refused_naming_the_field(volume: dict[str, object], field: str, reason: str) -> None:
    problems = _problems(volumes=[volume])
    assert any(p["field"] == field and reason in p["reason"] for p in problems), problems


def test_two_volumes_may_not_share_a_name_or_a_mount_path() -> None:
    assert (
        "duplicate name D"
        in _problems(
            volumes=[{"name": "d", "kind": "host", "path": "/a"}, {"name": "D", "kind": "host", "path": "/b"}]
        )[0]["reason"]
    )
    nested = _problems(
        volumes=[
            {"name": "a", "kind": "host", "path": "/a", "mount_path": "/mnt/x"},
            {"name": "b", "kind": "host", "path": "/b", "mount_path": "/mnt/x/y"},
        ]
    )
    assert "overlap" in nested[0]["reason"]


def test_volume_uris_inside_trainyards_own_store_are_refused_at_submit() -> None:
    spec = parse_job_spec(
        {
            "name": "a",
            "command": "x",
            "volumes": [{"name": "d", "kind": "sync", "uri": "s3://cluster/trainyard/checkpoints/other-job"}],
        }
    )
    problems = datarefs.spec_problems(spec, "s3://cluster/trainyard")
    assert problems == [{"field": "volumes[0].uri", "reason": problems[0]["reason"]}]
    assert "own store" in problems[0]["reason"]


def test_checkpoint_interval_is_bounded() -> None:
    assert parse_job_spec({"name": "a", "command": "x", "checkpoint_interval_s": 2}).checkpoint_interval_s == 2
    assert _problems(checkpoint_interval_s=0)[0]["field"] == "checkpoint_interval_s"


def test_container_settings_default_to_a_large_shm_and_need_an_image() -> None:
    spec = parse_job_spec({"name": "a", "command": "x", "image": "img", "container": {}})
    assert spec.container is not None and spec.container.shm_size_bytes == 2 * 10**9
    assert "with `image:` only" in _problems(container={"shm_size": "1g"})[0]["reason"]


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"shm_size": "lots"}, "container.shm_size"),
        ({"ipc": "none-such"}, "container.ipc"),
        ({"ulimits": {"files": 10}}, "container.ulimits"),
        ({"ulimits": {"memlock": "unlimited"}}, "container.ulimits"),
        ({"devices": ["/dev/sda"]}, "container.devices"),
        ({"devices": ["/dev/infiniband/../mem"]}, "container.devices"),
        ({"privileged": True}, "container.privileged"),
    ],
)
def test_bad_container_settings_are_refused(settings: dict[str, object], field: str) -> None:
    assert _problems(image="img", container=settings)[0]["field"] == field


def test_container_settings_that_fit_are_kept() -> None:
    spec = parse_job_spec(
        {
            "name": "a",
            "command": "x",
            "image": "img",
            "container": {
                "shm_size": "16Gi",
                "ipc": "host",
                "ulimits": {"memlock": -1, "nofile": "65536:65536"},
                "devices": ["/dev/infiniband", "/dev/nvidia0:/dev/nvidia0:rw"],
            },
        }
    )
    assert spec.container is not None and spec.container.ulimits == {"memlock": -1, "nofile": "65536:65536"}


def test_mount_failed_is_an_attempt_reason() -> None:
    assert AttemptReason("mount_failed") is AttemptReason.MOUNT_FAILED
