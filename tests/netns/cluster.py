"""A cluster whose nodes are separate hosts (hosts.py): the control plane here, each worker in its own namespaces.

The control plane (Redis with a password, S3 on moto, API, scheduler, SQLite) runs on this
machine and listens on the lab's gateway address only. Each worker runs on a host of its own
with a private /tmp holding its TRAINYARD_HOME and HOME: it shares no path with the control
plane or the other nodes, and reaches Redis and the store over the lab's network. Workers are
given no --address: they must find their own.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from tests.netns.hosts import Host, Lab
from tests.services import BlobServer, free_port
from trainyard.client import Client
from trainyard.crypto import new_secret_key
from trainyard.db.engine import upgrade
from trainyard.up import redis_server_binary

READY_TIMEOUT_S = 60.0
NODE_SLOTS = 4
# A node's own paths, on its private /tmp: nothing of it exists on this machine or on other nodes.
NODE_HOME = "/tmp/node-home"  # not /tmp/trainyard: `python -m trainyard` in /tmp would import that folder
NODE_USER_HOME = "/tmp/home"
# What a node's environment keeps from ours: where programs are, nothing about paths or services.
KEPT_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ")


@dataclass
class ControlPlane:
    """The services every node reaches over the network, and how clients find them."""

    address: str
    home: Path
    api_url: str
    admin_token: str = field(repr=False)
    node_env: dict[str, str] = field(default_factory=dict, repr=False)  # what a worker is given
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    store: BlobServer | None = None

    def client(self) -> Client:
        return Client(api_url=self.api_url, token=self.admin_token)

    def stop(self) -> None:
        for _name, process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for _name, process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.store is not None:
            self.store.stop()


def _log(home: Path, name: str) -> IO[bytes]:
    (home / "logs").mkdir(parents=True, exist_ok=True)
    return (home / "logs" / f"{name}.log").open("ab")


def _start(plane: ControlPlane, name: str, argv: list[str], env: dict[str, str]) -> None:
    with _log(plane.home, name) as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    plane.processes.append((name, process))


def _wait_listening(address: str, port: int, plane: ControlPlane) -> None:
    import socket

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = [name for name, process in plane.processes if process.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited; see {plane.home / 'logs'}")
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on {address}:{port} within {READY_TIMEOUT_S:.0f} s")


def start_control_plane(lab: Lab, home: Path) -> ControlPlane:
    """Redis, moto, API and scheduler on the lab's gateway address."""
    address = lab.gateway
    home.mkdir(parents=True, exist_ok=True)
    token, secret_key, password = secrets.token_urlsafe(24), new_secret_key(), secrets.token_urlsafe(16)
    plane = ControlPlane(address=address, home=home, api_url="", admin_token=token)
    try:
        redis_port = free_port()
        redis_args = [redis_server_binary(), "--bind", address, "--port", str(redis_port), "--dir", str(home),
                      "--save", "", "--appendonly", "no", "--requirepass", password]  # fmt: skip
        _start(plane, "redis", redis_args, dict(os.environ))
        _wait_listening(address, redis_port, plane)
        plane.store = BlobServer("moto", home / "moto", host=address)
        plane.store.start()
        storage_url = plane.store.create_root(f"netns-{uuid.uuid4().hex[:10]}") + "/trainyard"
        shared = {
            "TRAINYARD_REDIS_URL": f"redis://:{password}@{address}:{redis_port}/0",
            "TRAINYARD_STORAGE_URL": storage_url,
            "TRAINYARD_SECRET_KEY": secret_key,
            **plane.store.environment(),
        }
        api_port = free_port()
        plane.api_url = f"http://{address}:{api_port}"
        env = {
            **os.environ,
            **shared,
            "TRAINYARD_HOME": str(home),
            "TRAINYARD_DATABASE_URL": f"sqlite:///{home / 'trainyard.db'}",
            "TRAINYARD_ADMIN_TOKEN": token,
            "TRAINYARD_API_URL": plane.api_url,
            "AWS_CONFIG_FILE": str(home / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
        }
        upgrade(env["TRAINYARD_DATABASE_URL"])
        trainyard = [sys.executable, "-m", "trainyard"]
        _start(plane, "api", [*trainyard, "api", "--host", address, "--port", str(api_port)], env)
        _start(plane, "scheduler", [*trainyard, "scheduler"], env)
        _wait_listening(address, api_port, plane)
        plane.node_env = {
            **{name: os.environ[name] for name in KEPT_VARIABLES if name in os.environ},
            **shared,
            "HOME": NODE_USER_HOME,
            "TRAINYARD_HOME": NODE_HOME,
            "AWS_CONFIG_FILE": f"{NODE_USER_HOME}/no-aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": f"{NODE_USER_HOME}/no-aws-credentials",
        }
    except BaseException:
        plane.stop()
        raise
    return plane


@dataclass
class NetnsCluster:
    """The control plane and one worker per host; nodes can be killed and started again."""

    lab: Lab
    plane: ControlPlane
    hosts: dict[str, Host] = field(default_factory=dict)
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_worker(self, host: Host) -> subprocess.Popen[bytes]:
        """`trainyard worker` on `host`, with no --address: it must find the address other nodes reach it at."""
        argv = [sys.executable, "-m", "trainyard", "worker", "--pool", "default", "--node-id", host.name,
                "--slots", str(NODE_SLOTS), "--gpus", "0"]  # fmt: skip
        script = f'mkdir -p "{NODE_USER_HOME}" "{NODE_HOME}" && cd "{NODE_USER_HOME}" && exec "$@"'
        command = ["/bin/sh", "-c", script, "node", *argv]
        with _log(self.plane.home, f"worker-{host.name}") as log:
            process = host.spawn(command, self.plane.node_env, log)
        self.hosts[host.name] = host
        self.workers[host.name] = process
        return process

    def nodes(self) -> dict[str, dict[str, Any]]:
        with self.plane.client() as client:
            return {str(node["id"]): node for node in client.nodes()}

    def wait_nodes_up(self, timeout_s: float = READY_TIMEOUT_S) -> dict[str, dict[str, Any]]:
        """Every node's worker registered and heartbeating (state up), as the API tells."""
        deadline = time.monotonic() + timeout_s
        nodes: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            dead = [name for name, process in self.workers.items() if process.poll() is not None]
            if dead:
                raise RuntimeError(f"worker of {', '.join(dead)} exited; see {self.plane.home / 'logs'}")
            try:
                nodes = self.nodes()
            except httpx.HTTPError:
                nodes = {}
            if all(nodes.get(name, {}).get("state") == "up" for name in self.hosts):
                return nodes
            time.sleep(0.2)
        raise RuntimeError(f"nodes not up within {timeout_s:.0f} s: {nodes}")

    def stop(self) -> None:
        try:
            self.lab.stop()  # workers first (they stop their jobs), while Redis still takes their last events
        finally:
            self.plane.stop()
