"""A tiny guardian process per worker: when the worker dies (even by SIGKILL), its jobs die too.

The worker holds the write end of a pipe that is this process's stdin; the kernel closes it when
the worker exits in any way, the read here returns EOF, and every process tagged with the
worker's session is killed, so no orphan keeps holding GPUs or slots.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

import psutil

SESSION_ENV = "TRAINYARD_NODE_SESSION"


def start(session: str) -> subprocess.Popen[bytes]:
    """Spawn the watchdog for this worker's session; keep the returned handle alive."""
    return subprocess.Popen(
        [sys.executable, "-m", "trainyard.workers.watchdog", "--session", session],
        stdin=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
    )


def kill_session(session: str) -> int:
    victims = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(SESSION_ENV) == session:
                victims.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    for proc in victims:
        try:
            proc.send_signal(signal.SIGKILL)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    psutil.wait_procs(victims, timeout=5)
    return len(victims)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--session", required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the worker's group is not our business
    while os.read(sys.stdin.fileno(), 1024):
        pass
    kill_session(args.session)


if __name__ == "__main__":
    main()
