"""The launcher contract: every launcher (and the container runtime) passes the same tests, on real components.

Real Open MPI, Ray, torch and Podman: nothing is mocked.

Gangs run on simulated nodes of this machine (127.0.0.2, 127.0.0.3); the launchers are driven
directly (tests/workers/launchers/gang.py), as the node agents would drive them.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from tests.workers.launchers import components
from tests.workers.launchers.gang import Gang

pytestmark = pytest.mark.integration

ENV_PROBE = (
    'echo "ENV rank=$TRAINYARD_NODE_RANK job=$TRAINYARD_JOB_ID nodes=$TRAINYARD_NUM_NODES '
    "hosts=$TRAINYARD_NODE_HOSTS secret=$TOKEN_X mine=$MY_VAR redis=${TRAINYARD_REDIS_URL:-unset} "
    'unbuffered=$PYTHONUNBUFFERED"; echo "to-stderr" >&2; sleep 1; exit 3'  # MPI aborts the other ranks at once
)


@dataclass(frozen=True)
class Case:
    """One launcher as the contract sees it: where its command runs and what it reports."""

    launcher: str
    nodes: int = 1
    processes_per_node: int = 1
    image: bool = False
    # Which node ranks run the job's command: every process of every node, or only the head (ray).
    command_on_head_only: bool = False
    # torchrun reports its own status (1) when a worker fails, not the worker's.
    reports_command_status: bool = True
    # What the rank-failure test kills on the last node: a command's `sleep`, or Ray's raylet.
    victim: str = "sleep 301"

    @property
    def id(self) -> str:
        container = "-container" if self.image else ""
        return f"{self.launcher}{container}-{self.nodes}x{self.processes_per_node}"

    @property
    def command_runs(self) -> int:
        return 1 if self.command_on_head_only else self.nodes * self.processes_per_node

    def spec(self, command: str, **extra: Any) -> dict[str, Any]:
        spec = {"launcher": self.launcher, "command": command, "processes_per_node": self.processes_per_node, **extra}
        if self.image:
            spec["image"] = components.TEST_IMAGE
        return spec

    def expected_status(self, command_status: int) -> int:
        return command_status if self.reports_command_status else 1


CASES = [
    Case("process"),
    Case("process", nodes=2),
    Case("mpi", nodes=2, processes_per_node=2),
    Case("horovod", nodes=2, processes_per_node=2),
    Case("ray", nodes=2, command_on_head_only=True, victim="raylet"),
    Case("torchrun", nodes=2, reports_command_status=False),
    Case("process", image=True),
]
GANG_CASES = [case for case in CASES if case.nodes > 1]


@pytest.fixture(params=CASES, ids=lambda case: case.id)
def case(request: pytest.FixtureRequest) -> Case:
    chosen: Case = request.param
    components.require(chosen.launcher)
    if chosen.image:
        request.getfixturevalue("docker_url")
    return chosen


@pytest.fixture(params=GANG_CASES, ids=lambda case: case.id)
def gang_case(request: pytest.FixtureRequest) -> Case:
    chosen: Case = request.param
    components.require(chosen.launcher)
    return chosen


def test_command_sees_the_job_environment_and_reports_its_status(
    case: Case, make_gang: Callable[..., Gang], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINYARD_REDIS_URL", "redis://:node-password@127.0.0.1:1/0")  # the node's, not the job's
    gang = make_gang(case.spec(ENV_PROBE, env={"MY_VAR": "v1"}, secrets={"TOKEN_X": "t0ps3cret"}), nodes=case.nodes)
    gang.start().wait(timeout_s=180)

    assert gang.attempt_status() == case.expected_status(3), gang.describe()
    lines = [line for line in gang.all_stdout().splitlines() if line.startswith("ENV ")]
    assert len(lines) == case.command_runs, gang.describe()
    hosts = ",".join(gang.hosts)
    for line in lines:
        assert f"job={gang.job_id} nodes={case.nodes} hosts={hosts} secret=t0ps3cret mine=v1" in line
        assert "redis=unset unbuffered=1" in line
    ranks = sorted(line.split()[1] for line in lines)
    expected = (
        ["rank=0"]
        if case.command_on_head_only
        else [f"rank={r}" for r in range(case.nodes) for _ in range(case.processes_per_node)]
    )
    assert ranks == expected
    assert "to-stderr" in gang.all_stderr()
    assert "to-stderr" not in gang.all_stdout()


def test_output_streams_while_the_command_runs(case: Case, make_gang: Callable[..., Gang]) -> None:
    gang = make_gang(
        case.spec('echo first; while [ ! -e "$TRAINYARD_OUTPUT_SHARED/go" ]; do sleep 0.1; done; echo second'),
        nodes=case.nodes,
    )
    gang.start()
    gang.wait_for_output("first")
    assert "second" not in gang.all_stdout()
    (gang.shared_dir / "go").touch()
    codes = gang.wait(timeout_s=120)
    assert codes[0] == 0, gang.describe()
    assert gang.all_stdout().count("second") == case.command_runs


def test_stop_ends_every_process_of_the_part_on_every_node(
    case: Case, make_gang: Callable[..., Gang], docker_engine: Any
) -> None:
    # A background child that escapes into its own session must end too.
    gang = make_gang(case.spec("setsid sleep 302 & echo started; sleep 301"), nodes=case.nodes)
    gang.start()
    gang.wait_for_output("started")
    time.sleep(0.5)
    gang.stop(grace_s=2.0)
    codes = gang.wait(timeout_s=90)

    assert all(code != 0 for code in codes), gang.describe()
    assert gang.leftover_processes() == []
    assert docker_engine.containers_of(gang.job_id) == []


def test_rank_failure_fails_the_attempt_and_leaves_no_process(gang_case: Case, make_gang: Callable[..., Gang]) -> None:
    gang = make_gang(gang_case.spec('echo "started $TRAINYARD_NODE_RANK"; sleep 301'), nodes=gang_case.nodes)
    gang.start()
    gang.wait_for_output("started" if gang_case.command_on_head_only else f"started {gang_case.nodes - 1}")
    victim = _process_of(gang, rank=gang_case.nodes - 1, cmdline=gang_case.victim)
    victim.send_signal(signal.SIGKILL)
    codes = gang.wait(timeout_s=120)

    if gang_case.launcher in ("mpi", "horovod"):
        assert codes[0] == 137, gang.describe()  # mpirun ends with the killed rank's status
    else:
        assert codes[-1] != 0, gang.describe()  # the killed rank's part failed; the others were stopped
    assert gang.leftover_processes() == []


def test_prepare_runs_on_every_node_before_the_command(case: Case, make_gang: Callable[..., Gang]) -> None:
    spec = case.spec("cat prepared.txt", prepare='echo "prepared on $TRAINYARD_NODE_RANK"; echo ready > prepared.txt')
    gang = make_gang(spec, nodes=case.nodes)
    codes = gang.start().wait(timeout_s=180)

    assert codes[0] == 0, gang.describe()
    for rank in range(case.nodes):
        assert f"prepared on {rank}" in gang.stdout(rank)
    assert gang.all_stdout().count("ready") == case.command_runs


def test_prepare_failure_fails_the_part_with_its_status_and_keeps_its_output(
    case: Case, make_gang: Callable[..., Gang]
) -> None:
    gang = make_gang(
        case.spec("echo should-not-run", prepare="echo preparing; echo oops >&2; exit 4"), nodes=case.nodes
    )
    codes = gang.start().wait(timeout_s=120)

    assert codes[0] == 4, gang.describe()
    assert gang.ranks[0].reason == "prepare_failed"
    assert "preparing" in gang.stdout(0)
    assert "oops" in gang.stderr(0)
    assert "should-not-run" not in gang.all_stdout()


def test_each_part_sees_exactly_the_gpus_it_was_given(make_gang: Callable[..., Gang]) -> None:
    gang = make_gang({"command": 'echo "gpus=$CUDA_VISIBLE_DEVICES"'}, nodes=2, gpus=[[1, 3], [0]])
    assert gang.start().wait(timeout_s=60) == [0, 0], gang.describe()
    assert gang.stdout(0).strip() == "gpus=1,3"
    assert gang.stdout(1).strip() == "gpus=0"


def _process_of(gang: Gang, rank: int, cmdline: str, timeout_s: float = 60.0) -> psutil.Process:
    """A process of the gang's part on node `rank` whose command line holds `cmdline`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in psutil.process_iter():
            try:
                env = proc.environ()
                if (
                    env.get("TRAINYARD_JOB_ID") == gang.job_id
                    and env.get("TRAINYARD_NODE_RANK") == str(rank)
                    and cmdline in " ".join(proc.cmdline())
                ):
                    return proc
            except (psutil.Error, OSError):
                continue
        time.sleep(0.1)
    raise AssertionError(f"no process {cmdline!r} of rank {rank}: {gang.describe()}")
