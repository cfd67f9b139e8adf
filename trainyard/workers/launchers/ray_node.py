"""One node's share of a gang's Ray cluster: start Ray here, run the job on the head, stop only our own Ray.

The ray launcher runs this as each part's main program:
    ray_node.py --role head|worker --ray RAY --head HOST:PORT --num-nodes N [--ray-arg ARG]... -- COMMAND...
The head starts `ray start --head --block`, waits until all N nodes have joined, runs COMMAND with
RAY_ADDRESS and exits with its status. A worker waits for the head, joins, and leaves (status 0)
once the head is gone. Either way only the Ray processes started here are stopped — never `ray stop`,
which would end every Ray cluster of the machine.

No trainyard imports (it may run inside a job's container); `ray` and `psutil` are imported when there.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

POLL_S = 0.2
HEAD_GONE_CHECKS = 3
RAY_STOP_GRACE_S = 15.0
WORKER_STOP_GRACE_S = 2.0
CONNECT_TIMEOUT_S = 1.0
JOIN_FAILED = 1


class Terminated(Exception):
    """SIGTERM or SIGINT arrived: stop what we started and leave."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="one node of a trainyard Ray gang")
    parser.add_argument("--role", choices=["head", "worker"], required=True)
    parser.add_argument("--ray", default="ray", help="the ray program")
    parser.add_argument("--head", required=True, help="HOST:PORT of the head's GCS")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--join-timeout-s", type=float, default=300.0)
    parser.add_argument("--ray-arg", action="append", default=[], help="an argument for `ray start`")
    parser.add_argument("command", nargs="*")
    return parser.parse_args(argv)


def port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def wait_until(condition: Callable[[], bool], timeout_s: float, alive: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if not alive():
            return False
        time.sleep(POLL_S)
    return False


def alive_nodes(address: str) -> int:
    """How many nodes the cluster's GCS holds as alive (Ray's own client, no driver needed)."""
    raylet: Any = importlib.import_module("ray._raylet")
    alive: Any = importlib.import_module("ray.core.generated.gcs_pb2").GcsNodeInfo.ALIVE
    nodes: dict[Any, Any] = raylet.GcsClient(address=address).get_all_node_info(timeout=5)
    return len([node for node in nodes.values() if node.state == alive])


def start_ray(ray: str, args: list[str]) -> subprocess.Popen[bytes]:
    # Ray's own chatter goes to stderr: the job's stdout is the job's.
    return subprocess.Popen([ray, "start", "--block", *args], stdin=subprocess.DEVNULL, stdout=sys.stderr)


def stop_ray(process: subprocess.Popen[bytes], grace_s: float = RAY_STOP_GRACE_S) -> None:
    """End the `ray start` we ran and everything under it (raylet, GCS, workers), nothing else."""
    descendants = _descendants(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # Ray drains and stops the processes it started
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for proc in descendants:
        with contextlib.suppress(Exception):  # already gone, which is the point
            proc.kill()


def _descendants(pid: int) -> list[Any]:
    try:
        import psutil
    except ImportError:  # inside a container without psutil: the container's end cleans up
        return []
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def run_head(args: argparse.Namespace) -> int:
    ray = start_ray(args.ray, ["--head", *args.ray_arg])
    try:
        joined = wait_until(
            lambda: port_open(args.head) and alive_nodes(args.head) >= args.num_nodes,
            args.join_timeout_s,
            lambda: ray.poll() is None,
        )
        if not joined:
            print(f"trainyard: the Ray cluster did not reach {args.num_nodes} nodes", file=sys.stderr)
            return JOIN_FAILED
        job = subprocess.Popen(args.command, env={**os.environ, "RAY_ADDRESS": args.head})
        try:
            return job.wait()
        except Terminated:
            job.terminate()
            job.wait()
            raise
    finally:
        stop_ray(ray)


def run_worker(args: argparse.Namespace) -> int:
    # Started at once, not after the head is up: `ray start` retries the head's GCS itself, and
    # the seconds it spends importing Ray overlap the head's start.
    deadline = time.monotonic() + args.join_timeout_s
    ray = start_ray(args.ray, ["--address", args.head, *args.ray_arg])
    head_seen, misses = False, 0
    try:
        while misses < HEAD_GONE_CHECKS:
            if ray.poll() is not None:
                if head_seen or time.monotonic() > deadline:
                    return ray.returncode or JOIN_FAILED
                ray = start_ray(args.ray, ["--address", args.head, *args.ray_arg])  # the head was not up yet
            time.sleep(POLL_S)
            up = port_open(args.head)
            head_seen = head_seen or up
            misses = 0 if up or not head_seen else misses + 1
        return 0  # the head is gone: the job is over
    finally:
        stop_ray(ray, grace_s=WORKER_STOP_GRACE_S)  # nothing left to drain towards


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        return run_head(args) if args.role == "head" else run_worker(args)
    except Terminated as exc:
        return 128 + int(exc.args[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
