"""Ending a part's processes: its session, every descendant, and what escaped but kept its tag."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil

STOP_GRACE_S = 10.0
WAIT_POLL_S = 0.05


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
    """SIGTERM the part's session and every descendant, then SIGKILL what is left after the grace.

    The root is never reaped here: its Popen's wait() must still read its real status (a
    process reaped by someone else reads as status 0 there).
    """
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
    alive = _wait_gone(family, grace_s)
    _signal_group(root_pid, signal.SIGKILL)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    _wait_gone(alive, 5.0)


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every process has exited (without reaping our own children); those still alive."""
    deadline = time.monotonic() + timeout_s
    alive = list(procs)
    while alive:
        alive = [proc for proc in alive if not _exited(proc)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(WAIT_POLL_S)
    return alive


def _exited(proc: psutil.Process) -> bool:
    if proc.pid in _own_children():
        # WNOWAIT: look at a child's end without collecting its status.
        try:
            return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # collected meanwhile by its Popen
            return True
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _own_children() -> set[int]:
    try:
        return {child.pid for child in psutil.Process().children()}
    except psutil.Error:
        return set()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        proc.send_signal(sig)
