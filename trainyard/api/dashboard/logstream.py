"""Live logs for the dashboard: a job's stdout or stderr of one rank as Server-Sent Events.

The browser's EventSource follows with the session cookie (no token in a URL). Bytes come from
the REST follow (`logreads.follow`: asyncio, no thread per follower, woken by the nodes' log
notices); this only frames them: an `attempt` event when an attempt starts, `log` events with the
text, and `end` once the job has ended and its last attempt's logs are complete. Each event's id
is `attempt:offset`, so an EventSource that reconnects (it sends `Last-Event-ID`) resumes at the
byte where it was, without a gap or a repeat. A job that is requeued goes on with its next attempt.
"""

from __future__ import annotations

import asyncio
import codecs
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from trainyard.api import logreads
from trainyard.api.dashboard.sessions import current_user
from trainyard.api.jobs import get_job
from trainyard.api.schemas import plausible_id
from trainyard.db.models import Attempt, Job

router = APIRouter(prefix="/ui", include_in_schema=False)

# While no attempt (or no newer one) exists, the job is looked at this often.
ATTEMPT_POLL_S = 1.0
MAX_RANK = 2**31 - 1


def _sse(event: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data))
    return ("\n".join(lines) + "\n\n").encode()


def _resume_point(last_event_id: str | None) -> tuple[int | None, int]:
    """(attempt, offset) of an EventSource's Last-Event-ID, `attempt:offset`; (None, 0) when absent or bad."""
    attempt, _, offset = (last_event_id or "").partition(":")
    if attempt.isdigit() and offset.isdigit() and int(attempt) >= 1:
        return int(attempt), int(offset)
    return None, 0


def _next_attempt(request: Request, job_id: str, after: int) -> tuple[int | None, bool]:
    """The first attempt numbered above `after`, if any, and whether the job has ended."""
    with request.app.state.sessions() as session:
        job = session.get(Job, job_id)
        newest = session.scalar(
            select(func.min(Attempt.number)).where(Attempt.job_id == job_id, Attempt.number > after)
        )
    return newest, job is None or job.state in logreads.TERMINAL_JOB_STATES


async def _events(
    request: Request, job_id: str, rank: int, stream: str, attempt: int | None, offset: int
) -> AsyncIterator[bytes]:
    current = attempt
    while True:
        if current is None:
            found, over = await run_in_threadpool(_next_attempt, request, job_id, 0)
            current = found
        if current is None:
            if over or await request.is_disconnected():
                break
            await asyncio.sleep(ATTEMPT_POLL_S)
            continue
        yield _sse("attempt", {"attempt": current}, f"{current}:{offset}")
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        async for chunk in logreads.follow(request, job_id, current, rank, stream, offset):
            offset += len(chunk)
            yield _sse("log", {"text": decoder.decode(chunk)}, f"{current}:{offset}")
        found, over = await run_in_threadpool(_next_attempt, request, job_id, current)
        while found is None and not over and not await request.is_disconnected():
            await asyncio.sleep(ATTEMPT_POLL_S)
            found, over = await run_in_threadpool(_next_attempt, request, job_id, current)
        if found is None:
            break
        current, offset = found, 0
    yield _sse("end", {"attempt": current})


@router.get("/jobs/{job_id}/logs/events")
async def log_events(
    request: Request,
    job_id: str,
    rank: int = Query(0, ge=0, le=MAX_RANK),
    stream: str = Query("stdout", pattern="^(stdout|stderr)$"),
) -> StreamingResponse:
    user = await run_in_threadpool(current_user, request)
    if not plausible_id(job_id):
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    await run_in_threadpool(get_job, request, job_id, user.who)  # 404 for another workspace's job
    attempt, offset = _resume_point(request.headers.get("last-event-id"))
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        _events(request, job_id, rank, stream, attempt, offset), media_type="text/event-stream", headers=headers
    )
