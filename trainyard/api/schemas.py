"""Response and request bodies of the REST API, so that the OpenAPI document says what each route returns.

Response models allow extra fields: a field added to the job object later is passed through
(and shows up as undocumented) rather than silently dropped. Routes use
`response_model_exclude_unset=True` so the models check and document, never reshape.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def plausible_id(value: str) -> bool:
    """Whether a path parameter could name one of our objects (else: 404 without asking the database,
    which may refuse such a string outright, e.g. PostgreSQL and NUL bytes)."""
    return bool(_ID.match(value))


def nul_fields(value: Any, path: str = "") -> list[str]:
    """Paths of the strings (keys too) in a JSON value that hold a NUL character, which
    PostgreSQL cannot store: such a request is refused up front rather than failing in the database."""
    if isinstance(value, str):
        return [path or "(spec)"] if "\x00" in value else []
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            found += [child] if "\x00" in str(key) else nul_fields(item, child)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += nul_fields(item, f"{path}[{index}]")
    return found


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorResponse(BaseModel):
    """401, 403, 404 and 409 bodies."""

    detail: str


class Problem(BaseModel):
    field: str
    reason: str


class SpecProblems(BaseModel):
    message: str
    problems: list[Problem]


class RequestProblem(BaseModel):
    """One problem with a request's parameters (the input itself is never echoed back)."""

    loc: list[str | int]
    msg: str
    type: str


class ValidationFailed(BaseModel):
    """422: a refused job spec names each field; malformed parameters are listed by location."""

    detail: SpecProblems | list[RequestProblem]


class AttemptOut(_Open):
    number: int
    state: str
    reason: str | None
    nodes: list[str]
    gpus: list[list[int]]
    exit_codes: list[int | None]
    retried_by: str | None = Field(None, description='what queued the job again after it: "retry[N]" or "max_retries"')
    started_at: str | None
    ended_at: str | None


class JobOut(_Open):
    """The job object of SPEC §4 (`attempts` only where one job is shown)."""

    id: str
    name: str
    workspace: str
    experiment: str
    state: str
    priority: int
    attempt: int
    exit_code: int | None
    pending_reason: str | None
    submitted_at: str
    attempts: list[AttemptOut] | None = None


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: int | None


class SubmittedJob(_Open):
    id: str
    name: str


class BatchSubmitted(BaseModel):
    jobs: list[SubmittedJob]


class NodeOut(_Open):
    id: str
    pool: str
    address: str
    state: str
    slots: int
    slots_used: float
    gpus: list[int]
    gpus_used: list[int]
    memory_bytes: int | None
    labels: dict[str, str]
    running_parts: int
    registered_at: str | None
    last_heartbeat_at: str | None


class NodeList(BaseModel):
    nodes: list[NodeOut]


class PoolOut(_Open):
    name: str
    nodes: dict[str, int]
    min_nodes: int
    max_nodes: int | None


class PoolList(BaseModel):
    pools: list[PoolOut]


class Health(BaseModel):
    ok: bool
    version: str


# -- tokens -----------------------------------------------------------------------------------


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["admin", "user", "viewer"]
    workspace: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", description="required unless role is admin"
    )
    name: str | None = Field(default=None, min_length=1, max_length=48, pattern=r"^[^\x00-\x1f\x7f]+$")
    expires_in: float | str | None = Field(
        default=None, description="seconds, or a duration like 90s, 2h, 7d; none: never expires"
    )


class TokenOut(BaseModel):
    id: str
    name: str
    role: str
    workspace: str | None
    created_at: str
    created_by: str
    expires_at: str | None
    deleted_at: str | None


class TokenCreated(TokenOut):
    token: str = Field(description="the token itself: shown this once, never again")


class TokenList(BaseModel):
    tokens: list[TokenOut]


# -- audit ------------------------------------------------------------------------------------


class AuditEvent(BaseModel):
    id: int
    at: str
    kind: str
    job_id: str | None
    attempt: int | None
    node_id: str | None
    actor: str | None
    detail: dict[str, Any]


class AuditPage(BaseModel):
    events: list[AuditEvent]
    next_cursor: int | None
