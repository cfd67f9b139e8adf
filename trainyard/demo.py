"""`trainyard demo`: the README's main job — a local cluster, a small sweep and a 2-node gang, live."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from trainyard.client import Client, Job
from trainyard.config import load_settings
from trainyard.up import start_cluster

console = Console()
DEMO_TIMEOUT_S = 300.0

TRAIN_SCRIPT = """
import math, os, time
lr = float(os.environ["LR"]); steps = int(os.environ["STEPS"])
loss = 1.0
for step in range(1, steps + 1):
    loss = loss * (1 - lr) + 0.01 * math.sin(step)
    print(f"step {step}/{steps} lr={lr} loss={loss:.4f}", flush=True)
    time.sleep(0.1)
print(f"final loss {loss:.4f}")
"""

GANG_SCRIPT = (
    'echo "rank $TRAINYARD_NODE_RANK of $TRAINYARD_NUM_NODES on $(hostname) hosts=$TRAINYARD_NODE_HOSTS"; '
    'sleep 1; echo "rank $TRAINYARD_NODE_RANK done"'
)


def demo_specs() -> list[dict[str, Any]]:
    sweep = [
        {
            "name": f"train-lr{lr}",
            "experiment": "demo",
            "max_retries": 0,
            "command": ["python3", "-c", TRAIN_SCRIPT],
            "env": {"LR": str(lr), "STEPS": "20"},
        }
        for lr in (0.3, 0.1, 0.03, 0.01)
    ]
    gang = {
        "name": "gang-2-nodes",
        "experiment": "demo",
        "nodes": 2,
        "command": GANG_SCRIPT,
        "priority": "high",
        "max_retries": 0,
    }
    return [*sweep, gang]


def _follow(job: Job, lines: list[str]) -> None:
    for line in job.logs(follow=True):
        lines.append(line.rstrip("\n"))


def _watch(client: Client, jobs: list[Job]) -> None:
    live_lines: list[str] = []
    follower = threading.Thread(target=_follow, args=(jobs[0], live_lines), daemon=True)
    follower.start()
    deadline = time.monotonic() + DEMO_TIMEOUT_S
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("demo jobs", total=len(jobs))
        shown = 0
        while time.monotonic() < deadline:
            states = Counter(job.refresh().state for job in jobs)
            finished = states["succeeded"] + states["failed"] + states["cancelled"]
            progress.update(
                task,
                completed=finished,
                description=f"demo jobs ({', '.join(f'{k} {v}' for k, v in sorted(states.items()))})",
            )
            for line in live_lines[shown:]:
                progress.console.print(f"[dim]{jobs[0].name} |[/dim] {line}", highlight=False)
            shown = len(live_lines)
            if finished == len(jobs):
                break
            time.sleep(0.3)
    follower.join(timeout=5)


def _summary(jobs: list[Job]) -> Table:
    table = Table("JOB", "NAME", "STATE", "EXIT", "NODES", "LAST LINE")
    for job in jobs:
        data = job.refresh().data
        nodes = ",".join(data["attempts"][-1]["nodes"]) if data.get("attempts") else ""
        output = job.log_bytes().decode("utf-8", "replace").strip().splitlines()
        table.add_row(job.id, job.name, data["state"], str(data["exit_code"]), nodes, output[-1] if output else "")
    return table


def run_demo(workers: int = 2, slots: int = 2) -> int:
    """Exit code 0 when every demo job succeeded."""
    home = load_settings().home
    console.print(
        f"[bold]trainyard demo[/bold]: starting a local cluster in {home} "
        f"({workers} nodes x {slots} slots, embedded Redis unless TRAINYARD_REDIS_URL is set)"
    )
    cluster = start_cluster(workers=workers, slots=slots)
    try:
        console.print(f"API at {cluster.api_url}; submitting a 4-point sweep and a 2-node gang")
        with Client(api_url=cluster.api_url, token=cluster.admin_token) as client:
            jobs = client.submit_many(demo_specs())
            _watch(client, jobs)
            console.print(_summary(jobs))
            ok = all(job.data["state"] == "succeeded" for job in jobs)
            gang = jobs[-1]
            for rank in range(2):
                console.print(
                    f"[bold]{gang.name} rank {rank}:[/bold] "
                    f"{gang.log_bytes(rank=rank).decode(errors='replace').strip()}",
                    highlight=False,
                )
    finally:
        console.print("stopping the cluster")
        cluster.stop()
    console.print("[green]demo succeeded[/green]" if ok else "[red]demo failed[/red]")
    return 0 if ok else 1
