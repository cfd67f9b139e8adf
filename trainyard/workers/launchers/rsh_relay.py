"""Spawns across a gang for MPI's rsh agent (rsh_agent.py): the node agent's side, over Redis — no ssh.

Outgoing: the part's rsh agent connects to this relay's unix socket and names a host of the gang
and a command; the request goes into that host's part list in Redis, and the command's exit
status comes back on a reply list. Incoming: this part's own list is watched; each request runs
inside the part (its environment and runtime, output into its logs) and its status is sent back.
When the asking rsh agent dies (mpirun tearing down), the remote command is killed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import select
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import redis

from trainyard import transport
from trainyard.workers.launchers.base import LaunchContext, Launcher, RunningPart
from trainyard.workers.launchers.rsh_agent import AGENT_FAILED, SOCKET_ENV

log = logging.getLogger(__name__)

POLL_S = 0.5
REQUEST_READ_TIMEOUT_S = 10.0
REQUESTS_TTL_S = 24 * 3600
REPLY_TTL_S = 600
KILL_GRACE_S = 2.0
JOIN_TIMEOUT_S = 5.0


class OutputSink(Protocol):
    """Where a spawned command's output goes: the part's logs (PartLogs has this method)."""

    def pump(self, fd: int, stream: str) -> threading.Thread: ...


class RshRelay:
    """One per part of a launcher that accepts spawns; `serve` once the part has started."""

    def __init__(self, redis_client: redis.Redis, ctx: LaunchContext, sink: OutputSink):
        self.redis, self.ctx, self.sink = redis_client, ctx, sink
        # A short path of our own: unix socket paths are limited to ~107 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="trainyard-"))
        self.socket_path = self.dir / "rsh.sock"
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.socket_path))
        os.chmod(self.socket_path, 0o600)
        self._server.listen(64)
        self._server.settimeout(POLL_S)
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pumps: list[threading.Thread] = []
        ctx.support_dir = self.dir
        ctx.extra_env[SOCKET_ENV] = str(self.socket_path)
        self._start(self._accept_loop, "rsh-accept")

    def _start(self, target: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def serve(self, launcher: Launcher, part: RunningPart) -> None:
        """Start taking spawn requests from the gang into `part`."""
        self._start(self._listen_loop, "rsh-listen", launcher, part)

    def close(self) -> None:
        """Stop both directions, wait for spawned output to drain, forget this part's requests."""
        self._closed.set()
        for thread in [*self._threads, *self._pumps]:
            thread.join(JOIN_TIMEOUT_S)
        self._server.close()
        with contextlib.suppress(redis.RedisError):
            self.redis.delete(self._requests_key(self.ctx.rank))
        shutil.rmtree(self.dir, ignore_errors=True)

    def _requests_key(self, rank: int) -> str:
        return transport.spawn_requests_key(self.ctx.job_id, self.ctx.attempt, rank)

    def _push(self, rank: int, message: dict[str, Any]) -> None:
        key = self._requests_key(rank)
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, json.dumps(message))
        pipe.expire(key, REQUESTS_TTL_S)
        pipe.execute()

    # -- outgoing: this part's rsh agent asks for a command on another node ---------------------

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._start(self._forward, "rsh-forward", conn)

    def _forward(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = _read_request(conn)
                reply = self._spawn_remote(conn, str(request["host"]), str(request["command"]))
            except (OSError, ValueError, KeyError, redis.RedisError) as exc:
                reply = {"error": f"spawn failed: {exc}", "exit": AGENT_FAILED}
            if reply is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(reply).encode() + b"\n")

    def _spawn_remote(self, conn: socket.socket, host: str, command: str) -> dict[str, Any] | None:
        if host not in self.ctx.node_hosts:
            return {
                "error": f"{host} is not a node of this gang ({', '.join(self.ctx.node_hosts)})",
                "exit": AGENT_FAILED,
            }
        rank = self.ctx.node_hosts.index(host)
        spawn_id = secrets.token_hex(8)
        reply_key = transport.spawn_reply_key(self.ctx.job_id, self.ctx.attempt, spawn_id)
        self._push(rank, {"op": "spawn", "id": spawn_id, "command": command, "reply": reply_key})
        while not self._closed.is_set() and not _peer_gone(conn):
            item: Any = self.redis.blpop([reply_key], timeout=POLL_S)
            if item is not None:
                reply: dict[str, Any] = json.loads(item[1])
                return reply
        # Our rsh agent died (mpirun is tearing down) or the part ended: the remote command goes too.
        self._push(rank, {"op": "kill", "id": spawn_id})
        return None

    # -- incoming: another node's rsh agent asks for a command in this part ---------------------

    def _listen_loop(self, launcher: Launcher, part: RunningPart) -> None:
        key = self._requests_key(self.ctx.rank)
        while not self._closed.is_set():
            try:
                item: Any = self.redis.blpop([key], timeout=POLL_S)
            except redis.RedisError as exc:
                log.warning("spawn requests unavailable: %s", exc)
                time.sleep(POLL_S)
                continue
            if item is None:
                continue
            message = json.loads(item[1])
            if message.get("op") == "spawn":
                self._start(self._run_spawn, "rsh-spawn", launcher, part, message)
            elif message.get("op") == "kill":
                with part.lock:
                    step = part.spawns.get(str(message.get("id")))
                if step is not None:
                    step.stop(KILL_GRACE_S)

    def _run_spawn(self, launcher: Launcher, part: RunningPart, message: dict[str, Any]) -> None:
        spawn_id, reply_key = str(message["id"]), str(message["reply"])
        if part.main.poll() is not None:
            self._reply(reply_key, {"error": "the part has already ended", "exit": AGENT_FAILED})
            return
        try:
            step = launcher.spawn(part, spawn_id, str(message["command"]))
        except Exception as exc:  # the command could not start: say why to the asking node
            self._reply(reply_key, {"error": f"could not start: {exc}", "exit": 127})
            return
        self._pumps += [self.sink.pump(step.stdout_fd, "stdout"), self.sink.pump(step.stderr_fd, "stderr")]
        exit_code = step.wait()
        self._reply(reply_key, {"exit": exit_code})
        launcher.spawn_ended(part, spawn_id, exit_code)

    def _reply(self, reply_key: str, payload: dict[str, Any]) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.rpush(reply_key, json.dumps(payload))
            pipe.expire(reply_key, REPLY_TTL_S)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("spawn reply lost: %s", exc)


def _read_request(conn: socket.socket) -> dict[str, Any]:
    conn.settimeout(REQUEST_READ_TIMEOUT_S)
    buffer = b""
    while b"\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            raise ValueError("the rsh agent sent no request")
        buffer += chunk
    request: dict[str, Any] = json.loads(buffer.split(b"\n", 1)[0])
    return request


def _peer_gone(conn: socket.socket) -> bool:
    """True once the rsh agent closed its end (it only ever writes its one request line)."""
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class NoRelay:
    """What a part whose launcher takes no spawns has instead of a relay."""

    def serve(self, launcher: Launcher, part: RunningPart) -> None:
        pass

    def close(self) -> None:
        pass


NO_RELAY = NoRelay()


def relay_for(
    launcher: Launcher, redis_client: redis.Redis, ctx: LaunchContext, sink: OutputSink
) -> RshRelay | NoRelay:
    """A relay when `launcher`'s parts take spawns from the gang (MPI's daemons), else one that does nothing."""
    return RshRelay(redis_client, ctx, sink) if launcher.accepts_spawns else NO_RELAY
