"""Logs, inputs, outputs, code and checkpoints on every kind of store, through a real cluster each.

One small cluster per store (local directory, moto S3, Azurite), shared by the module's tests.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.store_clusters import STORES, StoreCluster, store_cluster
from trainyard import datarefs

pytestmark = pytest.mark.integration

LIVE_LAG_LIMIT_S = 2.0
TRAINYARD = [sys.executable, "-m", "trainyard"]


@pytest.fixture(scope="module", params=STORES)
def on_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreCluster]:
    with store_cluster(request.param, tmp_path_factory.mktemp(f"store-{request.param}")) as started:
        yield started


# -- logs ------------------------------------------------------------------------------------


def test_stdout_is_readable_within_two_seconds_while_the_job_runs(on_store: StoreCluster) -> None:
    # Each line carries the time it was printed; the follower notes when it arrived.
    script = "import time\nfor i in range(25):\n    print(f'{i} {time.time():.6f}')\n    time.sleep(0.2)\n"
    job = on_store.client.submit({"name": f"live-{on_store.store}", "command": ["python3", "-c", script]})
    lags, lines = [], []
    for line in job.logs(follow=True):
        arrived = time.time()
        number, printed = line.split()
        lines.append(int(number))
        lags.append(arrived - float(printed))
    assert lines == list(range(25))
    assert job.wait(timeout=60) == "succeeded"
    assert max(lags) < LIVE_LAG_LIMIT_S, f"{on_store.store}: lags {sorted(lags)[-3:]}"


def test_every_attempt_keeps_its_own_streams(on_store: StoreCluster) -> None:
    job = on_store.client.submit(
        {
            "name": f"attempts-{on_store.store}",
            "max_retries": 1,
            "command": (
                'echo "out $TRAINYARD_ATTEMPT"; echo "err $TRAINYARD_ATTEMPT" >&2; test "$TRAINYARD_ATTEMPT" = 2'
            ),
        }
    )
    assert job.wait(timeout=90) == "succeeded"
    for attempt in (1, 2):
        assert job.log_bytes(attempt=attempt) == f"out {attempt}\n".encode()
        assert job.log_bytes(attempt=attempt, stream="stderr") == f"err {attempt}\n".encode()
    keys = [info.key for info in on_store.storage().list(f"logs/{job.id}/")]
    assert {key.rsplit("/", 1)[0] for key in keys} == {
        f"logs/{job.id}/{a}/0/{s}" for a in (1, 2) for s in ("stdout", "stderr")
    }


def test_a_large_output_reads_back_byte_exact_from_any_offset(on_store: StoreCluster) -> None:
    script = "import sys\nfor i in range(200000):\n    sys.stdout.write(f'{i:08d} ' + 'x' * 40 + '\\n')\n"
    job = on_store.client.submit({"name": f"bulk-{on_store.store}", "command": ["python3", "-c", script]})
    assert job.wait(timeout=120) == "succeeded"
    expected = b"".join(f"{i:08d} ".encode() + b"x" * 40 + b"\n" for i in range(200000))
    assert job.log_bytes() == expected
    middle = 5_000_001
    assert b"".join(on_store.client.log_chunks(job.id, offset=middle)) == expected[middle:]


# -- inputs, outputs, code -------------------------------------------------------------------

CODE_MAIN = """
import hashlib, json, os, pathlib
from helpers.util import double
one = pathlib.Path(os.environ["TRAINYARD_INPUT_ONE"])
tree = pathlib.Path(os.environ["TRAINYARD_INPUT_TREE"])
out = pathlib.Path(os.environ["TRAINYARD_OUTPUT_RESULTS"])
seen = {p.relative_to(tree).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(tree.rglob("*")) if p.is_file()}
print(json.dumps({"one": one.read_text(), "tree": seen, "double": double(21), "cwd": os.listdir(".")}))
(out / "model").mkdir()
(out / "model" / "weights.bin").write_bytes(bytes(range(256)) * 4000)
(out / "metrics.json").write_text(json.dumps({"loss": 0.5}))
(out / "deep" / "er" / "est").mkdir(parents=True)
(out / "deep" / "er" / "est" / "leaf.txt").write_text("leaf")
os.symlink("/etc/passwd", out / "passwd")
os.symlink("model/weights.bin", out / "weights-link")
"""


def _put_inputs(on_store: StoreCluster, root_url: str) -> dict[str, bytes]:
    store = on_store.storage(root_url)
    objects = {
        "data/one.txt": b"first input\n",
        "data/tree/a.bin": os.urandom(3000),
        "data/tree/sub/b.txt": b"b\n",
        "data/tree/sub/deeper/c.txt": b"c\n",
    }
    for key, data in objects.items():
        store.put(key, data)
    return objects


def _code_dir(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    (code / "helpers").mkdir(parents=True)
    (code / "main.py").write_text(CODE_MAIN)
    (code / "helpers" / "__init__.py").write_text("")
    (code / "helpers" / "util.py").write_text("def double(x):\n    return 2 * x\n")
    return code


def test_inputs_outputs_and_code_round_trip(on_store: StoreCluster, tmp_path: Path) -> None:
    root = on_store.new_root(tmp_path)
    objects = _put_inputs(on_store, root)
    spec = {
        "name": f"data-{on_store.store}",
        "code": str(_code_dir(tmp_path)),
        "command": "python3 main.py",
        "inputs": [{"id": "one", "uri": f"{root}/data/one.txt"}, {"id": "tree", "uri": f"{root}/data/tree/"}],
        "outputs": [{"id": "results", "uri": f"{root}/results/run-1"}],
    }
    job = on_store.client.submit(spec)
    assert job.data["spec"]["code"].startswith("trainyard-code://sha256:")
    assert job.wait(timeout=120) == "succeeded", job.log_bytes(stream="stderr")
    seen = json.loads(job.log_bytes())
    assert seen["one"] == "first input\n" and seen["double"] == 42
    assert seen["tree"] == {
        k.removeprefix("data/tree/"): hashlib.sha256(v).hexdigest()
        for k, v in objects.items()
        if k.startswith("data/tree/")
    }
    assert {"main.py", "helpers"} <= set(seen["cwd"])

    expected = {
        "model/weights.bin": bytes(range(256)) * 4000,
        "metrics.json": b'{"loss": 0.5}',
        "deep/er/est/leaf.txt": b"leaf",
        "weights-link": bytes(range(256)) * 4000,
    }
    listed = {f["path"]: f for f in job.outputs()}
    assert set(listed) == set(expected)
    for path, data in expected.items():
        assert listed[path]["sha256"] == hashlib.sha256(data).hexdigest()
        assert listed[path]["size"] == len(data)
        assert on_store.storage(root).get(f"results/run-1/{path}") == data  # in the user's own store
    assert not any(info.key.endswith("passwd") for info in on_store.storage(root).list("results/"))

    downloaded = job.download(tmp_path / "sdk")
    assert {p.relative_to(tmp_path / "sdk" / "results").as_posix(): p.read_bytes() for p in downloaded} == expected
    cli = subprocess.run(
        [*TRAINYARD, "job", "download", job.id, str(tmp_path / "cli"), "--output", "results"],
        env=on_store.cli_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert (tmp_path / "cli" / "results" / "model" / "weights.bin").read_bytes() == expected["model/weights.bin"]

    (manifest,) = job.manifests()
    assert manifest["job_id"] == job.id and manifest["attempt"] == 1 and manifest["node"] == "node-1"
    assert manifest["code"]["sha256"] == job.data["spec"]["code"].rsplit(":", 1)[1]
    assert {i["id"]: i["files"] for i in manifest["inputs"]} == {"one": 1, "tree": 3}
    assert manifest["inputs"][0]["sha256"] == hashlib.sha256(objects["data/one.txt"]).hexdigest()
    refused = [{"path": "passwd", "reason": "a symlink pointing outside the directory"}]
    assert manifest["outputs"][0]["refused"] == refused
    assert datetime.fromisoformat(manifest["started_at"]) <= datetime.fromisoformat(manifest["ended_at"])
    assert manifest["exit_code"] == 0
    beside = on_store.storage(root).get(f"results/run-1/.trainyard/manifest-{job.id}-1-0.json")
    assert json.loads(beside)["outputs"] == manifest["outputs"]


def test_a_missing_input_fails_the_attempt_before_its_command(on_store: StoreCluster, tmp_path: Path) -> None:
    root = on_store.new_root(tmp_path)
    job = on_store.client.submit(
        {
            "name": "no-input",
            "max_retries": 0,
            "command": "echo ran",
            "inputs": [{"id": "gone", "uri": f"{root}/missing/data"}],
        }
    )
    assert job.wait(timeout=60) == "failed"
    assert job.data["attempts"][0]["reason"] == "prepare_failed"
    assert job.log_bytes() == b""
    assert b"input gone: nothing found" in job.log_bytes(stream="stderr")


def test_the_checkpoint_dir_is_restored_on_the_next_attempt(on_store: StoreCluster) -> None:
    script = (
        'echo "dir=$TRAINYARD_CHECKPOINT_DIR"; cat "$TRAINYARD_CHECKPOINT_DIR/state" 2>/dev/null; '
        'echo "step-$TRAINYARD_ATTEMPT" >> "$TRAINYARD_CHECKPOINT_DIR/state"; test "$TRAINYARD_ATTEMPT" = 3'
    )
    job = on_store.client.submit({"name": f"ckpt-{on_store.store}", "max_retries": 2, "command": script})
    assert job.wait(timeout=120) == "succeeded"
    third = job.log_bytes(attempt=3).decode().splitlines()
    assert third[1:] == ["step-1", "step-2"]
    first_dir = job.log_bytes(attempt=1).decode().splitlines()[0]
    assert first_dir != third[0], "each attempt gets a fresh directory: the state came from the store"
    latest = json.loads(on_store.storage().get(f"checkpoints/{job.id}/0/latest.json"))
    assert latest["attempt"] == 3 and [f["path"] for f in latest["files"]] == ["state"]


# -- traversal -------------------------------------------------------------------------------

ENCODED_PAYLOADS = [
    "..%2f..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%2e%2e/%2e%2e/etc/passwd",
    "%252e%252e%252f%252e%252e%252fetc%252fpasswd",
    "%252e%252e",
    "..%5c..%5c..%5cetc%5cpasswd",
    "%5c%5c..%5cetc%5cpasswd",
    "%2fetc%2fpasswd",
    "..%3b%2f..%3b%2fetc%2fpasswd",
    "..;/..;/etc/passwd",
    "%2e%2e",
    "%2e",
    "passwd",
    "results%2fpasswd",
    "results/passwd",
    "inside.txt",
    "results/inside.txt",
    "%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afetc%c0%afpasswd",
    "..%00",
    "%00",
    "....//....//etc/passwd",
    "0123456789abcdef0123456789abcdef%2f..%2f..%2fetc%2fpasswd",
    "0123456789ABCDEF0123456789ABCDEF",
]
# Dot segments go byte for byte through http.client: httpx would resolve them before sending.
RAW_PAYLOADS = [
    "../../../../etc/passwd",
    "/../../etc/passwd",
    "..\\..\\etc\\passwd",
    "../outputs",
    "./.",
    "..",
    ".",
    ";/../../etc/passwd",
    "results/../../../etc/passwd",
]


def _refused(status: int, body: bytes, secret: bytes) -> bool:
    return status in (400, 404, 422) and secret not in body and b"root:" not in body


def test_output_traversal_payloads_are_all_refused(on_store: StoreCluster, tmp_path: Path) -> None:
    root = on_store.new_root(tmp_path)
    secret = b"secret-" + os.urandom(8).hex().encode()
    job = on_store.client.submit(
        {
            "name": f"traversal-{on_store.store}",
            "outputs": [{"id": "results", "uri": f"{root}/out"}],
            "command": f"printf {secret.decode()} > $TRAINYARD_OUTPUT_RESULTS/inside.txt; "
            "ln -s /etc/passwd $TRAINYARD_OUTPUT_RESULTS/passwd; ln -s ../../.. $TRAINYARD_OUTPUT_RESULTS/up",
        }
    )
    assert job.wait(timeout=60) == "succeeded"
    (inside,) = job.outputs()
    base, auth = on_store.cluster.api_url, {"Authorization": f"Bearer {on_store.cluster.admin_token}"}
    with httpx.Client(base_url=base, headers=auth) as api:
        ok = api.get(f"/v1/jobs/{job.id}/outputs/{inside['key']}")
        assert ok.status_code == 200 and ok.content == secret  # the control: a listed key works
        for payload in ENCODED_PAYLOADS:
            for prefix in (f"/v1/jobs/{job.id}/outputs/", "/v1/jobs/..%2f..%2f/outputs/", f"/v1/jobs/{job.id}/"):
                url = httpx.URL(base).copy_with(raw_path=(prefix + payload).encode())
                reply = api.get(url)
                assert _refused(reply.status_code, reply.content, secret), (prefix + payload, reply.status_code)
    address = urlsplit(base)
    for payload in RAW_PAYLOADS:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
        connection.request("GET", f"/v1/jobs/{job.id}/outputs/{payload}", headers=auth)
        reply = connection.getresponse()
        assert _refused(reply.status, reply.read(), secret), (payload, reply.status)
        connection.close()
    assert datarefs.is_output_key(inside["key"])


def test_a_sweep_template_with_a_code_directory_uploads_it_once(on_store: StoreCluster, tmp_path: Path) -> None:
    code = tmp_path / "sweep-code"
    code.mkdir()
    (code / "train.py").write_text("import sys\nprint('lr', sys.argv[1])\n")
    sweep = on_store.client.sweep(
        {"name": "lr-{lr}", "code": str(code), "command": "python3 train.py {lr}"}, grid={"lr": [0.1, 0.01]}
    )
    assert sweep.wait(timeout=120) == "finished"
    jobs = sweep.jobs()
    assert sorted(job.log_bytes() for job in jobs) == [b"lr 0.01\n", b"lr 0.1\n"]
    codes = {job.refresh().data["spec"]["code"] for job in jobs}
    assert len(codes) == 1 and codes.pop().startswith("trainyard-code://sha256:")


def test_a_data_uri_inside_the_cluster_store_is_refused(on_store: StoreCluster) -> None:
    from trainyard.client import SpecRejected

    inside = on_store.storage_url + "/logs/someone-else/"
    with pytest.raises(SpecRejected) as refused:
        on_store.client.submit(
            {
                "name": "snoop",
                "command": "true",
                "inputs": [{"id": "a", "uri": inside}],
                "outputs": [{"id": "b", "uri": on_store.storage_url.rsplit("/", 1)[0]}],
            }
        )
    assert {p["field"] for p in refused.value.problems} == {"inputs[0].uri", "outputs[0].uri"}


def test_listing_after_a_key_skips_what_a_reader_knows(on_store: StoreCluster) -> None:
    storage = on_store.storage()
    for name in ("after/0001", "after/0002", "after/0003", "after0/x"):
        storage.put(name, b"x")
    assert [i.key for i in storage.list_after("after/", "after/0001")] == ["after/0002", "after/0003"]
    assert [i.key for i in storage.list_after("after/", None)] == ["after/0001", "after/0002", "after/0003"]
    assert list(storage.list_after("after/", "after/0003")) == []
