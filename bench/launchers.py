"""Launcher start-up: time from "gang placed" to "all ranks running" for 2-node mpi, ray and torchrun gangs.

Ours: a private cluster (`trainyard up`, 2 nodes, embedded Redis, SQLite). "Placed" is the
attempt's creation in the database (the scheduler's gang reservation); "running" is the clock
each rank reads first thing (`date +%s.%N`): every MPI rank (2 nodes x 2), every torchrun worker
(2 x 1), and the Ray job's command once the 2-node cluster has formed. The figure is the latest
rank's clock minus the placement, median over the runs.

Baseline, same machine and same programs without trainyard: mpirun with an rsh agent that runs
the daemon locally (`sh -c`), two torchrun agents started together, the two Ray nodes started by
hand (trainyard's ray_node.py run directly). Goals (issue 4): <= 2 s for mpi and torchrun,
<= 10 s for ray.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from harness import JobCounter, emit, note, private_cluster
from rich.console import Console
from rich.table import Table

from trainyard.client import Client, Job

CLOCK = "date +%s.%N"
RANK_PROBE = f'echo "T $({CLOCK})"'
HOSTS = ["127.0.0.2", "127.0.0.3"]


@dataclass(frozen=True)
class Gang:
    launcher: str
    processes_per_node: int
    goal_s: float

    @property
    def ranks(self) -> int:
        return 1 if self.launcher == "ray" else len(HOSTS) * self.processes_per_node


GANGS = [Gang("mpi", 2, 2.0), Gang("torchrun", 1, 2.0), Gang("ray", 1, 10.0)]


def clocks(text: str) -> list[float]:
    return [float(line.split()[1]) for line in text.splitlines() if line.startswith("T ")]


# -- through trainyard ---------------------------------------------------------------------------


def placed_at(home: Path, job_id: str) -> float:
    with JobCounter(home / "trainyard.db") as db:
        assert db._conn is not None
        row = db._conn.execute("SELECT created_at FROM attempts WHERE job_id = ? AND number = 1", (job_id,)).fetchone()
    created = datetime.fromisoformat(str(row[0]))
    return (created if created.tzinfo else created.replace(tzinfo=UTC)).timestamp()


def through_trainyard(client: Client, home: Path, gang: Gang) -> float:
    job: Job = client.submit(
        {
            "name": f"bench-{gang.launcher}",
            "launcher": gang.launcher,
            "nodes": len(HOSTS),
            "processes_per_node": gang.processes_per_node,
            "max_retries": 0,
            "experiment": "bench-launchers",
            "command": RANK_PROBE,
        }
    )
    state = job.wait(timeout=300, poll_s=0.1)
    if state != "succeeded":
        errors = [job.log_bytes(rank=rank, stream="stderr")[:3000] for rank in range(len(HOSTS))]
        raise RuntimeError(f"{gang.launcher} job {job.id} {state}: {errors!r}")
    seen = [t for rank in range(len(HOSTS)) for t in clocks(job.log_bytes(rank=rank).decode())]
    if len(seen) != gang.ranks:
        raise RuntimeError(f"{gang.launcher}: {len(seen)} of {gang.ranks} ranks reported")
    return max(seen) - placed_at(home, job.id)


# -- by hand (baseline) --------------------------------------------------------------------------


def _started(argvs: list[list[str]], env: dict[str, str], cwd: Path) -> tuple[float, list[str]]:
    """Start the processes together; (start time, their stdouts) once they have all ended."""
    t0 = time.time()
    procs = [
        subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for argv in argvs
    ]
    outputs = [proc.communicate(timeout=300)[0].decode() for proc in procs]
    return t0, outputs


def raw_mpi(work: Path) -> float:
    agent = work / "agent.sh"
    agent.write_text('#!/bin/sh\nshift\nexec /bin/sh -c "$*"\n')  # the "remote" host is this one
    agent.chmod(0o700)
    (work / "hostfile").write_text("".join(f"{host} slots=2\n" for host in HOSTS))
    argv = [
        "mpirun",
        "--hostfile",
        "hostfile",
        "-np",
        "4",
        "--bind-to",
        "none",
        "--leave-session-attached",
        "--mca",
        "plm_rsh_agent",
        str(agent),
        "--mca",
        "plm_rsh_no_tree_spawn",
        "1",
        "--mca",
        "btl",
        "tcp,self",
        "--mca",
        "btl_tcp_if_include",
        "lo",
        "--mca",
        "oob_tcp_if_include",
        "lo",
        "/bin/sh",
        "-c",
        RANK_PROBE,
    ]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    t0, outputs = _started([argv], env, work)
    return max(clocks(outputs[0])) - t0


def raw_torchrun(work: Path) -> float:
    port = str(23000 + os.getpid() % 1000)
    argvs = [
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--node-rank",
            str(rank),
            "--master-addr",
            HOSTS[0],
            "--master-port",
            port,
            "--no-python",
            "/bin/sh",
            "-c",
            RANK_PROBE,
        ]
        for rank in range(len(HOSTS))
    ]
    t0, outputs = _started(argvs, dict(os.environ), work)
    return max(t for out in outputs for t in clocks(out)) - t0


def raw_ray(work: Path) -> float:
    from trainyard.workers.launchers import ray_node
    from trainyard.workers.launchers.ray import ray_ports

    port = 21000 + os.getpid() % 1000
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="b" * 64)
    head = f"{HOSTS[0]}:{ray_ports(port, 0).gcs}"
    argvs = []
    for rank, host in enumerate(HOSTS):
        ray_args = [*ray_ports(port, rank).start_args(head=rank == 0), "--node-ip-address", host, "--num-cpus", "1"]
        argvs.append(
            [
                sys.executable,
                "-I",
                ray_node.__file__,
                "--role",
                "head" if rank == 0 else "worker",
                "--ray",
                str(Path(sys.executable).parent / "ray"),
                "--head",
                head,
                "--num-nodes",
                "2",
                *[f"--ray-arg={arg}" for arg in ray_args],
                "--",
                "/bin/sh",
                "-c",
                RANK_PROBE,
            ]
        )
    t0, outputs = _started(argvs, env, work)
    return max(clocks(outputs[0])) - t0


BASELINES: dict[str, Callable[[Path], float]] = {"mpi": raw_mpi, "torchrun": raw_torchrun, "ray": raw_ray}


# -- report -----------------------------------------------------------------------------------


def report(results: dict[str, tuple[list[float], list[float]]]) -> None:
    table = Table(title="2-node gangs: gang placed -> all ranks running (median)")
    for column in ("launcher", "trainyard s", "by hand s", "ratio", "goal", "runs"):
        table.add_column(column)
    for gang in GANGS:
        ours, raw = results[gang.launcher]
        value, baseline = statistics.median(ours), statistics.median(raw)
        table.add_row(
            gang.launcher,
            f"{value:.2f}",
            f"{baseline:.2f}",
            f"{value / baseline:.2f}",
            f"<= {gang.goal_s:g}",
            str(len(ours)),
        )
        emit(
            f"launcher_start_{gang.launcher}_2_nodes",
            value,
            "s",
            f"<= {gang.goal_s:g}",
            baseline=baseline,
            runs=len(ours),
            samples=[round(v, 3) for v in ours],
        )
    Console(stderr=True).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one run of each")
    args = parser.parse_args()
    runs = 1 if args.quick or os.environ.get("TRAINYARD_BENCH_QUICK") else args.runs
    results: dict[str, tuple[list[float], list[float]]] = {g.launcher: ([], []) for g in GANGS}
    with (
        private_cluster(workers=len(HOSTS), slots=4) as cluster,
        Client(api_url=cluster.api_url, token=cluster.admin_token) as client,
        tempfile.TemporaryDirectory(prefix="bench-launchers-") as scratch,
    ):
        for gang in GANGS:
            for run in range(runs):
                ours = through_trainyard(client, Path(cluster.home), gang)
                raw = BASELINES[gang.launcher](Path(scratch))
                results[gang.launcher][0].append(ours)
                results[gang.launcher][1].append(raw)
                note(f"{gang.launcher} run {run + 1}: trainyard {ours:.2f} s, by hand {raw:.2f} s")
    report(results)


if __name__ == "__main__":
    main()
