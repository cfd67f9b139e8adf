"""The node's setup task runner: real subprocesses and a real (local) store; the scheduler side is in integration."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from trainyard import wire
from trainyard.crypto import encrypt_secrets, new_secret_key
from trainyard.storage_adapters import open_storage
from trainyard.workers.node_setup import NodeSetup


def _setup(tmp_path: Path, published: list[dict[str, Any]], secret_key: str | None = None) -> NodeSetup:
    storage = open_storage(f"file://{tmp_path / 'store'}")
    return NodeSetup("n1", "pool-a", "sess-1", tmp_path / "node", storage, secret_key, published.append)


def _wait(published: list[dict[str, Any]], count: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(published) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(published) >= count, published


def test_runs_once_per_session_and_repeats_its_result(tmp_path: Path) -> None:
    published: list[dict[str, Any]] = []
    setup = _setup(tmp_path, published)
    counter = tmp_path / "runs"
    message = wire.Setup(session="sess-1", command=f"echo run >> {counter}; sleep 0.5; echo $GREETING $TRAINYARD_POOL",
                         env={"GREETING": "hello"})  # fmt: skip
    setup.handle(message)
    setup.handle(message)  # while it runs: nothing new starts
    _wait(published, 1)
    setup.handle(message)  # after: the same answer again
    _wait(published, 2)
    assert counter.read_text() == "run\n"
    assert published[0] == published[1]
    done = published[0]
    assert done["ok"] is True and done["exit_code"] == 0 and done["log_key"] == "nodes/n1/setup/sess-1.log"
    stored = open_storage(f"file://{tmp_path / 'store'}").get(done["log_key"])
    assert stored == b"hello pool-a\n"


def test_a_message_for_another_session_is_ignored(tmp_path: Path) -> None:
    published: list[dict[str, Any]] = []
    setup = _setup(tmp_path, published)
    setup.handle(wire.Setup(session="older", command="true"))
    time.sleep(0.5)
    assert published == []


def test_a_setup_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    published: list[dict[str, Any]] = []
    pid_file = tmp_path / "child.pid"
    result = _setup(tmp_path, published).run(
        wire.Setup(session="sess-1", command=f"sleep 300 & echo $! > {pid_file}; wait", timeout_s=1.0)
    )
    assert result["ok"] is False and "timeout of 1 s" in result["error"]
    child = int(pid_file.read_text())
    assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text().lower()


def test_a_failure_reports_the_exit_code_and_the_tail_of_the_output(tmp_path: Path) -> None:
    result = _setup(tmp_path, []).run(wire.Setup(session="sess-1", command="echo step 1; echo boom >&2; exit 7"))
    assert result["ok"] is False and result["exit_code"] == 7
    assert "exited with 7" in result["error"] and "boom" in result["error"]


def test_secrets_are_decrypted_on_the_node_and_a_wrong_key_fails_clearly(tmp_path: Path) -> None:
    key = new_secret_key()
    token = encrypt_secrets({"TOKEN": "s3cret"}, key)
    ok = _setup(tmp_path, [], secret_key=key).run(
        wire.Setup(session="sess-1", command='test "$TOKEN" = s3cret', secrets_enc=token)
    )
    assert ok["ok"] is True, ok
    wrong = _setup(tmp_path, [], secret_key=new_secret_key()).run(
        wire.Setup(session="sess-1", command="true", secrets_enc=token)
    )
    assert wrong["ok"] is False and "secrets could not be read" in wrong["error"]


def test_a_long_setup_ships_its_log_while_it_runs(tmp_path: Path) -> None:
    setup = _setup(tmp_path, [])
    thread = threading.Thread(target=setup.run, args=(wire.Setup(session="sess-1", command="echo early; sleep 5"),))
    thread.start()
    storage = open_storage(f"file://{tmp_path / 'store'}")
    deadline = time.monotonic() + 4.5
    seen = b""
    while time.monotonic() < deadline and b"early" not in seen:
        time.sleep(0.2)
        if storage.exists("nodes/n1/setup/sess-1.log"):
            seen = storage.get("nodes/n1/setup/sess-1.log")
    thread.join()
    assert b"early" in seen


def test_a_batchai_setup_task_sees_the_mount_root_with_the_pools_host_volumes_and_keeps_its_output(
    tmp_path: Path,
) -> None:
    share = tmp_path / "afs"
    (share / "scripts").mkdir(parents=True)
    (share / "scripts" / "setup.sh").write_text('echo "setup on $TRAINYARD_NODE_ID"; echo oops >&2\n')
    volumes = [
        {"name": "bai_cluster_afs", "mount_path": ".batchai/mounts/afs", "kind": "host", "path": str(share)},
        {"name": "bai_cluster_bfs", "mount_path": ".batchai/mounts/bfs", "kind": "sync", "uri": "az://data"},
    ]
    env = {"AZ_BATCHAI_COMPAT": "2018-05-01", "AZ_BATCHAI_STDOUTERR_PREFIX": "$AZ_BATCHAI_MOUNT_ROOT/afs"}
    command = 'sh $AZ_BATCHAI_MOUNT_ROOT/afs/scripts/setup.sh && echo "out=$AZ_BATCHAI_STDOUTERR_DIR"'
    result = _setup(tmp_path, []).run(wire.Setup(session="sess-1", command=command, env=env, volumes=volumes))
    assert result["ok"] is True, result
    root = tmp_path / "node" / "setup" / ".batchai" / "mounts"
    assert (root / "afs").resolve() == share.resolve() and not (root / "bfs").exists()
    kept = share / "pool-a" / "n1" / "stdouterr" / "stdout.txt"  # <prefix>/<pool>/<node id>/stdouterr
    assert kept.read_text() == f"setup on n1\noops\nout={root / 'afs' / 'pool-a' / 'n1' / 'stdouterr'}\n"


def test_a_plain_pools_setup_task_gets_no_batchai_variables(tmp_path: Path) -> None:
    result = _setup(tmp_path, []).run(
        wire.Setup(session="sess-1", command='test -z "$AZ_BATCHAI_MOUNT_ROOT$AZ_BATCHAI_STDOUTERR_DIR"')
    )
    assert result["ok"] is True, result
    assert not (tmp_path / "node" / "setup" / ".batchai").exists()


def test_a_batchai_setup_task_without_a_usable_prefix_keeps_its_output_in_its_own_directory(tmp_path: Path) -> None:
    env = {"AZ_BATCHAI_COMPAT": "2018-05-01", "AZ_BATCHAI_STDOUTERR_PREFIX": "$AZ_BATCHAI_JOB_MOUNT_ROOT/logs"}
    result = _setup(tmp_path, []).run(wire.Setup(session="sess-1", command="echo done", env=env))
    assert result["ok"] is True, result
    assert (tmp_path / "node" / "setup" / ".batchai" / "stdouterr" / "stdout.txt").read_text() == "done\n"
