"""Intel MPI: told apart from Open MPI on the node by `mpirun --version`, and launched with its own flags.

The argv and environment are checked as built; the choice between the two flag sets is made by the
real shell script a part runs, with a stand-in `mpirun` that answers --version as each implementation
does. Then for real: PyPI's impi-rt (scripts/install-intel-mpi.sh, a prefix of its own, off the
default PATH) put first on the job's PATH, a 2-node gang on simulated nodes (127.0.0.2, 127.0.0.3)
allreduces across both through Intel's Hydra, its proxies started by trainyard's rsh agent — the
mpi launcher's own mpirun, and a Batch AI customToolkit job running its own.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.workers.launchers import components
from tests.workers.launchers.gang import Gang
from trainyard.batchai import batchai_to_spec
from trainyard.workers.launchers import LaunchContext, launcher_for
from trainyard.workers.launchers.mpi import MACHINEFILE_NAME, machinefile_text

INTEL_VERSION = "Intel(R) MPI Library for Linux* OS, Version 2018 Update 1 Build 20171011 (id: 17941)"
OPEN_MPI_VERSION = "mpirun (Open MPI) 4.1.4"


def context(tmp_path: Path, rank: int = 0, **spec: Any) -> LaunchContext:
    hosts = ["127.0.0.2", "127.0.0.3"]
    return LaunchContext(
        job_id="j1",
        name="n",
        attempt=1,
        rank=rank,
        num_nodes=2,
        node_hosts=hosts,
        node_address=hosts[rank],
        spec={"command": "python train.py", "processes_per_node": 4, **spec},
        gpus=[],
        workdir=tmp_path / "work",
        checkpoint_dir=tmp_path / "ckpt",
        master_port=23456,
        support_dir=tmp_path / "support",
    )


def test_intel_mpirun_gets_a_machine_file_ppn_and_the_rsh_agent_as_its_bootstrap(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    argv = launcher_for("mpi").intel_mpirun_argv(ctx)
    line = " ".join(argv)
    assert f"-machinefile {tmp_path / 'work' / MACHINEFILE_NAME} -n 8 -ppn 4" in line
    assert f"-bootstrap rsh -bootstrap-exec {tmp_path / 'support' / 'rsh-agent'}" in line
    assert "-iface lo" in line
    # Each rank keeps its own node's environment; TCP between the simulated nodes, on loopback.
    rank_env = "-genv FI_TCP_IFACE lo -genv FI_SOCKETS_IFACE lo -genv FI_PROVIDER tcp -genv I_MPI_FABRICS ofi"
    assert f"-genvnone {rank_env}" in line
    assert "--mca" not in line and "--hostfile" not in line
    assert machinefile_text(ctx) == "127.0.0.2:4\n127.0.0.3:4\n"
    assert "-genv NCCL_DEBUG INFO -genvlist PATH" in " ".join(launcher_for("horovod").intel_mpirun_argv(ctx))


def test_mpirun_is_the_one_the_jobs_own_path_finds_first(tmp_path: Path) -> None:
    bin_dir = tmp_path / "intel" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "mpirun").write_text("#!/bin/sh\n")
    (bin_dir / "mpirun").chmod(0o755)
    ctx = context(tmp_path, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert launcher_for("mpi").intel_mpirun_argv(ctx)[0] == str(bin_dir / "mpirun")
    assert launcher_for("mpi").mpirun_argv(ctx)[0] == str(bin_dir / "mpirun")
    assert launcher_for("mpi").intel_mpirun_argv(context(tmp_path))[0] != str(bin_dir / "mpirun")


def test_a_job_running_its_own_mpirun_gets_intel_mpis_bootstrap_variables(tmp_path: Path) -> None:
    env = launcher_for("mpi").job_environment(context(tmp_path, env={"AZ_BATCHAI_OWN_MPIRUN": "1"}))
    agent = str(tmp_path / "support" / "rsh-agent")
    assert (env["I_MPI_HYDRA_BOOTSTRAP"], env["I_MPI_HYDRA_BOOTSTRAP_EXEC"]) == ("rsh", agent)
    assert env["I_MPI_HYDRA_IFACE"] == env["FI_TCP_IFACE"] == "lo"
    assert (env["FI_PROVIDER"], env["I_MPI_FABRICS"]) == ("tcp", "ofi")
    assert env["OMPI_MCA_plm_rsh_agent"] == f"{agent} : /bin/false"  # the same job file may run on Open MPI too


def _run_with_stand_in(tmp_path: Path, version: str) -> str:
    """Rank 0's script with an `mpirun` that answers --version with `version` and prints its argv."""
    bin_dir = tmp_path / f"bin-{len(version)}"
    bin_dir.mkdir()
    stand_in = bin_dir / "mpirun"
    stand_in.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo "{version}"; exit 0; fi\necho "ARGV $*"\n')
    stand_in.chmod(0o755)
    script = launcher_for("mpi").launch_script(context(tmp_path), "mpirun")
    done = subprocess.run(
        ["/bin/sh", "-c", script, "trainyard-mpi", "/bin/sh", "-c", "python train.py"],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return done.stdout


def test_the_node_runs_intel_flags_when_mpirun_is_intel_mpi_and_open_mpi_flags_otherwise(tmp_path: Path) -> None:
    intel = _run_with_stand_in(tmp_path, INTEL_VERSION)
    assert intel.startswith("ARGV -machinefile ") and " -ppn 4 -bootstrap rsh " in intel
    assert intel.rstrip().endswith("/bin/sh -c python train.py")
    openmpi = _run_with_stand_in(tmp_path, OPEN_MPI_VERSION)
    assert openmpi.startswith("ARGV --hostfile ") and "--mca plm_rsh_agent" in openmpi
    assert "-bootstrap" not in openmpi


# Intel MPI's libmpi.so.12 through ctypes (the wheel ships no mpi.h): MPICH's ABI handles.
ALLREDUCE = r"""
import ctypes, os, sys
lib = ctypes.CDLL("libmpi.so.12")
COMM_WORLD, MPI_INT, MPI_SUM = 0x44000000, 0x4C000405, 0x58000003
if lib.MPI_Init(None, None) != 0:
    sys.exit("MPI_Init failed")
rank, size = ctypes.c_int(), ctypes.c_int()
lib.MPI_Comm_rank(COMM_WORLD, ctypes.byref(rank))
lib.MPI_Comm_size(COMM_WORLD, ctypes.byref(size))
mine, total = ctypes.c_int(rank.value + 1), ctypes.c_int()
lib.MPI_Allreduce(ctypes.byref(mine), ctypes.byref(total), 1, MPI_INT, MPI_SUM, COMM_WORLD)
# The node whose part ran this rank's Hydra proxy (its environment, whatever mpirun forwarded to us).
parent = dict(
    item.split("=", 1) for item in open(f"/proc/{os.getppid()}/environ").read().split("\0") if "=" in item
)
lines = []
if rank.value == 0:
    version, length = ctypes.create_string_buffer(8192), ctypes.c_int()
    lib.MPI_Get_library_version(version, ctypes.byref(length))
    lines.append("LIBRARY " + version.value.decode().splitlines()[0])
lines.append(
    f"rank {rank.value} of {size.value} node {os.environ.get('TRAINYARD_NODE_RANK')} "
    f"proxy-node {parent.get('TRAINYARD_NODE_RANK')} sum {total.value}"
)
# One write: Hydra merges the ranks' output as it reads it, and print() under PYTHONUNBUFFERED
# writes each piece of a line on its own.
os.write(1, "".join(line + "\n" for line in lines).encode())
lib.MPI_Finalize()
"""
RANK_LINE = re.compile(r"^rank (\d+) of (\d+) node (\S+) proxy-node (\S+) sum (\d+)$", re.M)


def _ranks(output: str) -> list[tuple[int, int, str, str, int]]:
    found = [(int(r), int(n), node, proxy, int(s)) for r, n, node, proxy, s in RANK_LINE.findall(output)]
    return sorted(found)


@pytest.mark.integration
def test_a_two_node_gang_allreduces_with_intel_mpi_through_the_rsh_agent(
    make_gang: Callable[..., Gang], tmp_path: Path
) -> None:
    intel_env = components.require_intel_mpi()
    program_path = tmp_path / "allreduce.py"
    program_path.write_text(ALLREDUCE)
    spec = {
        "launcher": "mpi",
        "command": f"{sys.executable} {program_path}",
        "processes_per_node": 2,
        "env": {**intel_env, "I_MPI_DEBUG": "5"},
    }
    gang = make_gang(spec, nodes=2)
    codes = gang.start().wait(timeout_s=180)

    assert codes == [0, 0], gang.describe()
    out = gang.all_stdout()
    assert "LIBRARY Intel(R) MPI Library 2021.19" in out, gang.describe()
    assert "libfabric provider: tcp" in out, gang.describe()  # I_MPI_DEBUG=5: TCP between the nodes
    # Ranks 0-1 on node 0, 2-3 on node 1, each with its own node's environment (-genvnone), sum 1+2+3+4.
    assert _ranks(out) == [(r, 4, str(r // 2), str(r // 2), 10) for r in range(4)], gang.describe()
    assert gang.leftover_processes() == []


@pytest.mark.integration
@pytest.mark.parametrize("hosts", ["-hostfile $AZ_BATCHAI_MPI_HOST_FILE", "-ppn 2 -hosts $AZ_BATCH_HOST_LIST"])
def test_a_custom_toolkit_job_runs_its_own_intel_mpirun_over_two_nodes(
    make_gang: Callable[..., Gang], tmp_path: Path, hosts: str
) -> None:
    intel_env = components.require_intel_mpi()
    program_path = tmp_path / "allreduce.py"
    program_path.write_text(ALLREDUCE)
    command = f"cat $AZ_BATCHAI_MPI_HOST_FILE; mpirun -n 4 {hosts} {sys.executable} {program_path}"
    doc = {"properties": {"nodeCount": 2, "customToolkitSettings": {"commandLine": command}}}
    spec, _warnings = batchai_to_spec(doc, name="own-intel-mpirun", slots=2)
    spec["env"].update(intel_env)
    gang = make_gang(spec, nodes=2)
    codes = gang.start().wait(timeout_s=180)

    assert codes == [0, 0], gang.describe()
    out = gang.stdout(0)
    assert f"{gang.hosts[0]}:2\n{gang.hosts[1]}:2\n" in out  # Hydra's machine file, not Open MPI's slots=
    assert "LIBRARY Intel(R) MPI Library 2021.19" in out, gang.describe()
    # The job's own mpirun forwards its environment to every rank (Hydra's default, as on Batch AI):
    # where each rank ran is told by its proxy, which trainyard started in that node's part.
    assert [(r, n, proxy, s) for r, n, _node, proxy, s in _ranks(out)] == [(r, 4, str(r // 2), 10) for r in range(4)], (
        gang.describe()
    )
    assert gang.leftover_processes() == []


@pytest.mark.integration
def test_a_killed_intel_mpi_rank_fails_the_attempt_and_leaves_no_process(make_gang: Callable[..., Gang]) -> None:
    intel_env = components.require_intel_mpi()
    spec = {
        "launcher": "mpi",
        "command": 'echo "started $TRAINYARD_NODE_RANK"; sleep 301',
        "processes_per_node": 1,
        "env": intel_env,
    }
    gang = make_gang(spec, nodes=2)
    gang.start()
    gang.wait_for_output("started 1")
    victims = [p for p in psutil.process_iter(["cmdline", "environ"]) if _is_rank_sleep(p, gang.job_id, "1")]
    assert len(victims) == 1, gang.describe()
    victims[0].send_signal(signal.SIGKILL)
    codes = gang.wait(timeout_s=120)

    assert codes[0] == 137, gang.describe()  # Hydra's mpirun ends with the killed rank's status, as Open MPI's does
    assert gang.leftover_processes() == []


def _is_rank_sleep(proc: psutil.Process, job_id: str, node_rank: str) -> bool:
    try:
        env = proc.info["environ"] or {}
        return bool(
            proc.info["cmdline"] == ["sleep", "301"]
            and env.get("TRAINYARD_JOB_ID") == job_id
            and env.get("TRAINYARD_NODE_RANK") == node_rank
        )
    except (psutil.Error, TypeError):
        return False
