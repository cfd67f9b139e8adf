"""Local provider: `trainyard worker` processes on this machine, addresses 127.0.0.100 and up.

Each worker's pid is kept in `$TRAINYARD_HOME/autoscale/<node_id>.json`, so that a scheduler taking
over the lead on the same machine finds (and can stop) the workers another one started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from trainyard.config import load_settings
from trainyard.scheduler.providers.base import NodeProvider, ProviderNode

FIRST_ADDRESS = 100
LAST_ADDRESS = 254
STOP_GRACE_S = 10.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        done, _status = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _reap(pid: int, child: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + STOP_GRACE_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    if child is not None:
        child.poll()


class LocalProvider(NodeProvider):
    """Workers as subprocesses with the scheduler's own environment (TRAINYARD_HOME and the rest)."""

    name = "local"

    def __init__(self, home: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.home = home or load_settings().home
        self.state_dir = self.home / "autoscale"
        self.env = dict(env if env is not None else os.environ)
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def _records(self) -> list[dict[str, object]]:
        records = []
        for path in sorted(self.state_dir.glob("*.json")):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return records

    def _free_address(self) -> str:
        taken = {str(r["address"]) for r in self._records() if _alive(int(str(r["pid"])))}
        for last in range(FIRST_ADDRESS, LAST_ADDRESS + 1):
            address = f"127.0.0.{last}"
            if address not in taken:
                return address
        raise RuntimeError("no free loopback address left for another local node")

    def start_node(self, pool: str, node_id: str, slots: int, gpus: int) -> ProviderNode:
        address = self._free_address()
        args = [
            sys.executable,
            "-m",
            "trainyard",
            "worker",
            "--pool",
            pool,
            "--node-id",
            node_id,
            "--address",
            address,
            "--slots",
            str(slots),
            "--gpus",
            str(gpus),
            "--host-volume",
            "/",
        ]  # a node of this machine has all of its file system
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{node_id}.log").open("ab") as log:
            process = subprocess.Popen(
                args,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._children[node_id] = process
        self.state_dir.mkdir(parents=True, exist_ok=True)
        record = {"node_id": node_id, "pool": pool, "address": address, "pid": process.pid}
        (self.state_dir / f"{node_id}.json").write_text(json.dumps(record))
        return ProviderNode(node_id=node_id, pool=pool, address=address)

    def stop_node(self, node_id: str) -> None:
        path = self.state_dir / f"{node_id}.json"
        try:
            pid = int(json.loads(path.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return
        path.unlink(missing_ok=True)
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            # The scheduler loop does not wait: a thread reaps the worker, or kills it after the grace.
            threading.Thread(target=_reap, args=(pid, self._children.pop(node_id, None)), daemon=True).start()

    def stop_every_pool(self) -> int:
        """Stop every worker this provider started under TRAINYARD_HOME (when `up` stops)."""
        records = self._records()
        for record in records:
            self.stop_node(str(record["node_id"]))
        return len(records)

    def list_nodes(self, pool: str) -> list[ProviderNode]:
        nodes = []
        for record in self._records():
            if record.get("pool") != pool:
                continue
            node_id = str(record["node_id"])
            if _alive(int(str(record["pid"]))):
                nodes.append(ProviderNode(node_id=node_id, pool=pool, address=str(record["address"])))
            else:
                (self.state_dir / f"{node_id}.json").unlink(missing_ok=True)
        return nodes
