"""The pool's setup task on a node (Batch AI's `nodeSetup.setupTask`): run once per worker session, before any work.

The scheduler marks a node `preparing` when it registers in a pool with a setup task and sends
it a `setup` control message; the node runs the command with the pool's env and secrets in its
own directory, ships the output to the store while it runs (so `trainyard node logs` shows a
setup that hangs) and at its end, and reports `node_setup_done`. A pool made from a Batch AI cluster
file also gives the task Batch AI's variables (`batchai_cluster.batchai_setup_env`). The scheduler then makes the
node `up`, or `unusable` with the error. Repeated messages for the same session (re-sent while
the node is still `preparing`) start nothing new; a finished setup answers with its result again.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainyard import wire
from trainyard.batchai_cluster import batchai_setup_env, keep_setup_output
from trainyard.crypto import decrypt_secrets
from trainyard.storage_adapters import Storage, StorageError
from trainyard.workers.launchers.process_tree import kill_tree
from trainyard.workers.launchers.runtime import host_environment

log = logging.getLogger(__name__)

LOG_SHIP_PERIOD_S = 2.0
KILL_GRACE_S = 5.0
# The last part of a long setup log kept in the error text the node reports.
ERROR_TAIL_BYTES = 400


class NodeSetup:
    """One per node agent: runs the setup task of its current session at most once."""

    def __init__(self, node_id: str, pool: str, session: str, node_dir: Path, storage: Storage,
                 secret_key: str | None, publish: Callable[[dict[str, Any]], None]):  # fmt: skip
        self.node_id, self.pool, self.session = node_id, pool, session
        self.dir = node_dir / "setup"
        self.storage, self.secret_key, self.publish = storage, secret_key, publish
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._result: dict[str, Any] | None = None

    def handle(self, message: wire.Setup) -> None:
        if message.session != self.session:
            log.info("ignoring a setup message for worker session %s (this is %s)", message.session, self.session)
            return
        with self._lock:
            if self._result is not None:
                self.publish(dict(self._result))  # the scheduler asks again: it missed the answer
                return
            if self._thread is not None:
                return  # running
            self._thread = threading.Thread(target=self._run, args=(message,), name="node-setup", daemon=True)
            self._thread.start()

    def _run(self, message: wire.Setup) -> None:
        result = self.run(message)
        with self._lock:
            self._result = result
        self.publish(dict(result))

    def run(self, message: wire.Setup) -> dict[str, Any]:
        """Run the task to its end; returns the `node_setup_done` event."""
        key = wire.setup_log_key(self.node_id, self.session)
        self.dir.mkdir(parents=True, exist_ok=True)
        output = self.dir / f"{self.session}.log"
        done: dict[str, Any] = {"kind": "node_setup_done", "ok": False, "log_key": key}
        try:
            env = self._environment(message)
        except Exception as exc:  # bad key or token: the secrets cannot be read here
            done["error"] = f"the setup task's secrets could not be read on this node: {exc}"
            output.write_text(done["error"] + "\n")
            self._ship(key, output)
            return done
        log.info("running the setup task of pool %s", self.pool)
        with output.open("wb") as sink:
            try:
                process = subprocess.Popen(["/bin/sh", "-c", message.command], cwd=self.dir, env=env,
                                           stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                           start_new_session=True)  # fmt: skip
            except OSError as exc:
                done["error"] = f"the setup task could not start: {exc}"
                sink.write(done["error"].encode() + b"\n")
                process = None
        exit_code = None if process is None else self._wait(process, key, output, message.timeout_s, done)
        self._ship(key, output)
        keep_setup_output(env, output)
        done["exit_code"] = exit_code
        if exit_code == 0:
            done["ok"] = True
        elif "error" not in done:
            tail = output.read_bytes()[-ERROR_TAIL_BYTES:].decode(errors="replace").strip()
            done["error"] = f"the setup task exited with {exit_code}" + (f": …{tail}" if tail else "")
        return done

    def _wait(self, process: subprocess.Popen[bytes], key: str, output: Path, timeout_s: float,
              done: dict[str, Any]) -> int:  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return process.wait(timeout=LOG_SHIP_PERIOD_S)
            except subprocess.TimeoutExpired:
                self._ship(key, output)  # a setup that hangs shows how far it got
            if time.monotonic() > deadline:
                done["error"] = f"the setup task ran past its timeout of {timeout_s:g} s and was killed"
                kill_tree(process.pid, grace_s=KILL_GRACE_S)
                return process.wait()

    def _environment(self, message: wire.Setup) -> dict[str, str]:
        env = {**host_environment(), **message.env}
        if message.secrets_enc is not None:
            if not self.secret_key:
                raise RuntimeError("this worker has no TRAINYARD_SECRET_KEY")
            env.update(decrypt_secrets(message.secrets_enc, self.secret_key))
        env.update(TRAINYARD_NODE_ID=self.node_id, TRAINYARD_POOL=self.pool, TRAINYARD_SETUP_DIR=str(self.dir))
        # A pool from a Batch AI cluster file: the AZ_BATCHAI_* variables Batch AI gave its setup task.
        env.update(batchai_setup_env(env, self.dir, self.node_id, self.pool, message.volumes))
        return env

    def _ship(self, key: str, output: Path) -> None:
        try:
            self.storage.put_file(key, output)
        except (StorageError, OSError) as exc:
            log.warning("could not store the setup log: %s", exc)
