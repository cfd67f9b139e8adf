"""The `trainyard` command line (SPEC §6): service commands and user commands."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import httpx
import typer
from rich.table import Table

from trainyard.cli_output import EXIT_BAD_INPUT, EXIT_FAILURE, console, errors, fail, refuse
from trainyard.cli_sweeps import sweep_app
from trainyard.cli_workspaces import workspace_app
from trainyard.client import Client, SpecRejected, TrainyardError
from trainyard.datarefs import is_local_code
from trainyard.spec import TERMINAL_STATES, JobState, SpecError, load_spec_file

app = typer.Typer(
    help="trainyard: batch training jobs on your own GPU/CPU nodes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
job_app = typer.Typer(help="Submit, inspect and control jobs.", no_args_is_help=True)
node_app = typer.Typer(help="Nodes of the cluster.", no_args_is_help=True)
pool_app = typer.Typer(help="Pools of nodes.", no_args_is_help=True)
app.add_typer(job_app, name="job")
app.add_typer(node_app, name="node")
app.add_typer(pool_app, name="pool")
app.add_typer(sweep_app, name="sweep")
volume_app = typer.Typer(help="Named volumes that job specs refer to with `volume: NAME`.", no_args_is_help=True)
app.add_typer(volume_app, name="volume")
token_app = typer.Typer(help="API tokens: create (shown once), list, delete. Admin only.", no_args_is_help=True)
audit_app = typer.Typer(help="Who submitted, cancelled and drained what, and when. Admin only.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit")
app.add_typer(workspace_app, name="workspace")


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    fail(message, code)


def _problems(problems: list[dict[str, str]]) -> NoReturn:
    refuse("invalid job spec", problems)


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        errors.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)


def _translation_refused(exc: SpecError) -> NoReturn:
    """A Batch AI file refused: what it warned about so far, then every field it cannot honour; exit 2."""
    _warn(exc.warnings)
    _problems(exc.problems)


def _client() -> Client:
    return Client()


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# -- service commands ------------------------------------------------------------------------


@app.command()
def up(
    workers: Annotated[int, typer.Option(help="worker nodes to start (0: control plane only)")] = 2,
    slots: Annotated[int, typer.Option(help="job slots (CPUs) per node")] = 2,
    gpus: Annotated[int | None, typer.Option(help="GPUs declared per node (default: discovered)")] = None,
    port: Annotated[int, typer.Option(help="API port")] = 8642,
    flower: Annotated[bool, typer.Option(help="also start Flower (with generated basic-auth credentials)")] = False,
    flower_port: Annotated[int, typer.Option(help="Flower's port, with --flower")] = 5555,
    tls_cert: Annotated[Path | None, typer.Option(help="the API serves HTTPS with this PEM certificate")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="the PEM private key of --tls-cert")] = None,
) -> None:
    """Run everything on this machine, in the foreground, until Ctrl-C."""
    from trainyard.up import start_cluster

    if (tls_cert is None) != (tls_key is None):
        _fail("TLS needs both a certificate and its key (--tls-cert and --tls-key)")

    stopping, started = False, False

    def _stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True
        if not started:  # mid start-up: start_cluster stops what it had already started
            raise KeyboardInterrupt

    # Installed before anything starts, so that a SIGTERM during start-up leaves no process behind.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        cluster = start_cluster(
            workers=workers,
            slots=slots,
            gpus=gpus,
            port=port,
            flower_port=flower_port if flower else None,
            tls=(tls_cert, tls_key) if tls_cert and tls_key else None,
        )
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_FAILURE) from None
    except RuntimeError as exc:
        _fail(str(exc))
    started = True
    console.print(f"trainyard is up: API [bold]{cluster.api_url}[/bold], {workers} node(s)")
    console.print(f"admin token: {cluster.admin_token}", highlight=False)
    console.print(f"dashboard: {cluster.api_url}/ui (log in with a token, e.g. the admin token)", highlight=False)
    if cluster.flower_url:
        console.print(
            f"Flower: {cluster.flower_url} (basic auth {cluster.flower_auth}; also in {cluster.home / 'flower-auth'})",
            highlight=False,
        )
    console.print(f"(also in {cluster.home / 'api-url'} and {cluster.home / 'admin-token'}); Ctrl-C stops it")
    try:
        while not stopping:
            dead = cluster.dead()
            if dead:
                errors.print(f"[red]{', '.join(dead)} exited[/red]; see {cluster.home / 'logs'}")
                break
            time.sleep(0.5)
    finally:
        console.print("stopping…")
        cluster.stop()


@app.command()
def demo(workers: int = 2, slots: int = 2) -> None:
    """Start a local cluster, run a small sweep and a 2-node gang, show progress and logs, stop."""
    from trainyard.demo import run_demo

    raise typer.Exit(run_demo(workers=workers, slots=slots))


API_SHUTDOWN_GRACE_S = 5


@app.command()
def api(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8642,
    log_level: str = "warning",
    tls_cert: Annotated[Path | None, typer.Option(help="serve HTTPS with this PEM certificate (chain)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="the PEM private key of --tls-cert")] = None,
) -> None:
    """Serve the REST API (HTTPS with --tls-cert and --tls-key, or TRAINYARD_API_TLS_CERT/_KEY)."""
    import uvicorn

    from trainyard.api.app import create_app
    from trainyard.api.runtime import tune_gc
    from trainyard.config import load_settings
    from trainyard.db.engine import upgrade

    settings = load_settings()
    tls_cert, tls_key = tls_cert or settings.api_tls_cert, tls_key or settings.api_tls_key
    if (tls_cert is None) != (tls_key is None):
        _fail("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    upgrade(settings.database_url.get_secret_value())
    application = create_app(settings)
    tune_gc()  # bulk submits: see trainyard/api/runtime.py
    # On SIGTERM, requests in flight get API_SHUTDOWN_GRACE_S; log follows are then cut (the SDK
    # reconnects where it was), so a restart never waits on a follower.
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=API_SHUTDOWN_GRACE_S,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
    )


@app.command()
def scheduler(log_level: str = "INFO") -> None:
    """Run a scheduler (several may run: one leads, the others stand by)."""
    from trainyard.config import load_settings
    from trainyard.db.engine import upgrade
    from trainyard.scheduler.loop import Scheduler

    _setup_logging(log_level)
    settings = load_settings()
    upgrade(settings.database_url.get_secret_value())
    service = Scheduler(settings)
    signal.signal(signal.SIGTERM, lambda *_: service.stop_event.set())
    with contextlib.suppress(KeyboardInterrupt):
        service.run()


@app.command()
def flower(
    port: Annotated[int, typer.Option(help="port")] = 5555,
    address: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    basic_auth: Annotated[
        str | None, typer.Option("--basic-auth", help="user:pass (or FLOWER_BASIC_AUTH); required unless --no-auth")
    ] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="run Flower without any authentication")] = False,
) -> None:
    """Serve Flower on trainyard's Celery app: job parts appear as trainyard.run tasks."""
    from trainyard.config import load_settings, secret
    from trainyard.flower import FlowerAuthMissing, resolve_basic_auth, run_flower

    settings = load_settings()
    try:
        credentials = resolve_basic_auth(basic_auth, secret(settings.flower_basic_auth), no_auth)
    except FlowerAuthMissing as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    if credentials is None:
        errors.print("[yellow]warning:[/yellow] Flower runs without authentication (--no-auth)")
    run_flower(settings, address, port, credentials)


@app.command("storage-init")
def storage_init() -> None:
    """Create the blob container of an az:// TRAINYARD_STORAGE_URL when missing (docker-compose runs it once)."""
    from urllib.parse import urlsplit

    from trainyard.config import load_settings

    url = load_settings().storage_url
    parts = urlsplit(url)
    if parts.scheme == "az":
        from azure.core.exceptions import ResourceExistsError

        from trainyard.storage_adapters.azure_blob import _service_client

        with contextlib.suppress(ResourceExistsError):
            _service_client().create_container(parts.netloc)
    console.print(f"storage ready: {url}", highlight=False)


@app.command()
def worker(
    pool: Annotated[str, typer.Option(help="pool this node belongs to")] = "default",
    node_id: Annotated[str | None, typer.Option(help="node id (default: host name)")] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="address other nodes of a gang reach this one at (default: TRAINYARD_NODE_ADDRESS, else the "
            "address of the interface that routes to Redis; 127.0.0.2 when Redis is on loopback)"
        ),
    ] = None,
    slots: Annotated[int, typer.Option(help="job slots (CPUs)")] = 2,
    gpus: Annotated[int | None, typer.Option(help="GPUs to declare (default: discovered through NVML)")] = None,
    docker_url: Annotated[
        str | None, typer.Option(help="container engine API for image: jobs (default: DOCKER_HOST)")
    ] = None,
    host_volume: Annotated[
        list[str] | None,
        typer.Option(
            help="a host directory this node has (NFS, Lustre, a local disk), repeatable: jobs with a host volume "
            "at or under it may be placed here"
        ),
    ] = None,
    log_level: str = "WARNING",
) -> None:
    """Run a worker node: a Celery worker on queue node.<id> plus the node agent."""
    import socket

    from trainyard.config import load_settings
    from trainyard.workers.agent import NodeConfig
    from trainyard.workers.gpus import node_gpus
    from trainyard.workers.launchers.container import DOCKER_URL_ENV
    from trainyard.workers.node_address import default_node_address
    from trainyard.workers.service import run_worker

    _setup_logging(log_level)
    if docker_url:
        os.environ[DOCKER_URL_ENV] = docker_url  # read by the container runtime; never passed to jobs
    settings = load_settings()
    node = NodeConfig(
        node_id=node_id or socket.gethostname(),
        pool=pool,
        address=address or default_node_address(settings),
        slots=slots,
        gpus=node_gpus(gpus),
        host_volumes=_host_volumes(host_volume or []),
    )
    run_worker(settings, node, loglevel=log_level)


def _host_volumes(paths: list[str]) -> list[str]:
    """Declared host volumes as absolute, normalised paths; exit 2 for one that is not."""
    declared = []
    for path in paths:
        if not path.startswith("/"):
            _problems([{"field": "--host-volume", "reason": f"{path!r} is not an absolute path"}])
        declared.append(os.path.normpath(path))
    return sorted(set(declared))


# -- jobs ------------------------------------------------------------------------------------


def _apply_sets(data: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    for item in sets:
        if "=" not in item:
            _problems([{"field": "--set", "reason": f"{item!r} is not key=value"}])
        key, raw = item.split("=", 1)
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        target = data
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return data


_SWEEP_ID = re.compile(r"^s[0-9a-f]{12}$")
_CONDITIONS = ("succeeded", "ended", "failed")


def _after_dependency(value: str) -> dict[str, str]:
    """`--after ID[:succeeded|ended|failed]` as a `depends_on` entry (a sweep's id names the sweep)."""
    target, _, on = value.partition(":")
    on = on or "succeeded"
    if not target or on not in _CONDITIONS:
        _problems([{"field": "--after", "reason": f"{value!r} is not ID[:succeeded|ended|failed]"}])
    return {"sweep" if _SWEEP_ID.match(target) else "job": target, "on": on}


def _load_for_submit(
    file: Path,
    format_: str,
    sets: list[str],
    batchai: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read a spec file (ours or a Batch AI job file) and apply --set overrides; exit 2 on bad input."""
    try:
        data = load_spec_file(file)
    except SpecError as exc:
        _problems(exc.problems)
    except OSError as exc:
        _fail(f"cannot read {file}: {exc}", EXIT_BAD_INPUT)
    if format_ == "batchai":
        data = _from_batchai(file, data, batchai or {})
    elif format_ != "trainyard":
        _fail(f"--format must be trainyard or batchai, not {format_!r}", EXIT_BAD_INPUT)
    elif batchai and any(batchai.values()):
        _fail(
            "--volume, --pool, --gpus and --slots go with --format batchai (use --set for a trainyard spec)",
            EXIT_BAD_INPUT,
        )
    return _apply_sets(data, sets)


def _from_batchai(file: Path, data: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """A Batch AI job file as a trainyard spec (named after its envelope, else the file), warnings on stderr."""
    from trainyard.batchai import batchai_to_spec, envelope_name

    volumes: dict[str, str] = {}
    for item in options.get("volumes") or []:
        key, sep, target = item.partition("=")
        if not sep or not key or not target:
            _problems([{"field": "--volume", "reason": f"{item!r} is not KEY=TARGET"}])
        volumes[key] = target
    kwargs: dict[str, Any] = {
        "name": envelope_name(data) or file.stem,
        "gpus": options.get("gpus"),
        "volumes": volumes,
        "pool": options.get("pool"),
        "slots": options.get("slots"),
    }
    try:
        spec, warnings = batchai_to_spec(data, **kwargs)
        if kwargs["gpus"] is None:
            kwargs["gpus"], kwargs["gpus_note"] = _pool_gpus(str(spec.get("pool") or "default"))
            if kwargs["gpus"] is not None:
                spec, warnings = batchai_to_spec(data, **kwargs)
            elif kwargs["gpus_note"]:
                warnings.append(f"resources.gpus: {kwargs['gpus_note']}")
    except SpecError as exc:
        _translation_refused(exc)
    _warn(warnings)
    return spec


# Retry budget of the look-up of the GPUs of a Batch AI job's pool (GET /v1/nodes, /v1/pools).
POOL_GPUS_LOOKUP_S = 0.0  # a lookup, not worth retrying: the warning says it failed


def _pool_gpus(pool: str) -> tuple[int | None, str | None]:
    """GPUs per node of the pool's nodes (GET /v1/nodes, /v1/pools), for a job file that asks for none."""
    from trainyard.batchai import gpus_of_pool

    try:
        with _client() as client:
            nodes = client.nodes(retry_total_s=POOL_GPUS_LOOKUP_S)
            pools = (
                client.pools(retry_total_s=POOL_GPUS_LOOKUP_S) if not any(n.get("pool") == pool for n in nodes) else []
            )
    except (TrainyardError, httpx.HTTPError, OSError) as exc:
        return None, f"the API could not say how many GPUs pool {pool}'s nodes have ({exc})"
    count, note = gpus_of_pool(pool, nodes, pools)
    return count, note


def _dry_run(data: dict[str, Any]) -> NoReturn:
    """Print the spec as it would be submitted (secrets as names) and exit 0, or name its problems and exit 2."""
    from trainyard.spec import parse_job_spec

    try:
        spec = parse_job_spec(data)
    except SpecError as exc:
        _problems(exc.problems)
    _print_json(spec.public_dict())
    raise typer.Exit(0)


@job_app.command("submit")
def job_submit(
    file: Annotated[Path, typer.Argument(help="job spec, YAML or JSON")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a field: key=value")] = None,
    format_: Annotated[str, typer.Option("--format", help="trainyard or batchai")] = "trainyard",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the spec and warnings; submit nothing")] = False,
    volume: Annotated[
        list[str] | None,
        typer.Option(
            "--volume",
            help="batchai: a mount's storage, KEY=TARGET (KEY: relativeMountPath, share or container; "
            "TARGET: volume:NAME, host:/path, sync:URI, blob:URI, az://container/prefix)",
        ),
    ] = None,
    pool: Annotated[str | None, typer.Option(help="batchai: the pool (default: the job's cluster)")] = None,
    gpus: Annotated[int | None, typer.Option(help="batchai: GPUs per node (resources.gpus)")] = None,
    slots: Annotated[
        int | None,
        typer.Option(help="batchai: slots per node in $AZ_BATCHAI_MPI_HOST_FILE of a customToolkitSettings job"),
    ] = None,
    wait: Annotated[bool, typer.Option(help="wait for the job to end")] = False,
    follow: Annotated[bool, typer.Option(help="stream its stdout until it ends")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the job as JSON")] = False,
    after: Annotated[
        list[str] | None,
        typer.Option(
            "--after",
            help="start only after job (or sweep) ID: ID[:succeeded|ended|failed], default succeeded; repeatable",
        ),
    ] = None,
) -> None:
    """Submit a job."""
    batchai = {"volumes": volume, "pool": pool, "gpus": gpus, "slots": slots}
    data = _load_for_submit(file, format_, set_ or [], batchai)
    if after:
        data["depends_on"] = [*(data.get("depends_on") or []), *map(_after_dependency, after)]
    if isinstance(data.get("code"), str) and is_local_code(data["code"]):
        data["code"] = str((file.parent / data["code"]).resolve())  # relative to the spec file
    if dry_run:
        _dry_run(data)
    try:
        job = _client().submit(data)
    except SpecRejected as exc:
        _problems(exc.problems)
    if not as_json:
        console.print(f"submitted [bold]{job.id}[/bold] ({job.name})")
    if follow:
        for chunk in job.log_chunks(follow=True):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
    if not (wait or follow):
        if as_json:
            _print_json(job.data)
        return
    state = job.wait()
    if as_json:
        _print_json(job.data)
    else:
        console.print(f"{job.id} {state} (exit code {job.data.get('exit_code')})")
    raise typer.Exit(0 if state == "succeeded" else 1)


@job_app.command("list")
def job_list(
    state: Annotated[str | None, typer.Option(help="only jobs in this state")] = None,
    experiment: Annotated[str | None, typer.Option(help="only this experiment")] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List jobs, newest first."""
    if state and state not in {s.value for s in JobState}:
        _fail(f"--state must be one of {', '.join(s.value for s in JobState)}", EXIT_BAD_INPUT)
    jobs = _client().jobs(state=state, experiment=experiment, limit=limit)
    if as_json:
        _print_json([job.data for job in jobs])
        return
    table = Table("ID", "NAME", "STATE", "PRIO", "ATTEMPT", "EXIT", "SUBMITTED", "PENDING REASON")
    for job in jobs:
        d = job.data
        table.add_row(
            d["id"],
            d["name"],
            d["state"],
            str(d["priority"]),
            str(d["attempt"]),
            "" if d["exit_code"] is None else str(d["exit_code"]),
            d["submitted_at"],
            d.get("pending_reason") or "",
        )
    console.print(table)


@job_app.command("show")
def job_show(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A job's state, attempts, nodes, exit codes and times."""
    job = _client().job(job_id)
    if as_json:
        _print_json(job.data)
        return
    d = job.data
    console.print(
        f"[bold]{d['id']}[/bold] {d['name']}  state={d['state']}  priority={d['priority']}  "
        f"attempt={d['attempt']}  exit_code={d['exit_code']}",
        highlight=False,
    )
    console.print(
        f"workspace={d['workspace']} experiment={d['experiment']} submitted {d['submitted_at']}", highlight=False
    )
    if d.get("pending_reason"):
        console.print(f"pending: {d['pending_reason']}", highlight=False)
    if d.get("rerun_of"):
        console.print(f"rerun of {d['rerun_of']}", highlight=False)
    if d.get("reason") and JobState(d["state"]) in TERMINAL_STATES:
        console.print(f"ended: {d['reason']}", highlight=False)
    if d.get("depends_on"):
        _print_dependencies(d["depends_on"])
    if d.get("superseded_by"):
        console.print(f"rerun in its sweep as {d['superseded_by']}", highlight=False)
    if d.get("retries_by_rule"):
        used = ", ".join(f"{rule} {count}" for rule, count in sorted(d["retries_by_rule"].items()))
        console.print(f"retries by rule: {used}", highlight=False)
    for n in d.get("notifications") or []:  # webhooks (notify:) and how their delivery went
        detail = f"; {n['last_error']}" if n["status"] != "delivered" and n.get("last_error") else ""
        line = f"notify {n['event']} → {n['url']}: {n['status']} after {n['attempts']} tries{detail}"
        console.print(line, highlight=False, markup=False)
    table = Table("ATTEMPT", "STATE", "REASON", "RETRIED BY", "NODES", "GPUS", "EXIT CODES", "STARTED", "ENDED")
    for a in d.get("attempts", []):
        table.add_row(
            str(a["number"]),
            a["state"],
            a["reason"] or "",
            a.get("retried_by") or "",
            ",".join(a["nodes"]),
            json.dumps(a["gpus"]),
            json.dumps(a["exit_codes"]),
            a["started_at"] or "",
            a["ended_at"] or "",
        )
    console.print(table)


def _print_dependencies(dependencies: list[dict[str, Any]]) -> None:
    """The job's `depends_on`: each target, the condition, the target's state and the edge's status."""
    table = Table("DEPENDS ON", "NAME", "ON", "TARGET STATE", "STATUS", title="dependencies", title_justify="left")
    for dep in dependencies:
        kind = "sweep" if "sweep" in dep else "job"
        table.add_row(f"{kind} {dep[kind]}", dep.get("name") or "", dep["on"], dep.get("state") or "", dep["status"])
    console.print(table)


@job_app.command("logs")
def job_logs(
    job_id: str,
    rank: int = 0,
    stream: Annotated[str, typer.Option(help="stdout or stderr")] = "stdout",
    attempt: Annotated[int | None, typer.Option(help="attempt number (default: the latest)")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep streaming until the job ends")] = False,
) -> None:
    """Print a job's output, byte for byte."""
    if stream not in ("stdout", "stderr"):
        _fail("--stream must be stdout or stderr", EXIT_BAD_INPUT)
    for chunk in _client().log_chunks(job_id, rank=rank, stream=stream, attempt=attempt, follow=follow):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()


@job_app.command("wait")
def job_wait(job_id: str, timeout: Annotated[float | None, typer.Option(help="seconds")] = None) -> None:
    """Wait for a job to end: exit 0 if it succeeded, 1 otherwise."""
    try:
        state = _client().job(job_id).wait(timeout=timeout)
    except TimeoutError as exc:
        _fail(str(exc))
    console.print(f"{job_id} {state}")
    raise typer.Exit(0 if state == "succeeded" else 1)


@job_app.command("cancel")
def job_cancel(job_id: str) -> None:
    """Cancel a job (its processes on every node are stopped)."""
    job = _client().cancel(job_id)
    state = job.data["state"]
    suffix = "" if JobState(state) in TERMINAL_STATES else " (stopping)"
    console.print(f"{job_id} {state}{suffix}")
    dependants = int(job.data.get("dependants_cancelled") or 0)
    word = "dependant" if dependants == 1 else "dependants"
    console.print(f"{dependants} {word} cancelled (dependency_failed)", highlight=False)


@job_app.command("rerun")
def job_rerun(job_id: str) -> None:
    """Submit the job again: a new job with the same spec and secrets, linked to it (`rerun_of`)."""
    job = _client().rerun(job_id)
    console.print(f"{job.id} queued (rerun of {job_id})")


@job_app.command("outputs")
def job_outputs(
    job_id: str,
    attempt: Annotated[int | None, typer.Option(help="only this attempt")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A job's output files: attempt, output id, path, size, sha256 and the key to download it by."""
    files = _client().outputs(job_id, attempt=attempt)
    if as_json:
        _print_json(files)
        return
    table = Table("ATTEMPT", "RANK", "OUTPUT", "PATH", "SIZE", "SHA256", "KEY")
    for f in files:
        table.add_row(
            str(f["attempt"]), str(f["rank"]), f["output"], f["path"], str(f["size"]), f["sha256"][:16], f["key"]
        )
    console.print(table)


@job_app.command("download")
def job_download(
    job_id: str,
    dest: Annotated[Path, typer.Argument(help="directory to write <output>/<path> into")] = Path("."),
    output: Annotated[str | None, typer.Option("--output", help="only this output id")] = None,
    attempt: Annotated[int | None, typer.Option(help="attempt (default: the latest with outputs)")] = None,
) -> None:
    """Download a job's output files, each checked against its sha256."""
    paths = _client().download(job_id, dest, output=output, attempt=attempt)
    for path in paths:
        console.print(str(path), highlight=False)
    if not paths:
        _fail(f"job {job_id} has no output files{f' for output {output!r}' if output else ''}")


# -- nodes and pools -------------------------------------------------------------------------


@node_app.command("list")
def node_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Nodes, their pool, state and resources in use."""
    nodes = _client().nodes()
    if as_json:
        _print_json(nodes)
        return
    table = Table("ID", "POOL", "ADDRESS", "STATE", "SLOTS", "GPUS", "RUNNING", "LAST HEARTBEAT")
    for n in nodes:
        table.add_row(
            n["id"],
            n["pool"],
            n["address"],
            n["state"],
            f"{n['slots_used']:g}/{n['slots']}",
            f"{len(n['gpus_used'])}/{len(n['gpus'])}",
            str(n["running_parts"]),
            n["last_heartbeat_at"],
        )
    console.print(table)


@node_app.command("drain")
def node_drain(node_id: str) -> None:
    """Stop giving a node new work; what runs there finishes."""
    node = _client().drain(node_id)
    console.print(f"{node['id']} {node['state']}")


@node_app.command("logs")
def node_logs(node_id: str) -> None:
    """The output of the node's setup task (the pool's `setup`), so far while it runs."""
    text = _client().node_logs(node_id)
    sys.stdout.write(text)


@pool_app.command("list")
def pool_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Pools and how many nodes each has, by state."""
    pools = _client().pools()
    if as_json:
        _print_json(pools)
        return
    table = Table("POOL", "NODES", "MIN", "MAX")
    for p in pools:
        table.add_row(
            p["name"],
            ", ".join(f"{k}={v}" for k, v in p["nodes"].items()),
            str(p["min_nodes"]),
            "" if p["max_nodes"] is None else str(p["max_nodes"]),
        )
    console.print(table)


@pool_app.command("create")
def pool_create(
    file: Annotated[Path, typer.Argument(help="Batch AI cluster file (ClusterCreateParameters, JSON)")],
    format_: Annotated[str, typer.Option("--format", help="batchai (the only format pool create reads)")] = "",
    name: Annotated[str | None, typer.Option(help="the pool (default: the file's name field, else the file)")] = None,
    volume: Annotated[
        list[str] | None,
        typer.Option("--volume", help="a nodeSetup mount's storage, KEY=TARGET (as for job submit --format batchai)"),
    ] = None,
    gpus: Annotated[
        int | None, typer.Option(help="GPUs per node the pool's provider starts (default: vmSize's)")
    ] = None,
    slots: Annotated[int | None, typer.Option(help="slots per node the pool's provider starts (default 2)")] = None,
    provider: Annotated[str | None, typer.Option(help="who starts nodes: local|docker (default local)")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the translation and warnings; change nothing")
    ] = False,
) -> None:
    """Create or update a pool from an Azure Batch AI cluster file: its scale, volumes and setup task."""
    from trainyard.batchai import load_batchai_file
    from trainyard.batchai_cluster import batchai_cluster_to_pool, cluster_envelope_name

    if format_ != "batchai":
        _problems([{"field": "--format", "reason": "pool create reads Batch AI cluster files: give --format batchai"}])
    try:
        doc = load_batchai_file(file)
        pool, warnings = batchai_cluster_to_pool(
            doc,
            name=name or cluster_envelope_name(doc) or file.stem,
            volumes=_key_values(volume or [], "--volume"),
            gpus=gpus,
            slots=slots,
            provider=provider,
        )
    except SpecError as exc:
        _translation_refused(exc)
    _warn(warnings)
    if dry_run:
        _print_json(pool.public_dict())
        raise typer.Exit(0)
    client = _client()
    # Volumes and the setup task first: nodes the scale starts run the setup task when they register.
    result = _refused_or(lambda: client.set_pool_volumes(pool.name, pool.volumes)) if pool.volumes else None
    if pool.setup is not None:
        setup = pool.setup
        result = _refused_or(lambda: client.set_pool_setup(pool.name, setup))
    if pool.scale is not None:
        scale = pool.scale
        result = _refused_or(lambda: client.scale_pool(pool.name, scale))
    if result is None:
        _fail("the cluster file sets nothing on a pool (no scaleSettings, mountVolumes or setupTask)", EXIT_BAD_INPUT)
    _print_json(result)


@pool_app.command("scale")
def pool_scale(
    name: str,
    min_nodes: Annotated[int, typer.Option("--min", help="fewest nodes")] = 0,
    max_nodes: Annotated[int, typer.Option("--max", help="most nodes")] = 1,
    target: Annotated[int | None, typer.Option(help="manual size (no autoscaling)")] = None,
    idle_timeout: Annotated[float, typer.Option(help="seconds a node may idle before it is removed")] = 300.0,
    deallocation: Annotated[str, typer.Option(help="scale-down of busy nodes: requeue|terminate|wait")] = "wait",
    provider: Annotated[str, typer.Option(help="who starts nodes: local|docker")] = "local",
    slots: Annotated[int, typer.Option(help="slots per started node")] = 2,
    gpus: Annotated[int, typer.Option(help="GPUs per started node")] = 0,
) -> None:
    """Size a pool: a manual --target, or autoscale between --min and --max by queued + running demand."""
    body = {
        "min_nodes": min_nodes,
        "max_nodes": max_nodes,
        "target": target,
        "autoscale": target is None,
        "idle_timeout_s": idle_timeout,
        "deallocation": deallocation,
        "provider": provider,
        "slots_per_node": slots,
        "gpus_per_node": gpus,
    }
    pool = _refused_or(lambda: _client().scale_pool(name, body))
    _print_json(pool)


T = TypeVar("T")


def _refused_or(call: Callable[[], T]) -> T:
    """An API call: a refused request (422) exits 2 with its message, any other error exits 1."""
    try:
        return call()
    except SpecRejected as exc:
        _fail(str(exc), EXIT_BAD_INPUT)


def _key_values(items: list[str], option: str) -> dict[str, str]:
    values = {}
    for item in items:
        if "=" not in item:
            _problems([{"field": option, "reason": f"{item!r} is not NAME=VALUE"}])
        name, value = item.split("=", 1)
        values[name] = value
    return values


@pool_app.command("setup")
def pool_setup(
    name: str,
    command: Annotated[str | None, typer.Option(help="run with /bin/sh -c on each node before it takes work")] = None,
    env: Annotated[list[str] | None, typer.Option(help="NAME=VALUE for the task, repeatable")] = None,
    secret: Annotated[list[str] | None, typer.Option(help="NAME=VALUE kept write-only, repeatable")] = None,
    timeout: Annotated[float, typer.Option(help="seconds before the task is killed (the node is unusable)")] = 1800.0,
    remove: Annotated[bool, typer.Option("--remove", help="remove the pool's setup task")] = False,
) -> None:
    """Set the pool's setup task: each node runs it when its worker registers; until it succeeds the node
    is `preparing` (failed: `unusable`, with its log in `trainyard node logs ID`)."""
    if remove:
        pool = _refused_or(lambda: _client().remove_pool_setup(name))
    else:
        if not command:
            _problems([{"field": "--command", "reason": "required (or --remove)"}])
        body = {
            "command": command,
            "env": _key_values(env or [], "--env"),
            "secrets": _key_values(secret or [], "--secret"),
            "timeout_s": timeout,
        }
        pool = _refused_or(lambda: _client().set_pool_setup(name, body))
    _print_json(pool)


@pool_app.command("volumes")
def pool_volumes(
    name: str,
    file: Annotated[Path | None, typer.Argument(help="YAML or JSON file with `volumes: [...]`")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove the pool's volumes")] = False,
) -> None:
    """Set the volumes every job of the pool sees (a job's own volume of the same name wins)."""
    volumes: list[dict[str, Any]] = []
    if not clear:
        if file is None:
            _problems([{"field": "file", "reason": "required (or --clear)"}])
        try:
            data = load_spec_file(file)
        except SpecError as exc:
            _problems(exc.problems)
        except OSError as exc:
            _fail(f"cannot read {file}: {exc}", EXIT_BAD_INPUT)
        volumes = list(data.get("volumes") or [])
    pool = _refused_or(lambda: _client().set_pool_volumes(name, volumes))
    _print_json(pool)


# -- named volumes ---------------------------------------------------------------------------


@volume_app.command("create")
def volume_create(
    name: str,
    kind: Annotated[str, typer.Option(help="host (a path on the nodes) | sync (copied) | blob (FUSE mount)")],
    path: Annotated[str | None, typer.Option(help="host volumes: the directory on every node")] = None,
    uri: Annotated[str | None, typer.Option(help="sync and blob volumes: s3://, az:// (sync: also file://)")] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="jobs may not write into it")] = False,
    sync_interval: Annotated[float | None, typer.Option(help="sync volumes: seconds between uploads")] = None,
    mount_path: Annotated[str | None, typer.Option(help="default mount path in jobs")] = None,
    workspace: Annotated[str | None, typer.Option(help="default: your token's workspace")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Register a volume once; job specs then say `volumes: [{name: data, volume: NAME}]`."""
    body = {
        "name": name,
        "kind": kind,
        "path": path,
        "uri": uri,
        "read_only": read_only,
        "sync_interval_s": sync_interval,
        "mount_path": mount_path,
        "workspace": workspace,
    }
    volume = _refused_or(lambda: _client().create_volume({k: v for k, v in body.items() if v is not None}))
    if as_json:
        _print_json(volume)
        return
    console.print(f"volume {volume['name']} ({volume['kind']}) created in {volume['workspace']}")


@volume_app.command("list")
def volume_list(
    workspace: Annotated[str | None, typer.Option()] = None, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Named volumes of the workspaces your token sees."""
    volumes = _client().volumes(workspace)
    if as_json:
        _print_json(volumes)
        return
    table = Table("NAME", "WORKSPACE", "KIND", "SOURCE", "MODE")
    for v in volumes:
        table.add_row(
            v["name"],
            v["workspace"],
            v["kind"],
            v.get("path") or v.get("uri") or "",
            "ro" if v.get("read_only") else "rw",
        )
    console.print(table)


@volume_app.command("delete")
def volume_delete(name: str, workspace: Annotated[str | None, typer.Option()] = None) -> None:
    """Forget a named volume (its data stays where it is; running jobs keep theirs)."""
    _client().delete_volume(name, workspace)
    console.print(f"volume {name} deleted")


# -- tokens and audit ------------------------------------------------------------------------


def _admin_call(method: str, path: str, **kwargs: Any) -> Any:
    """A call to an admin route: 422 exits 2 with its problems, other refusals exit 1."""
    try:
        return _client()._request(method, path, **kwargs)
    except SpecRejected as exc:
        _problems(exc.problems)


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="admin, user or viewer")],
    workspace: Annotated[str | None, typer.Option(help="workspace it may act in (admin: all when omitted)")] = None,
    name: Annotated[str | None, typer.Option(help="a name for the audit trail")] = None,
    expires_in: Annotated[str | None, typer.Option(help="lifetime: 3600, 90m, 30d; default never")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the token object, token included, as JSON")] = False,
) -> None:
    """Create an API token. It is printed this once: the server keeps only its hash."""
    if role not in ("admin", "user", "viewer"):
        _fail("--role must be admin, user or viewer", EXIT_BAD_INPUT)
    body = {
        k: v
        for k, v in {"role": role, "workspace": workspace, "name": name, "expires_in": expires_in}.items()
        if v is not None
    }
    created = _admin_call("POST", "/v1/tokens", json=body)
    if as_json:
        _print_json(created)
        return
    errors.print(
        f"created token {created['id']} ({created['name']}, role {created['role']}, workspace "
        f"{created['workspace'] or 'all'}); it is shown only now:",
        highlight=False,
    )
    sys.stdout.write(created["token"] + "\n")


@token_app.command("list")
def token_list(
    include_deleted: Annotated[bool, typer.Option(help="also list deleted tokens")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """API tokens (never their values)."""
    tokens = _admin_call("GET", "/v1/tokens", params={"include_deleted": include_deleted})["tokens"]
    if as_json:
        _print_json(tokens)
        return
    table = Table("ID", "NAME", "ROLE", "WORKSPACE", "CREATED", "BY", "EXPIRES", "DELETED")
    for t in tokens:
        table.add_row(
            t["id"],
            t["name"],
            t["role"],
            t["workspace"] or "(all)",
            t["created_at"],
            t["created_by"],
            t["expires_at"] or "never",
            t["deleted_at"] or "",
        )
    console.print(table)


@token_app.command("delete")
def token_delete(token_id: str) -> None:
    """Delete an API token: it stops working at once."""
    deleted = _admin_call("DELETE", f"/v1/tokens/{token_id}")
    console.print(f"{deleted['id']} deleted", highlight=False)


@audit_app.command("list")
def audit_list(
    kind: Annotated[
        str | None, typer.Option(help="submitted, cancelled, cancel_requested, drained, token_created…")
    ] = None,
    actor: Annotated[str | None, typer.Option(help="actor, token id or token name")] = None,
    job: Annotated[str | None, typer.Option(help="only this job")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 time")] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The audit trail, newest first."""
    filters = {"kind": kind, "actor": actor, "job_id": job, "since": since}
    params: dict[str, Any] = {k: v for k, v in filters.items() if v is not None}
    events: list[dict[str, Any]] = []
    while len(events) < limit:
        page = _admin_call("GET", "/v1/audit", params={**params, "limit": min(1000, limit - len(events))})
        events.extend(page["events"])
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    if as_json:
        _print_json(events)
        return
    table = Table("ID", "AT", "KIND", "ACTOR", "JOB", "NODE", "DETAIL")
    for e in events:
        table.add_row(
            str(e["id"]),
            e["at"],
            e["kind"],
            e["actor"] or "",
            e["job_id"] or "",
            e["node_id"] or "",
            json.dumps(e["detail"]) if e["detail"] else "",
        )
    console.print(table)


def main() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Commands let the SDK's errors (404, 409, refused, unreachable) reach this one place.
    try:
        app()
    except TrainyardError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(EXIT_FAILURE)
    except httpx.TransportError as exc:
        errors.print(
            f"[red]error:[/red] cannot reach the trainyard API ({exc}); is `trainyard up` running?", highlight=False
        )
        sys.exit(EXIT_FAILURE)
