"""Intel MPI: told apart from Open MPI on the node by `mpirun --version`, and launched with its own flags.

Intel MPI cannot be installed here (no registry has it), so its argv and environment are checked as
built, and the choice between the two flag sets is made by the real shell script a part runs, with a
stand-in `mpirun` on PATH that answers --version as each implementation does and prints what it was given.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

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
    assert "--mca" not in line and "--hostfile" not in line
    assert machinefile_text(ctx) == "127.0.0.2:4\n127.0.0.3:4\n"
    assert "-genv NCCL_DEBUG INFO" in " ".join(launcher_for("horovod").intel_mpirun_argv(ctx))


def test_a_job_running_its_own_mpirun_gets_intel_mpis_bootstrap_variables(tmp_path: Path) -> None:
    env = launcher_for("mpi").job_environment(context(tmp_path, env={"AZ_BATCHAI_OWN_MPIRUN": "1"}))
    agent = str(tmp_path / "support" / "rsh-agent")
    assert (env["I_MPI_HYDRA_BOOTSTRAP"], env["I_MPI_HYDRA_BOOTSTRAP_EXEC"]) == ("rsh", agent)
    assert env["I_MPI_HYDRA_IFACE"] == env["FI_TCP_IFACE"] == "lo"
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
