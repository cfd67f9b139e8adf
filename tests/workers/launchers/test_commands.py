"""What each launcher asks the node to run, checked without running it: argv, environment, ports, mounts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trainyard.workers.launchers import LaunchContext, gang_token, launcher_for
from trainyard.workers.launchers.container import ContainerRuntime, container_environment
from trainyard.workers.launchers.mpi import hostfile_text, with_session_base
from trainyard.workers.launchers.ray import PORTS_PER_NODE, ray_ports
from trainyard.workers.launchers.rsh_agent import parse
from trainyard.workers.launchers.tools import GANG_INTERFACES_ENV, gang_interfaces


def context(
    tmp_path: Path, rank: int = 0, hosts: tuple[str, ...] = ("127.0.0.2", "127.0.0.3"), **spec: Any
) -> LaunchContext:
    return LaunchContext(
        job_id="j1",
        name="n",
        attempt=2,
        rank=rank,
        num_nodes=len(hosts),
        node_hosts=list(hosts),
        node_address=hosts[rank],
        spec={"command": "python train.py", "processes_per_node": 2, **spec},
        gpus=[],
        workdir=tmp_path / "work",
        checkpoint_dir=tmp_path / "ckpt",
        master_port=23456,
        support_dir=tmp_path / "support",
    )


def test_hostfile_lists_every_node_of_the_gang_with_its_slots(tmp_path: Path) -> None:
    assert hostfile_text(context(tmp_path)) == "127.0.0.2 slots=2\n127.0.0.3 slots=2\n"


def test_mpirun_starts_daemons_through_the_rsh_agent_on_loopback_interfaces(tmp_path: Path) -> None:
    argv = launcher_for("mpi").mpirun_argv(context(tmp_path))
    line = " ".join(argv)
    assert argv[0].endswith("mpirun")
    # The other nodes' daemons, which get the same parameters, find /bin/false instead of rank 0's agent.
    assert f"--mca plm_rsh_agent {tmp_path / 'support' / 'rsh-agent'} : /bin/false" in line
    assert "--mca plm_rsh_no_tree_spawn 1" in line
    assert "-np 4" in line
    assert "--mca btl tcp,self --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo" in line
    # Each rank enters its own node's working directory, then runs the command.
    full = launcher_for("mpi").argv(context(tmp_path))
    assert full[-7:-3] == ["/bin/sh", "-c", 'cd "$TRAINYARD_PART_WORKDIR" && exec "$@"', "trainyard-rank"]
    assert full[-3:] == ["/bin/sh", "-c", "python train.py"]


def test_a_daemon_started_on_another_node_keeps_its_session_files_in_that_node_s_part(tmp_path: Path) -> None:
    command = "/usr/bin/orted -mca ess env -mca orte_tmpdir_base /tmp/trainyard-rank0/ompi -mca plm rsh"
    own = tmp_path / "support" / "ompi"
    assert with_session_base(command, own) == f"/usr/bin/orted -mca ess env -mca orte_tmpdir_base {own} -mca plm rsh"
    assert with_session_base("/usr/bin/orted -mca ess env", own) == "/usr/bin/orted -mca ess env"


def test_torchrun_on_a_network_gang_names_the_interface_of_the_node_s_own_address(tmp_path: Path) -> None:
    ctx = context(tmp_path, hosts=("10.0.0.1", "10.0.0.2"))
    ctx.node_address = "127.0.0.1"  # an address this machine has: its interface is lo
    env = launcher_for("torchrun").job_environment(ctx)
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "lo"


def test_gang_interfaces_are_configurable_and_loopback_only_for_loopback_gangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert gang_interfaces(["127.0.0.2", "127.0.0.3"]) == ["lo"]
    assert gang_interfaces(["10.0.0.1", "10.0.0.2"]) == []
    monkeypatch.setenv(GANG_INTERFACES_ENV, "eth1, ib0")
    assert gang_interfaces(["10.0.0.1"]) == ["eth1", "ib0"]


def test_mpi_on_other_nodes_waits_for_spawns_instead_of_running_mpirun(tmp_path: Path) -> None:
    argv = launcher_for("mpi").argv(context(tmp_path, rank=1))
    assert "mpirun" not in " ".join(argv)


def test_horovod_adds_horovodruns_flags(tmp_path: Path) -> None:
    line = " ".join(launcher_for("horovod").argv(context(tmp_path)))
    assert "--mca pml ob1" in line
    assert "-x NCCL_DEBUG=INFO" in line
    assert "-x PATH" in line


def test_mpi_environment_names_the_hostfile_and_allows_root(tmp_path: Path) -> None:
    env = launcher_for("mpi").job_environment(context(tmp_path))
    assert env["TRAINYARD_HOSTFILE"] == str(tmp_path / "work" / ".trainyard-hostfile")
    assert env["TRAINYARD_PART_WORKDIR"] == str(tmp_path / "work")


def test_ray_ports_differ_between_the_nodes_of_a_gang_and_stay_in_range() -> None:
    # 31990: the gang's blocks reach the ceiling and go on from the floor, by whole blocks.
    masters = (23456, 39999, 31990, 31999, 20000)
    ports = [ray_ports(master_port, rank) for master_port in masters for rank in range(4)]
    for i in range(len(masters)):
        block = ports[4 * i : 4 * i + 4]
        used = [port for p in block for port in vars(p).values()]
        assert len(used) == len(set(used))
        assert all(20000 <= port < 32000 for port in used)  # below Linux's ephemeral ports
        assert all(p.min_worker < p.max_worker for p in block)  # Ray refuses a range that is not ascending
    assert ports[1].node_manager - ports[0].node_manager == PORTS_PER_NODE


def test_ray_head_runs_the_job_and_workers_join_it_with_the_gang_token(tmp_path: Path) -> None:
    ctx = context(tmp_path, rank=1)
    ctx.gang_token = gang_token("k" * 32, "j1", 2)
    launcher = launcher_for("ray")
    argv = launcher.argv(ctx)
    assert argv[argv.index("--role") + 1] == "worker"
    assert argv[argv.index("--head") + 1] == f"127.0.0.2:{ray_ports(23456, 0).gcs}"
    assert "--ray-arg=--node-ip-address" in argv and "--ray-arg=127.0.0.3" in argv
    assert "--ray-arg=--include-dashboard=false" not in argv  # a head-only flag
    env = launcher.job_environment(ctx)
    assert env["RAY_ADDRESS"] == f"127.0.0.2:{ray_ports(23456, 0).gcs}"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert (env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN"]) == ("token", ctx.gang_token)
    head = launcher.argv(context(tmp_path, rank=0))
    assert "--ray-arg=--include-dashboard=false" in head


def test_gang_token_is_shared_by_a_gang_and_differs_between_attempts() -> None:
    assert gang_token("key", "j1", 1) == gang_token("key", "j1", 1)
    assert gang_token("key", "j1", 1) != gang_token("key", "j1", 2)
    assert gang_token("key", "j1", 1) != gang_token("other", "j1", 1)
    assert gang_token(None, "j1", 1) == ""


def test_torchrun_uses_static_rendezvous_at_node_rank_zero(tmp_path: Path) -> None:
    argv = launcher_for("torchrun").argv(context(tmp_path, rank=1))
    line = " ".join(argv)
    assert "--nnodes 2 --nproc-per-node 2 --node-rank 1 --master-addr 127.0.0.2 --master-port 23456" in line
    assert '--max-restarts 0 --no-python "$@"' in line  # the command comes after the runner script
    assert argv[-4:] == ["trainyard-torchrun", "/bin/sh", "-c", "python train.py"]
    assert "torch.distributed.run" in " ".join(launcher_for("torchrun").torchrun_argv(context(tmp_path)))
    env = launcher_for("torchrun").job_environment(context(tmp_path))
    assert env["GLOO_SOCKET_IFNAME"] == "lo"


def test_rsh_agent_reads_the_host_then_the_command_like_ssh() -> None:
    assert parse(["127.0.0.3", "", "orted", "-mca", "ess", '"env"']) == ("127.0.0.3", 'orted -mca ess "env"')
    assert parse(["-x", "node", "true"]) == ("node", "true")
    with pytest.raises(ValueError):
        parse([])


def test_containers_are_unprivileged_without_engine_socket_and_mount_the_jobs_paths(tmp_path: Path) -> None:
    ctx = context(tmp_path, image="img")
    ctx.gpus = [2, 3]
    (tmp_path / "in.txt").write_text("x")
    env = {"TRAINYARD_INPUT_DATA": str(tmp_path / "in.txt"), "TRAINYARD_OUTPUT_RESULT": str(tmp_path / "out")}
    (tmp_path / "out").mkdir()
    options = ContainerRuntime("img")._options(ctx, ["/bin/sh", "-c", "true"], env, "main")

    assert options["privileged"] is False
    assert options["cap_drop"] == ["ALL"]
    assert "SYS_ADMIN" not in options["cap_add"] and "NET_RAW" not in options["cap_add"]
    assert options["security_opt"] == ["no-new-privileges"]
    assert options["network_mode"] == "host"  # a gang's nodes reach each other as without containers
    mounts = options["volumes"]
    assert not any("docker.sock" in path or "podman.sock" in path for path in mounts)
    assert mounts[str(tmp_path / "work")]["mode"] == "rw"
    assert mounts[str(tmp_path / "ckpt")]["mode"] == "rw"
    assert mounts[str(tmp_path / "in.txt")] == {"bind": str(tmp_path / "in.txt"), "mode": "ro"}
    assert mounts[str(tmp_path / "out")]["mode"] == "rw"
    assert options["working_dir"] == str(tmp_path / "work")
    assert options["labels"]["trainyard.job"] == "j1"
    (request,) = options["device_requests"]
    assert request["DeviceIDs"] == ["2", "3"]
    assert request["Capabilities"] == [["gpu"]]


def test_containers_see_their_gpus_renumbered_from_zero(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    ctx.gpus = [2, 3]
    env = container_environment(ctx, {"CUDA_VISIBLE_DEVICES": "2,3"})
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "2,3"


def test_unknown_launchers_are_refused() -> None:
    with pytest.raises(ValueError, match="slurm"):
        launcher_for("slurm")
