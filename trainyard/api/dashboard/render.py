"""HTML answers of the dashboard: the Jinja2 environment, its filters, and the headers every page carries."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from trainyard.api.dashboard.sessions import CSRF_FIELD, CSRF_HEADER, DashboardUser

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
HTMX_FILE = STATIC_DIR / "vendor" / "htmx.min.js"
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
# Pages hold workspace data: never cached, never framed, scripts and styles only from here.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
}


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def age(value: str | None, now: datetime | None = None) -> str:
    """How long ago an ISO time was, in words a table cell can hold: `4 s`, `12 min`, `3 h`, `2 d`."""
    moment = parse_time(value)
    if moment is None:
        return "—"
    seconds = max(0.0, ((now or datetime.now(UTC)) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def short_time(value: str | None) -> str:
    moment = parse_time(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "—"


def size(value: int | None) -> str:
    if value is None:
        return "—"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return str(value)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(age=age, short_time=short_time, size=size)
    env.globals.update(CSRF_FIELD=CSRF_FIELD, CSRF_HEADER=CSRF_HEADER, TERMINAL_STATES=TERMINAL_STATES)
    return env


ENVIRONMENT = _environment()


def render(
    request: Request, template: str, user: DashboardUser | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    html = ENVIRONMENT.get_template(template).render(
        request=request, user=user, htmx_built=HTMX_FILE.exists(), **context
    )
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)
