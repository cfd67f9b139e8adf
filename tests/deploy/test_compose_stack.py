"""docker-compose.yml for real: the images built, the stack run by podman-compose, used from outside.

The images come from scripts/build-images.sh (a Debian base from debootstrap; redis, postgres and
azurite are test stand-ins built from Debian packages and npm under the names the compose file
uses). The stack runs under its own compose project name, with its own .env-style file (fresh
secrets, free ports on 127.0.0.1), and everything it made is removed at the end: containers,
network and volumes. The tests run in order and share the stack.

podman 4.3 has no health checks without systemd, and podman-compose ignores `service_healthy`
before podman 4.6: the fixture starts redis, postgres and azurite first and waits for them with
the compose file's own health-check commands, then brings up the rest (as README "Run a cluster").
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import free_port, unavailable
from tests.test_compose import env_example
from trainyard.client import Client

# The first test also waits for the images (built before pytest by `make test`; cold, ~7 min).
pytestmark = [pytest.mark.deploy, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
# One compose project per test process: two test runs on one machine never touch each other's
# stack; a stack whose process is gone (an interrupted run) is removed by the next run.
PROJECT_PREFIX = "trainyard-deploy-test-"
PROJECT = f"{PROJECT_PREFIX}{os.getpid()}"
BASE_IMAGE = "localhost/trainyard-base:bookworm"
BACKING = ("redis", "postgres", "azurite")
WORKERS = ("worker-1", "worker-2")
SCHEDULERS = ("scheduler-1", "scheduler-2")


def _progress(message: str) -> None:
    sys.__stderr__.write(f"[deploy {time.strftime('%H:%M:%S')}] {message}\n")
    sys.__stderr__.flush()


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Stack:
    """The compose project: podman-compose with this test's env file, podman for the rest."""

    def __init__(self, compose_bin: str, env_file: Path, env: dict[str, str], containers_conf: Path):
        self.compose_bin = compose_bin
        self.env_file = env_file
        self.values = env
        self.proc_env = {**os.environ, "CONTAINERS_CONF": str(containers_conf)}
        self.api = f"http://127.0.0.1:{env['TRAINYARD_API_PORT']}"
        self.flower = f"http://127.0.0.1:{env['FLOWER_PORT']}"

    def run(self, args: list[str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            args, env=self.proc_env, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
        )
        if check and result.returncode != 0:
            output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            raise AssertionError(f"{args} failed ({result.returncode}):\n{output}")
        return result

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        base = [self.compose_bin, "--in-pod", "false", "--env-file", str(self.env_file), "-p", PROJECT]
        base += ["-f", "docker-compose.yml"]
        return self.run([*base, *args], timeout=timeout, check=check)

    def podman(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["podman", *args], timeout=timeout, check=check)

    def container(self, service: str) -> str:
        names = self.podman(
            "ps", "-a", "--format", "{{.Names}}",
            "--filter", f"label=io.podman.compose.project={PROJECT}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).stdout.split()  # fmt: skip
        assert len(names) == 1, (service, names)
        return names[0]

    def logs(self, service: str) -> str:
        result = self.podman("logs", self.container(service), check=False)
        return result.stdout + result.stderr

    def up(self) -> None:
        """Backing services first, waited for with the compose file's health checks; then the rest.

        `--no-deps`: podman 4.3 cannot start a container whose `--requires` reach a container
        outside the start (already running ones included); the two steps keep the order.
        """
        t0 = time.monotonic()
        self.compose("up", "-d", "--no-deps", *BACKING)
        for service in BACKING:
            name = self.container(service)
            wait_until(
                lambda name=name: self.podman("healthcheck", "run", name, check=False).returncode == 0,
                120,
                f"{service} to be healthy",
                every_s=1,
            )
        self.compose("up", "-d", "--no-deps")
        wait_until(lambda: httpx.get(f"{self.api}/healthz", timeout=3).json()["ok"], 180, "the API", every_s=1)
        self.wait_nodes_up(set(WORKERS))
        _progress(f"stack up in {time.monotonic() - t0:.0f} s")

    def client(self) -> Client:
        return Client(self.api, token=self.values["TRAINYARD_ADMIN_TOKEN"])

    def nodes_up(self) -> set[str]:
        reply = httpx.get(
            f"{self.api}/v1/nodes", headers={"Authorization": f"Bearer {self.values['TRAINYARD_ADMIN_TOKEN']}"}
        )
        return {n["id"] for n in reply.json()["nodes"] if n["state"] == "up"}

    def wait_nodes_up(self, wanted: set[str], timeout_s: float = 120) -> None:
        wait_until(lambda: wanted <= self.nodes_up(), timeout_s, f"nodes {sorted(wanted)} up", every_s=1)

    def leader(self) -> str | None:
        """The scheduler service whose latest lease message says it leads."""
        latest: tuple[str, str] | None = None
        for service in SCHEDULERS:
            result = self.podman("logs", "--timestamps", self.container(service), check=False)
            for line in (result.stdout + result.stderr).splitlines():
                if " leads (epoch" in line and (latest is None or line > latest[1]):
                    latest = (service, line)
        return latest[0] if latest else None

    def leftovers(self, project: str = PROJECT) -> dict[str, list[str]]:
        label = f"label=io.podman.compose.project={project}"
        found = {
            "containers": self.podman("ps", "-a", "-q", "--filter", label).stdout.split(),
            "volumes": self.podman("volume", "ls", "-q", "--filter", label).stdout.split(),
            "networks": [
                n
                for n in self.podman("network", "ls", "--format", "{{.Name}}").stdout.split()
                if n.startswith(f"{project}_")
            ],
        }
        return {kind: items for kind, items in found.items() if items}

    def tear_down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "-t", "5", check=False, timeout=180)
        self.remove(PROJECT)

    def remove_stale(self) -> None:
        """Stacks of earlier test processes that are gone (killed before their teardown)."""
        listed = self.podman("ps", "-a", "--format", '{{index .Labels "io.podman.compose.project"}}').stdout
        volumes = self.podman("volume", "ls", "--format", '{{index .Labels "io.podman.compose.project"}}').stdout
        for project in set((listed + volumes).split()):
            pid = project.removeprefix(PROJECT_PREFIX)
            if project.startswith(PROJECT_PREFIX) and pid.isdigit() and not _alive(int(pid)):
                _progress(f"removing the stale stack {project}")
                self.remove(project)

    def remove(self, project: str) -> None:
        left = self.leftovers(project)
        for container in left.get("containers", []):
            self.podman("rm", "-f", "-t", "2", container, check=False)
        for volume in left.get("volumes", []):
            self.podman("volume", "rm", "-f", volume, check=False)
        for network in left.get("networks", []):
            self.podman("network", "rm", "-f", network, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _env_file(path: Path) -> dict[str, str]:
    """The .env of README "Run a cluster": .env.example with fresh secrets and free loopback ports."""
    from cryptography.fernet import Fernet

    values = env_example()
    for name in ("TRAINYARD_ADMIN_TOKEN", "REDIS_PASSWORD", "POSTGRES_PASSWORD"):
        values[name] = secrets.token_urlsafe(24)
    values["TRAINYARD_SECRET_KEY"] = Fernet.generate_key().decode()
    values["FLOWER_BASIC_AUTH"] = f"admin:{secrets.token_urlsafe(16)}"
    values["TRAINYARD_API_PORT"] = str(free_port())
    values["FLOWER_PORT"] = str(free_port())
    values["WORKER_BASE_IMAGE"] = BASE_IMAGE
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return values


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if os.geteuid() != 0 or not shutil.which("podman"):
        unavailable("the compose stack needs root and podman (scripts/install-podman.sh)")
    t0 = time.monotonic()
    _progress("images (scripts/build-images.sh; cached)")
    built = subprocess.run(
        ["nice", "-n", "10", "bash", str(ROOT / "scripts" / "build-images.sh")],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    _progress(f"images ready in {time.monotonic() - t0:.0f} s")
    compose_bin = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-podman-compose.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    env_path = tmp_path_factory.mktemp("deploy") / "stack.env"
    stack = Stack(compose_bin, env_path, _env_file(env_path), ROOT / ".test-services" / "images" / "containers.conf")
    stack.remove_stale()
    try:
        stack.up()
        yield stack
    finally:
        t1 = time.monotonic()
        stack.tear_down()
        _progress(f"stack removed in {time.monotonic() - t1:.0f} s")
    assert stack.leftovers() == {}


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[Client]:
    with stack.client() as c:
        yield c


def _cli(stack: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env |= {
        "TRAINYARD_HOME": str(stack.env_file.parent / "cli-home"),
        "TRAINYARD_API_URL": stack.api,
        "TRAINYARD_TOKEN": stack.values["TRAINYARD_ADMIN_TOKEN"],
    }
    return subprocess.run(
        [sys.executable, "-m", "trainyard", *args], env=env, capture_output=True, timeout=timeout, check=False
    )


def test_every_service_runs_and_only_loopback_is_published(stack: Stack) -> None:
    services = ["api", "flower", *SCHEDULERS, *WORKERS, *BACKING]
    inspect = json.loads(stack.podman("inspect", *[stack.container(s) for s in services]).stdout)
    for container in inspect:
        assert container["State"]["Running"], container["Name"]
        assert not container["HostConfig"].get("Privileged"), container["Name"]
        binds = container["HostConfig"].get("Binds") or []
        assert not any("docker.sock" in b or "podman.sock" in b for b in binds), binds
        published = [b for bs in (container["HostConfig"].get("PortBindings") or {}).values() for b in bs or []]
        assert all(b["HostIp"] == "127.0.0.1" for b in published), published
        assert bool(published) == (container["Name"].endswith(("_api_1", "_flower_1"))), published
    assert httpx.get(f"{stack.api}/v1/nodes").status_code == 401
    user, password = stack.values["FLOWER_BASIC_AUTH"].split(":", 1)
    wait_until(lambda: httpx.get(f"{stack.flower}/healthcheck", timeout=3).status_code == 200, 60, "Flower")
    assert httpx.get(f"{stack.flower}/api/workers", timeout=5).status_code == 401
    assert httpx.get(f"{stack.flower}/api/workers", auth=(user, password), timeout=10).status_code == 200
    assert wait_until(stack.leader, 60, "a scheduler to lead") in SCHEDULERS
    # Redis keeps an AOF and wants its password.
    redis = stack.container("redis")
    assert stack.podman("exec", redis, "redis-cli", "config", "get", "appendonly").stdout.split() == [
        "appendonly",
        "yes",
    ]
    denied = stack.podman("exec", "-e", "REDISCLI_AUTH=", redis, "redis-cli", "ping", check=False)
    assert "NOAUTH" in denied.stdout + denied.stderr


def test_a_job_from_the_cli_and_a_two_node_gang_run_with_their_logs(stack: Stack, client: Client) -> None:
    # Code from this machine and an output in the cluster's store: nothing shared with the nodes
    # but the network (their /tmp, home and code cache are their containers' own).
    work = stack.env_file.parent / "hello"
    (work / "src").mkdir(parents=True)
    (work / "src" / "hello.sh").write_text("for i in 1 2 3; do echo hello-$i; sleep 0.5; done; hostname\n")
    spec = work / "hello.yaml"
    spec.write_text(
        "name: hello\ncode: ./src\n"
        "outputs: [{id: result, uri: 'az://trainyard/results/hello'}]\n"
        "command: 'sh hello.sh; cp hello.sh $TRAINYARD_OUTPUT_RESULT/'\n"
    )
    submitted = _cli(stack, "job", "submit", str(spec), "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    followed = _cli(stack, "job", "logs", job_id, "--follow")
    assert followed.returncode == 0, followed.stderr
    lines = followed.stdout.decode().split()
    assert lines[:3] == ["hello-1", "hello-2", "hello-3"] and lines[3] in WORKERS
    assert client.job(job_id).wait(timeout=60) == "succeeded"
    outputs = client.outputs(job_id)
    assert [(o["output"], Path(o["path"]).name) for o in outputs] == [("result", "hello.sh")], outputs

    rank_line = 'echo "rank $TRAINYARD_NODE_RANK of $TRAINYARD_NUM_NODES on $(hostname)"'
    gang = client.submit({"name": "gang", "nodes": 2, "command": rank_line})
    assert gang.wait(timeout=120) == "succeeded", gang.data
    assert sorted(gang.data["attempts"][-1]["nodes"]) == sorted(WORKERS)
    outputs = {gang.log_bytes(rank=r).decode().strip() for r in (0, 1)}
    assert {o.rsplit(" ", 1)[0] for o in outputs} == {"rank 0 of 2 on", "rank 1 of 2 on"}
    assert {o.rsplit(" ", 1)[1] for o in outputs} == set(WORKERS)


def test_a_sweep_through_the_published_port_runs_every_point_and_ranks_them(stack: Stack, client: Client) -> None:
    report = "import trainyard; trainyard.report(step=1, loss=abs({lr} - 0.01))"
    sweep = client.sweep(
        {"name": "deploy-lr{lr}", "command": ["python3", "-c", report], "max_retries": 0},
        grid={"lr": [0.1, 0.03, 0.01, 0.003]},
        max_concurrency=2,
    )
    assert sweep.wait(timeout=180) == "finished"
    assert sweep.counts["succeeded"] == 4, sweep.counts
    best = sweep.leaderboard("loss", top=4)
    assert [entry["params"]["lr"] for entry in best] == [0.01, 0.003, 0.03, 0.1]
    assert {client.job(entry["job_id"]).data["attempts"][-1]["nodes"][0] for entry in best} <= set(WORKERS)


def test_a_killed_worker_containers_job_runs_again_elsewhere(stack: Stack, client: Client) -> None:
    job = client.submit(
        {
            "name": "survivor",
            "command": 'echo "attempt $TRAINYARD_ATTEMPT on $(hostname)"; '
            'if [ "$TRAINYARD_ATTEMPT" = 1 ]; then sleep 600; fi',
        }
    )
    wait_until(lambda: job.refresh().state == "running" and job.data["attempts"][0]["nodes"], 60, "the job to run")
    victim = job.data["attempts"][0]["nodes"][0]
    survivor = next(w for w in WORKERS if w != victim)
    container = stack.container(victim)
    stack.podman("kill", container)
    killed_at = time.monotonic()
    assert job.wait(timeout=120) == "succeeded", job.data
    first, second = job.data["attempts"][:2]
    assert first["reason"] == "node_lost", first
    assert second["nodes"] == [survivor], second
    assert job.log_bytes().decode().strip() == f"attempt 2 on {survivor}"
    state = stack.podman("inspect", "--format", "{{.State.Status}}", container).stdout.strip()
    _progress(f"job ran again on {survivor} {time.monotonic() - killed_at:.0f} s after {victim} was killed ({state})")
    # The node comes back (compose brings the stopped container up again) and runs work again.
    stack.compose("up", "-d", "--no-deps", victim)
    stack.wait_nodes_up(set(WORKERS))


def test_restarting_the_leading_scheduler_hands_over_and_jobs_still_run(stack: Stack, client: Client) -> None:
    leader = wait_until(stack.leader, 60, "a scheduler to lead")
    other = next(s for s in SCHEDULERS if s != leader)
    stack.podman("restart", "-t", "5", stack.container(leader))
    wait_until(lambda: stack.leader() == other, 90, f"{other} to take the lease")
    jobs = [client.submit({"name": f"after-restart-{i}", "command": f"echo after-{i}"}) for i in range(4)]
    for i, job in enumerate(jobs):
        assert job.wait(timeout=90) == "succeeded", job.data
        assert job.log_bytes() == f"after-{i}\n".encode()
    assert stack.podman("inspect", "--format", "{{.State.Running}}", stack.container(leader)).stdout.strip() == "true"


def test_the_whole_stack_down_and_up_again_loses_nothing(stack: Stack, client: Client) -> None:
    before = {job.id: job for job in client.jobs(limit=100)}
    assert len(before) >= 7
    logs = {job_id: client.job(job_id).log_bytes() for job_id in before}
    states = {job_id: job.state for job_id, job in before.items()}
    # A job still waiting when everything goes down: it runs after the restart.
    pending = client.submit({"name": "across-restart", "pool": "nowhere-yet", "command": "echo late"})
    t0 = time.monotonic()
    stack.compose("down", "-t", "10", timeout=240)
    assert stack.podman("ps", "-q", "--filter", f"label=io.podman.compose.project={PROJECT}").stdout.strip() == ""
    stack.up()
    _progress(f"down and up again in {time.monotonic() - t0:.0f} s")
    with stack.client() as again:
        after = {job.id: job for job in again.jobs(limit=100)}
        assert set(before) <= set(after)
        assert {job_id: after[job_id].state for job_id in before} == states
        assert {job_id: again.job(job_id).log_bytes() for job_id in before} == logs
        assert again.job(pending.id).state == "queued"
        again.cancel(pending.id)
        fresh = again.submit({"name": "after-up", "command": "echo fresh"})
        assert fresh.wait(timeout=90) == "succeeded"
        assert fresh.log_bytes() == b"fresh\n"


def test_following_logs_live_through_the_published_port(stack: Stack, client: Client) -> None:
    job = client.submit({"name": "ticker", "command": "for i in $(seq 1 20); do echo tick-$i; sleep 0.2; done"})
    seen: list[tuple[float, str]] = []
    reader = threading.Thread(
        target=lambda: seen.extend((time.monotonic(), line.strip()) for line in client.job(job.id).logs(follow=True))
    )
    reader.start()
    reader.join(timeout=90)
    assert not reader.is_alive()
    assert [line for _, line in seen] == [f"tick-{i}" for i in range(1, 21)]
    assert seen[-1][0] - seen[0][0] > 2.0  # they arrived as they were printed, not all at the end


def test_the_docker_provider_scales_a_pool_with_the_real_worker_image(stack: Stack, client: Client) -> None:
    """The provider as the scheduler drives it, here from the test process: the Engine API socket
    stays out of every compose container (README: the provider's socket is the scheduler's only)."""
    from tests.test_compose import load_compose
    from tests.workers.launchers.components import docker_url
    from trainyard.scheduler.providers.docker import DockerProvider

    pool = f"elastic-{os.getpid()}"
    worker_env = load_compose(stack.values)["services"]["worker-1"]["environment"]
    provider = DockerProvider(
        base_url=docker_url(), image="localhost/trainyard-worker:latest", network=f"{PROJECT}_default", env=worker_env
    )
    nodes = [f"{pool}-1", f"{pool}-2"]
    try:
        for node_id in nodes:
            provider.start_node(pool, node_id, slots=2, gpus=0)
        stack.wait_nodes_up(set(nodes))
        assert sorted(n.node_id for n in provider.list_nodes(pool)) == nodes
        gang = client.submit({"name": "elastic-gang", "pool": pool, "nodes": 2, "command": "hostname"})
        assert gang.wait(timeout=120) == "succeeded", gang.data
        assert sorted(gang.data["attempts"][-1]["nodes"]) == nodes
        assert {gang.log_bytes(rank=r).decode().strip() for r in (0, 1)} == set(nodes)
    finally:
        for node_id in nodes:
            provider.stop_node(node_id)
        provider.client.close()
    assert provider.list_nodes(pool) == []
