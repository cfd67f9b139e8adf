"""What every CLI command prints with: consoles, exit codes, and how refusals are shown."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import typer
from rich.console import Console

# Wide tables when piped: rich would otherwise fold IDs at 80 columns.
console = Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "200")))
errors = Console(stderr=True)

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def refuse(title: str, problems: list[dict[str, str]]) -> NoReturn:
    """Name every problem (field: reason) and exit 2."""
    errors.print(f"[red]{title}:[/red]")
    for problem in problems:
        errors.print(f"  {problem['field']}: {problem['reason']}", highlight=False, markup=False)
    raise typer.Exit(EXIT_BAD_INPUT)
