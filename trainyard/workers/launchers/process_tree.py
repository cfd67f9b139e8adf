"""Ending a part's processes: its session, every descendant, and what escaped but kept its tag."""

from __future__ import annotations

import contextlib
import os
import signal

import psutil

STOP_GRACE_S = 10.0


def tagged_processes(tag: dict[str, str]) -> list[psutil.Process]:
    """Processes whose environment carries every variable of `tag` (a part's job, attempt, rank).

    This finds what escaped the process tree (double fork, setsid) but kept the environment.
    """
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
        if all(env.get(key) == value for key, value in tag.items()):
            found.append(proc)
    return found


def part_tag(job_id: str, attempt: int, rank: int) -> dict[str, str]:
    return {"TRAINYARD_JOB_ID": job_id, "TRAINYARD_ATTEMPT": str(attempt), "TRAINYARD_NODE_RANK": str(rank)}


def kill_tree(root_pid: int, grace_s: float = STOP_GRACE_S, tag: dict[str, str] | None = None) -> None:
    """SIGTERM the part's session and every descendant, then SIGKILL what is left after the grace."""
    try:
        family = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    if tag:
        known = {p.pid for p in family}
        family += [p for p in tagged_processes(tag) if p.pid not in known]
    # Descendants that called setsid() left our process group; signal them one by one too.
    _signal_group(root_pid, signal.SIGTERM)
    for proc in family:
        _signal(proc, signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    _signal_group(root_pid, signal.SIGKILL)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        proc.send_signal(sig)
