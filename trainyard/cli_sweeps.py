"""`trainyard sweep …`: submit a sweep file; show progress, state counts, the leaderboard and a plot; rerun; cancel."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from trainyard.cli_output import EXIT_BAD_INPUT, EXIT_FAILURE, console, errors, fail, refuse
from trainyard.client import Client, SpecRejected, Sweep
from trainyard.spec import TERMINAL_STATES, JobState, SpecError, load_spec_file

sweep_app = typer.Typer(help="Parameter sweeps: many jobs from one template.", no_args_is_help=True)

WATCH_POLL_S = 1.0
PLOT_POINTS_MAX = 10_000
PLOT_CURVES_MAX = 20  # points whose live series the plot draws over steps (the best ones)
STATES = tuple(state.value for state in JobState)


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    fail(message, code)


def _problems(problems: list[dict[str, str]]) -> NoReturn:
    refuse("invalid sweep", problems)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@sweep_app.command("submit")
def sweep_submit(
    file: Annotated[Path, typer.Argument(help="sweep file, YAML or JSON: a job spec plus grid, random or points")],
    as_json: Annotated[bool, typer.Option("--json", help="print the sweep as JSON")] = False,
) -> None:
    """Submit a sweep: one job per point of its grid, random draws or explicit points."""
    try:
        load_spec_file(file)  # bad YAML/JSON: exit 2 before talking to the API
        sweep = Client().submit_sweep(file)
    except SpecError as exc:
        _problems(exc.problems)
    except OSError as exc:
        _fail(f"cannot read {file}: {exc}", EXIT_BAD_INPUT)
    except SpecRejected as exc:
        _problems(exc.problems)
    if as_json:
        _print_json(sweep.data)
        return
    limit = sweep.data.get("max_concurrency")
    console.print(
        f"submitted sweep [bold]{sweep.id}[/bold] ({sweep.data['name']}): {sweep.data['total']:,} jobs, "
        f"at most {limit or 'unlimited'} at once; experiment {sweep.data['experiment']}",
        highlight=False,
    )


def _counts_line(data: dict[str, Any]) -> str:
    counts = data.get("counts", {})
    return "  ".join(f"{state} {counts.get(state, 0):,}" for state in STATES if counts.get(state))


def _leaderboard_table(data: dict[str, Any]) -> Table:
    parameters = list(data.get("parameters") or [])
    table = Table(
        "RANK",
        "JOB",
        "STATE",
        *[p.upper() for p in parameters],
        data["metric"].upper(),
        "STEP",
        title=f"best by {data['metric']} ({data['order']})",
    )
    for entry in data.get("leaderboard", []):
        params = entry.get("params", {})
        table.add_row(
            str(entry["rank"]),
            entry["job_id"],
            entry["state"],
            *[str(params.get(p, "")) for p in parameters],
            f"{entry['value']:.6g}",
            "" if entry.get("step") is None else str(entry["step"]),
        )
    return table


def _points(data: dict[str, Any]) -> int:
    """Points of the sweep: its jobs less those rerun inside it (counts and progress are about these)."""
    return int(data.get("points", data["total"]))


def _print_sweep(data: dict[str, Any]) -> None:
    rerun = f" ({data['superseded']:,} rerun)" if data.get("superseded") else ""
    console.print(
        f"[bold]{data['id']}[/bold] {data['name']}  state={data['state']}  kind={data['kind']}  "
        f"jobs={data['total']:,}{rerun}  max_concurrency={data.get('max_concurrency') or 'unlimited'}  "
        f"progress={data['progress']:.1%}",
        highlight=False,
    )
    console.print(
        f"experiment={data['experiment']}  parameters={', '.join(data.get('parameters') or [])}", highlight=False
    )
    console.print(_counts_line(data), highlight=False)
    if "leaderboard" in data:
        console.print(_leaderboard_table(data))


def _live_best(client: Client, sweep_id: str, metric: str | None, order: str) -> str:
    """`best loss=0.21 (s…-3 @ step 12)`: the leader by the metric right now (values arrive while jobs run)."""
    if metric is None:
        return ""
    board = client.get_sweep(sweep_id, metric=metric, order=order, top=1).data.get("leaderboard") or []
    if not board:
        return f"  {metric}: none yet"
    lead = board[0]
    return f"  best {metric}={lead['value']:.4g} ({lead['job_id']} @ step {lead.get('step')})"


def _watch(sweep: Sweep, client: Client | None = None, metric: str | None = None, order: str = "min") -> None:
    """A live progress bar until no job of the sweep can run any more, with the live best value of the metric."""
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task(sweep.id, total=_points(sweep.data))
        while True:
            data = sweep.refresh().data
            done = sum(data["counts"].get(s, 0) for s in TERMINAL_STATES)
            best = _live_best(client, sweep.id, metric, order) if client is not None else ""
            description = f"{sweep.id} {_counts_line(data)}{best}"
            progress.update(task, total=_points(data), completed=done, description=description)
            if data["state"] in ("finished", "cancelled"):
                return
            time.sleep(WATCH_POLL_S)


def _plot(client: Client, sweep_id: str, metric: str, order: str, path: Path) -> None:
    from trainyard.sweep_plot import plot_metric

    data = client.get_sweep(sweep_id, metric=metric, order=order, top=PLOT_POINTS_MAX).data
    if not data["leaderboard"]:
        _fail(f"no job of sweep {sweep_id} has reported {metric!r} yet")
    curves = _curves(client, data["leaderboard"][:PLOT_CURVES_MAX], metric)
    drawn = plot_metric(
        data["leaderboard"],
        list(data.get("parameters") or []),
        metric,
        path,
        title=f"{data['name']} ({sweep_id}): {metric}",
        curves=curves,
    )
    over_steps = f", and over steps for the best {len(curves)}" if curves else ""
    errors.print(
        f"plotted {metric} of {drawn:,} points against {', '.join(data['parameters'])}{over_steps} into {path}",
        highlight=False,
    )


def _curves(client: Client, entries: list[dict[str, Any]], metric: str) -> dict[str, list[tuple[float, float]]]:
    """The live series of `metric` of these points (their latest attempt's), by point name."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for entry in entries:
        points = client.job_metrics(entry["job_id"], name=metric)
        latest = max((p["attempt"] for p in points), default=None)
        series = [(float(p["step"]), float(p["values"][metric])) for p in points
                  if p["attempt"] == latest and p.get("step") is not None and metric in p["values"]]  # fmt: skip
        if series:
            curves[str(entry["name"])] = series
    return curves


@sweep_app.command("show")
def sweep_show(
    sweep_id: str,
    metric: Annotated[str | None, typer.Option(help="rank the points by this reported metric")] = None,
    order: Annotated[str, typer.Option(help="min: lowest first; max: highest first")] = "min",
    top: Annotated[int, typer.Option(help="how many ranked points to show")] = 20,
    watch: Annotated[bool, typer.Option("--watch", help="a live progress bar until the sweep ends")] = False,
    plot: Annotated[Path | None, typer.Option(help="draw the metric against each parameter into this PNG")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the sweep as JSON")] = False,
) -> None:
    """A sweep's progress, state counts and, with --metric, its points ranked by that metric."""
    if order not in ("min", "max"):
        _fail("--order must be min or max", EXIT_BAD_INPUT)
    if plot is not None and metric is None:
        _fail("--plot needs --metric: which metric to draw", EXIT_BAD_INPUT)
    client = Client()
    try:
        sweep = client.get_sweep(sweep_id)
        if watch:
            rule = sweep.data.get("early_stopping") or {}
            live_metric = metric or rule.get("metric")  # the early stopping metric, unless --metric names one
            _watch(sweep, client, live_metric, order if metric else rule.get("mode", order))
        data = client.get_sweep(sweep_id, metric=metric, order=order, top=top).data
        if plot is not None and metric is not None:
            _plot(client, sweep_id, metric, order, plot)
    except SpecRejected as exc:
        _problems(exc.problems)
    if as_json:
        _print_json(data)
    else:
        _print_sweep(data)


@sweep_app.command("cancel")
def sweep_cancel(sweep_id: str) -> None:
    """Cancel a sweep: its queued jobs end now, its running ones are stopped."""
    data = Client().cancel_sweep(sweep_id).data
    console.print(f"{sweep_id} {data['state']}: {_counts_line(data)}", highlight=False)


RERUNS_LISTED_MAX = 20


@sweep_app.command("rerun")
def sweep_rerun(
    sweep_id: str,
    failed: Annotated[bool, typer.Option("--failed", help="only the points that failed or were cancelled")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the sweep and its reruns as JSON")] = False,
) -> None:
    """Rerun a sweep's ended points inside the sweep: new jobs with the same values, linked to the old ones."""
    try:
        data = Client().rerun_sweep(sweep_id, failed=failed).data
    except SpecRejected as exc:
        _problems(exc.problems)
    if as_json:
        _print_json(data)
        return
    reruns = data.get("reruns", [])
    which = "failed or cancelled points" if failed else "ended points"
    console.print(f"{sweep_id}: {len(reruns):,} {which} rerun; {_counts_line(data)}", highlight=False)
    for item in reruns[:RERUNS_LISTED_MAX]:
        console.print(f"{item['id']} queued (rerun of {item['rerun_of']})", highlight=False)
    if len(reruns) > RERUNS_LISTED_MAX:
        console.print(f"… and {len(reruns) - RERUNS_LISTED_MAX:,} more (--json lists them all)", highlight=False)


@sweep_app.command("list")
def sweep_list(
    limit: Annotated[int, typer.Option(help="at most this many")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Sweeps, newest first."""
    sweeps = Client().sweeps(limit=limit)
    if as_json:
        _print_json([sweep.data for sweep in sweeps])
        return
    table = Table("ID", "NAME", "STATE", "JOBS", "PROGRESS", "MAX", "CREATED")
    for sweep in sweeps:
        d = sweep.data
        table.add_row(
            d["id"],
            d["name"],
            d["state"],
            f"{d['total']:,}",
            f"{d['progress']:.1%}",
            str(d.get("max_concurrency") or ""),
            d.get("created_at") or "",
        )
    console.print(table)
