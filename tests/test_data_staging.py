"""Data staging pieces on local and memory stores: code packing, safe walks, checkpoints, inputs, URIs."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from tests.logs_helpers import SwitchableStorage
from trainyard import codepack, datarefs
from trainyard.spec import parse_job_spec
from trainyard.storage_adapters import open_storage
from trainyard.workers import checkpoints, staging
from trainyard.workers.transfer import Refused, TransferFailed, download_tree, walk_files

FAR_FUTURE = time.monotonic() + 60


def _tree(root: Path) -> None:
    (root / "pkg").mkdir(parents=True)
    (root / "main.py").write_text("print('hi')\n")
    (root / "pkg" / "mod.py").write_text("X = 1\n")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\x00")


@pytest.fixture(params=["data-filter", "checked-members"])
def unpacking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways codepack.unpack works: tarfile's `data` filter, and the checks of its own made
    where Python predates the filter (3.11.2, Debian 12's python3: the Debian-based images)."""
    if request.param == "checked-members":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)


@pytest.mark.usefixtures("unpacking")
def test_packing_the_same_tree_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        _tree(tmp_path / name)
    os.utime(tmp_path / "b" / "main.py", (1_000_000, 1_000_000))
    (tmp_path / "b" / "pkg" / "mod.py").chmod(0o600)
    first = codepack.pack_to_file(tmp_path / "a", tmp_path / "a.tgz")
    second = codepack.pack_to_file(tmp_path / "b", tmp_path / "b.tgz")
    assert first == second
    codepack.unpack(tmp_path / "a.tgz", tmp_path / "out")
    assert (tmp_path / "out" / "pkg" / "mod.py").read_text() == "X = 1\n"
    assert os.access(tmp_path / "out" / "run.sh", os.X_OK)
    assert not (tmp_path / "out" / "pkg" / "__pycache__").exists()


def _evil_archive(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> None:
    with tarfile.open(path, "w:gz") as archive:
        archive.addfile(member, io.BytesIO(data) if member.isreg() else None)


@pytest.mark.parametrize(
    "make",
    [
        lambda: tarfile.TarInfo("../escaped.txt"),
        lambda: _link("up", "../../.."),
        lambda: _link("passwd", "/etc/passwd"),
    ],
)
@pytest.mark.usefixtures("unpacking")
def test_unpacking_refuses_members_that_would_land_outside(tmp_path: Path, make: object) -> None:
    member: tarfile.TarInfo = make()  # type: ignore[operator]
    if member.type == tarfile.REGTYPE:
        member.size = 4
    _evil_archive(tmp_path / "evil.tgz", member, b"evil")
    with pytest.raises(tarfile.TarError):
        codepack.unpack(tmp_path / "evil.tgz", tmp_path / "dest" / "inner")
    assert not (tmp_path / "dest" / "escaped.txt").exists()


@pytest.mark.usefixtures("unpacking")
def test_an_absolute_member_is_unpacked_below_the_directory(tmp_path: Path) -> None:
    member = tarfile.TarInfo(str(tmp_path / "absolute.txt"))
    member.size = 4
    _evil_archive(tmp_path / "abs.tgz", member, b"abso")
    codepack.unpack(tmp_path / "abs.tgz", tmp_path / "dest")
    assert not (tmp_path / "absolute.txt").exists()
    assert (tmp_path / "dest" / str(tmp_path).lstrip("/") / "absolute.txt").read_bytes() == b"abso"


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def test_walking_outputs_refuses_links_out_special_files_and_unstorable_names(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "real.txt").write_text("real")
    (out / "inside").symlink_to("sub/real.txt")
    (out / "passwd").symlink_to("/etc/passwd")
    (out / "up").symlink_to("../..")
    (out / "dirlink").symlink_to("sub")
    (out / "dangling").symlink_to("nowhere")
    os.mkfifo(out / "fifo")
    (out / "back\\slash").write_text("x")
    (out / "new\nline").write_text("x")
    found = list(walk_files(out))
    accepted = {item[0]: item[1] for item in found if not isinstance(item, Refused)}
    refused = {item.path: item.reason for item in found if isinstance(item, Refused)}
    assert accepted == {"inside": (out / "sub" / "real.txt").resolve(), "sub/real.txt": out / "sub" / "real.txt"}
    assert refused["passwd"] == refused["up"] == "a symlink pointing outside the directory"
    assert refused["dirlink"] == refused["dangling"] == "a symlink to a directory or to nothing"
    assert refused["fifo"] == "not a regular file"
    assert refused["back\\slash"] == "a name no store can hold"
    assert len(refused) == 7


def test_a_checkpoint_round_trips_skips_unchanged_files_and_refuses_a_stale_attempt(tmp_path: Path) -> None:
    store = SwitchableStorage()
    src = tmp_path / "ckpt"
    (src / "nested").mkdir(parents=True)
    (src / "model.bin").write_bytes(os.urandom(100_000))
    (src / "nested" / "step.txt").write_text("1")
    saved = checkpoints.save(store, "job", 1, 0, src, FAR_FUTURE)
    assert saved is not None and saved["files"] == 2
    restored_dir = tmp_path / "restored"
    assert checkpoints.restore(store, "job", 0, restored_dir, FAR_FUTURE) == saved
    assert (restored_dir / "model.bin").read_bytes() == (src / "model.bin").read_bytes()
    (src / "nested" / "step.txt").write_text("2")
    puts_before = len(store.puts)
    checkpoints.save(store, "job", 2, 0, src, FAR_FUTURE)
    new_objects = [key for key, _ in store.puts[puts_before:] if "/objects/" in key]
    assert len(new_objects) == 1, "the unchanged 100 kB model was not sent again"
    assert checkpoints.save(store, "job", 1, 0, tmp_path / "empty", FAR_FUTURE) is None, "attempt 1 < 2: refused"
    objects = [i.key for i in store.inner.list("checkpoints/job/0/objects/")]
    assert len(objects) == 2, "the replaced step.txt object was deleted"
    assert checkpoints.restore(store, "job", 1, tmp_path / "rank1", FAR_FUTURE) is None


def test_inputs_are_an_object_a_prefix_or_a_name_with_objects_under_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "tree" / "sub").mkdir(parents=True)
    (data / "one.txt").write_text("one")
    (data / "tree" / "a.txt").write_text("a")
    (data / "tree" / "sub" / "b.txt").write_text("b")
    single = staging._stage_input("one", f"file://{data}/one.txt", tmp_path / "in1")
    assert Path(single["local_path"]).read_text() == "one" and single["files"] == 1
    for uri in (f"file://{data}/tree/", f"file://{data}/tree"):
        tree = staging._stage_input("t", uri, tmp_path / "in2" / uri[-1])
        assert (Path(tree["local_path"]) / "sub" / "b.txt").read_text() == "b" and tree["files"] == 2
    with pytest.raises(staging.StagingError, match="nothing found"):
        staging._stage_input("gone", f"file://{data}/missing", tmp_path / "in3")


def test_an_input_object_whose_name_climbs_out_is_refused(tmp_path: Path) -> None:
    store = open_storage("memory://climb")
    store.put("in/ok.txt", b"ok")
    # Keys are checked by our adapters, but S3 and Azure accept such names: simulate one listed.
    store._objects["in/../../escape.txt"] = b"x"  # type: ignore[attr-defined]
    with pytest.raises(TransferFailed, match="would leave the directory"):
        download_tree(store, "in/", tmp_path / "dest", FAR_FUTURE)
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("code", "./src", "packed and uploaded by the CLI/SDK"),
        ("code", "trainyard-code://sha256:abc", "not a storage URI"),
        ("inputs", [{"id": "d", "uri": "relative/path"}], "not a storage URI"),
        ("inputs", [{"id": "d", "uri": "file://relative"}], "absolute path"),
        ("outputs", [{"id": "o", "uri": "http://example.com/x"}], "not a storage URI"),
        ("outputs", [{"id": "o", "uri": "s3:///no-bucket"}], "names no bucket"),
    ],
)
def test_data_references_the_api_refuses(field: str, value: object, problem: str) -> None:
    spec = parse_job_spec({"name": "x", "command": "true", field: value})
    problems = datarefs.spec_problems(spec)
    assert problems and problem in problems[0]["reason"], problems


def test_data_references_the_api_accepts() -> None:
    spec = parse_job_spec(
        {
            "name": "x",
            "command": "true",
            "code": datarefs.code_uri("a" * 64),
            "inputs": [{"id": "d", "uri": "s3://bucket/data/"}, {"id": "e", "uri": "file:///data"}],
            "outputs": [{"id": "o", "uri": "az://container/results"}],
        }
    )
    assert datarefs.spec_problems(spec) == []


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/abs", "a\\b", "a//b", "./a", "a/.", "", "nul\x00", "tab\tx"])
def test_unsafe_relative_paths(path: str) -> None:
    assert not datarefs.safe_relpath(path)


@pytest.mark.parametrize(
    ("uri", "cluster", "expected"),
    [
        ("s3://bucket/trainyard/logs/j1/", "s3://bucket/trainyard", True),  # inside: could overwrite logs
        ("s3://bucket/", "s3://bucket/trainyard", True),  # contains it: could read it all
        ("s3://bucket", "s3://bucket/trainyard", True),
        ("s3://bucket/trainyard-data/x", "s3://bucket/trainyard", False),  # a sibling that shares a prefix
        ("s3://other/trainyard/x", "s3://bucket/trainyard", False),
        ("az://c/trainyard", "az://c/trainyard/", True),
        ("file:///srv/blobs/code/x.tar.gz", "file:///srv/blobs", True),
        ("file:///srv/data", "file:///srv/blobs", False),
    ],
)
def test_data_uris_may_not_overlap_the_cluster_store(uri: str, cluster: str, expected: bool) -> None:
    assert datarefs.overlaps(uri, cluster) is expected
    spec = parse_job_spec({"name": "x", "command": "true", "outputs": [{"id": "o", "uri": uri}]})
    assert bool(datarefs.spec_problems(spec, cluster)) is expected
