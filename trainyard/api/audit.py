"""Audit route (admin only): who submitted, cancelled, drained or minted tokens, and when."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import Select, or_, select

from trainyard.api.auth import Principal, require
from trainyard.api.schemas import AuditPage
from trainyard.db.jobs import iso
from trainyard.db.models import Event, Job

router = APIRouter(prefix="/v1")

AUDIT_LIMIT_MAX = 1000
# Events that carry a workspace in their detail rather than through a job.
TOKEN_KINDS = ("token_created", "token_deleted")
MAX_EVENT_ID = 2**31 - 1


def event_dict(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": iso(event.at),
        "kind": event.kind,
        "job_id": event.job_id,
        "attempt": event.attempt,
        "node_id": event.node_id,
        "actor": event.actor,
        "detail": dict(event.detail or {}),
    }


def _actor_filter(actor: str) -> Any:
    """An actor matches by its whole name, by token id or by token name (actors read `<id>:<name>`)."""
    return or_(
        Event.actor == actor,
        Event.actor.startswith(actor + ":", autoescape=True),
        Event.actor.endswith(":" + actor, autoescape=True),
    )


def _workspace_filter(workspace: str) -> Any:
    """What an admin of one workspace may see: its jobs' events and its tokens' events."""
    return or_(
        Event.job_id.in_(select(Job.id).where(Job.workspace == workspace)),
        Event.kind.in_(TOKEN_KINDS) & (Event.detail["workspace"].as_string() == workspace),
    )


def _query(who: Principal, filters: dict[str, Any], limit: int) -> Select[Event]:
    query = select(Event).order_by(Event.id.desc()).limit(limit + 1)
    if who.workspace is not None:
        query = query.where(_workspace_filter(who.workspace))
    if filters["kind"] is not None:
        query = query.where(Event.kind == filters["kind"])
    if filters["actor"] is not None:
        query = query.where(_actor_filter(filters["actor"]))
    if filters["job_id"] is not None:
        query = query.where(Event.job_id == filters["job_id"])
    if filters["since"] is not None:
        since: datetime = filters["since"]
        query = query.where(Event.at >= (since if since.tzinfo else since.replace(tzinfo=UTC)))
    if filters["cursor"] is not None:
        query = query.where(Event.id < filters["cursor"])
    return query


_TEXT = r"^[^\x00]*$"  # PostgreSQL refuses NUL in text: refuse it here, as a bad parameter


@router.get(
    "/audit", summary="Audit trail, newest first: submissions, cancels, drains, tokens", response_model=AuditPage
)
def list_audit(
    request: Request,
    kind: str | None = Query(None, max_length=32, pattern=_TEXT, description="e.g. submitted, cancelled, drained"),
    actor: str | None = Query(None, max_length=64, pattern=_TEXT, description="actor, token id or token name"),
    job_id: str | None = Query(None, max_length=32, pattern=_TEXT),
    since: datetime | None = Query(None, description="ISO 8601; UTC when no zone is given"),
    limit: int = Query(100, ge=1, le=AUDIT_LIMIT_MAX),
    cursor: int | None = Query(None, ge=0, le=MAX_EVENT_ID, description="next_cursor of the previous page"),
    who: Principal = require("admin"),
) -> Any:
    filters = {"kind": kind, "actor": actor, "job_id": job_id, "since": since, "cursor": cursor}
    with request.app.state.sessions() as session:
        events = session.scalars(_query(who, filters, limit)).all()
    page = events[:limit]
    next_cursor = page[-1].id if len(events) > limit else None
    return {"events": [event_dict(e) for e in page], "next_cursor": next_cursor}
