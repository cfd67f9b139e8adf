"""`make bench`: run every bench script in bench/, collect its JSON result lines, print one table.

A script is a bench when it defines a top-level `main()` and runs it under `__main__`; helpers
(harness.py, bare_celery.py) and this file are skipped. Each runs as `python bench/NAME.py`
in a process group of its own; every stdout line that parses as a JSON object with a "bench" key
is a result: `{"bench", "value", "unit", "baseline", "ratio", "goal"}` (harness.py). A bench that
exits non-zero, times out or prints no result gets a failure row; the others still run.
`--quick` sets TRAINYARD_BENCH_QUICK=1 and passes `--quick` to scripts that mention it.
Exit status: 1 when a bench failed to run, else 0 (a missed goal is a finding, not a failure).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_TIMEOUT_S = 1800.0
INTERRUPT_GRACE_S = 30.0
STDERR_TAIL_LINES = 20
GOAL_PATTERN = re.compile(r"^\s*(?:(ratio|value)\s*)?(>=|<=|≥|≤|>|<|=)\s*(-?\d+(?:\.\d*)?(?:e-?\d+)?)")
COMPARE = {
    ">=": lambda a, b: a >= b,
    "≥": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "≤": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "=": lambda a, b: a == b,
}


@dataclass
class BenchRun:
    """What one script produced."""

    script: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    returncode: int | None = None
    timed_out: bool = False
    seconds: float = 0.0
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES))

    @property
    def failed(self) -> bool:
        return self.timed_out or self.returncode != 0 or not self.rows

    def failure(self) -> str:
        if self.timed_out:
            return f"timed out after {self.seconds:.0f} s"
        if self.returncode != 0:
            last = next((line for line in reversed(self.stderr_tail) if line.strip()), "")
            return f"exit {self.returncode}: {last.strip()[:160]}"
        return "printed no result line"


# -- discovery ---------------------------------------------------------------------------------


def is_bench(path: Path) -> bool:
    """A top-level `def main` and an `if __name__ == "__main__"` block."""
    if path.name == Path(__file__).name or path.name.startswith("_"):
        return False
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (SyntaxError, UnicodeDecodeError):
        return True  # broken benches still get a (failure) row
    has_main = any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)
    has_guard = any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)
    return has_main and has_guard


def discover(only: list[str]) -> list[Path]:
    wanted = {name.removesuffix(".py") for name in only}
    scripts = [path for path in sorted(BENCH_DIR.glob("*.py")) if is_bench(path)]
    if wanted:
        unknown = wanted - {path.stem for path in scripts}
        if unknown:
            raise SystemExit(
                f"no bench named {', '.join(sorted(unknown))} (have: {', '.join(p.stem for p in scripts)})"
            )
        scripts = [path for path in scripts if path.stem in wanted]
    return scripts


# -- running -----------------------------------------------------------------------------------


def parse_result(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and "bench" in row else None


def _read_stdout(stream: IO[str], run: BenchRun) -> None:
    for line in stream:
        row = parse_result(line)
        if row is not None:
            run.rows.append(row)
            summary = f"{row.get('bench')}: {row.get('value')} {row.get('unit', '')}"
            print(f"  {summary}", file=sys.stderr, flush=True)


def _read_stderr(stream: IO[str], run: BenchRun) -> None:
    for line in stream:
        run.stderr_tail.append(line)
        sys.stderr.write(f"  | {line}")
        sys.stderr.flush()


def _stop_group(process: subprocess.Popen[str]) -> None:
    """SIGINT first, so the bench's `finally` blocks stop what it started; SIGKILL after a grace."""
    for sig, grace_s in ((signal.SIGINT, INTERRUPT_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def command_for(path: Path, quick: bool) -> list[str]:
    args = [sys.executable, str(path)]
    if quick and "--quick" in path.read_text(errors="replace"):
        args.append("--quick")
    return args


def run_bench(path: Path, quick: bool, timeout_s: float) -> BenchRun:
    run = BenchRun(script=path.stem)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if quick:
        env["TRAINYARD_BENCH_QUICK"] = "1"
    started = time.monotonic()
    process = subprocess.Popen(
        command_for(path, quick),
        cwd=REPO_ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert process.stdout is not None and process.stderr is not None
    readers = [
        threading.Thread(target=_read_stdout, args=(process.stdout, run), daemon=True),
        threading.Thread(target=_read_stderr, args=(process.stderr, run), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        run.returncode = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        run.timed_out = True
        _stop_group(process)
        run.returncode = process.returncode
    except KeyboardInterrupt:  # the bench has a session of its own: Ctrl-C must be passed on
        _stop_group(process)
        raise
    for reader in readers:
        reader.join(timeout=5)
    run.seconds = time.monotonic() - started
    return run


# -- the table ---------------------------------------------------------------------------------


def goal_met(row: dict[str, Any]) -> bool | None:
    """Whether the row meets its goal; None when there is none or it cannot be judged."""
    if isinstance(row.get("met"), bool):
        return bool(row["met"])
    if not row.get("goal"):
        return None
    match = GOAL_PATTERN.match(str(row.get("goal") or ""))
    if not match:
        return None
    subject, op, target = match.group(1) or "value", match.group(2), float(match.group(3))
    actual = row.get(subject)
    if not isinstance(actual, (int, float)) or math.isnan(actual):
        return None
    return bool(COMPARE[op](float(actual), target))


def fmt(value: Any, unit: str = "") -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "—" if value is None else str(value)
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def met_cell(row: dict[str, Any]) -> str:
    if not row.get("goal") and "met" not in row:
        return "—"
    return {True: "[green]yes[/green]", False: "[red]no[/red]", None: "?"}[goal_met(row)]


def build_table(runs: list[BenchRun]) -> Table:
    table = Table(title="trainyard benchmarks", show_lines=False)
    for column, justify in (
        ("bench", "left"),
        ("ours", "right"),
        ("baseline", "right"),
        ("ratio", "right"),
        ("goal", "left"),
        ("met?", "center"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for run in runs:
        for row in run.rows:
            unit = str(row.get("unit") or "")
            table.add_row(
                str(row.get("bench")),
                fmt(row.get("value"), unit),
                fmt(row.get("baseline"), unit),
                fmt(row.get("ratio")),
                str(row.get("goal") or ""),
                met_cell(row),
            )
        if run.failed:
            table.add_row(f"[red]{run.script}[/red]", "—", "—", "—", run.failure(), "[red]FAIL[/red]")
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run every bench/ script and print one table.")
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run only this bench script (e.g. e2e); repeatable"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every bench")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per bench script")
    parser.add_argument("--list", action="store_true", help="list the bench scripts and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scripts = discover(args.only)
    if args.list:
        print("\n".join(path.stem for path in scripts))
        return 0
    runs = []
    for path in scripts:
        print(f"== bench/{path.name}", file=sys.stderr, flush=True)
        runs.append(run_bench(path, args.quick, args.timeout))
    # A pipe (CI logs) gets a fixed width wide enough that the goal column does not wrap.
    Console(width=None if sys.stdout.isatty() else 140).print(build_table(runs))
    return 1 if any(run.failed for run in runs) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
