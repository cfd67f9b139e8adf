"""What every module of the Batch AI 2018-05-01 surface under /arm shares (the contract for its routes).

- Every route takes the `api_version` dependency: `api-version=2018-05-01` or CloudError 400.
- Errors are `CloudError(status, code, message, target=None, details=None)`, rendered as
  `{"error": {"code", "message", "target", "details"}}`. `install(app)` makes this the shape of every
  error under /arm: trainyard's 401/403 from `require(role)`, FastAPI's 404/405, and request-body
  validation (CloudError 400 `InvalidParameter` whose target names the field, `properties.nodeCount`).
  Codes as ARM spells them (`ERROR_CODES`); clients map the status (401, 403, 404, 409, 400).
- Auth is trainyard's: `require("viewer" | "user" | "admin")` from trainyard.api.auth. A
  workspace-scoped token sees only its workspace: `own_workspace(who, name)` answers 404 for another
  one, exactly as for a workspace that does not exist.
- Identity: a workspace is identified by its NAME alone, across subscriptions and resource groups,
  because trainyard keys jobs, tokens and volumes on the workspace name. Any subscription id and
  resource group are accepted; those of the PUT that created the workspace are stored on it
  (db.models.ArmWorkspace) and make up its resource id. Under any other subscription or resource
  group the workspace does not exist (404), and creating it there is 409 Conflict.
  Routes are templates under `WORKSPACE_PATH` (`GROUP_PATH` for lists); the `workspace_ids` dependency
  reads their parameters, and `workspace_in(session, who, ids)` is the lookup every child resource
  (experiments, clusters, file servers, jobs) starts from.
- Deletes: `found_or_none(lambda: ...lookup...)` is None where the lookup answers 404 (the resource,
  or a parent of it, is not there, or not the caller's to see): the route then answers 204
  (`NOTHING_DELETED`), ARM's "nothing to delete", so every SDK's delete poller ends, and a workspace-
  scoped token learns nothing of another workspace (its resources are 204 as well).
- Resource ids: `resource_id(ids, ("experiments", name), ("jobs", name))`; bodies:
  `envelope(id, name, type, properties, **extra)`; types are `resource_type("experiments", "jobs")`.
- Lists: `page_request` (a dependency reading `maxresults` and `$skiptoken`) and `list_result`, which
  answers `{"value": [...], "nextLink": <absolute URL>}`; the skiptoken is opaque (the sort key of the
  page's last item, base64url), the nextLink keeps the request's scheme, host and base path.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from trainyard.api.auth import Principal
from trainyard.api.errors import http_error_handler, validation_error_handler
from trainyard.db.models import ArmWorkspace

API_VERSION = "2018-05-01"
PREFIX = "/arm"
PROVIDER = "Microsoft.BatchAI"
# Path parameter patterns of the REST specification (ResourceGroupNameParameter, WorkspaceNameParameter, …).
RESOURCE_GROUP_PATTERN = r"^[-\w\._]+$"
NAME_PATTERN = r"^[-\w_]+$"
MAX_RESULTS = 1000

ERROR_CODES = {
    400: "BadRequest",
    401: "AuthenticationFailed",
    403: "AuthorizationFailed",
    404: "ResourceNotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "RequestEntityTooLarge",
    416: "InvalidRange",
}

T = TypeVar("T")


class CloudError(Exception):
    """An ARM error answer: status, code and message, with the field (`target`) it concerns, if one."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        target: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.target, self.details, self.headers = target, details, headers

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target is not None:
            error["target"] = self.target
        if self.details:
            error["details"] = self.details
        return {"error": error}


def not_found(kind: str, name: str) -> CloudError:
    return CloudError(404, ERROR_CODES[404], f"The {kind} '{name}' was not found.")


NOTHING_DELETED = 204


def found_or_none(find: Callable[[], T]) -> T | None:
    """What `find` returns, or None where it raises CloudError 404 (a DELETE then answers NOTHING_DELETED)."""
    try:
        return find()
    except CloudError as exc:
        if exc.status != 404:
            raise
        return None


def conflict(message: str, target: str | None = None) -> CloudError:
    return CloudError(409, ERROR_CODES[409], message, target)


def bad_request(message: str, target: str | None = None, code: str = "InvalidParameter") -> CloudError:
    return CloudError(400, code, message, target)


def api_version(version: str | None = Query(None, alias="api-version", description="must be 2018-05-01")) -> str:
    """A dependency: the request's api-version, which must be the one this surface implements."""
    if version is None:
        raise bad_request(f"The api-version query parameter is required ({API_VERSION}).", "api-version",
                          "MissingApiVersionParameter")  # fmt: skip
    if version != API_VERSION:
        raise bad_request(f"The api-version '{version}' is not supported; use {API_VERSION}.", "api-version",
                          "InvalidApiVersionParameter")  # fmt: skip
    return version


# ---- ids and bodies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkspaceIds:
    """Where a workspace lives in ARM terms: what its resource id is built from."""

    subscription_id: str
    resource_group: str
    workspace: str


# Route templates (relative to /arm); `workspace_ids` is the dependency that reads their parameters.
GROUP_PATH = "/subscriptions/{subscription_id}/resourceGroups/{resource_group}/providers/" + PROVIDER
WORKSPACE_PATH = GROUP_PATH + "/workspaces/{workspace}"


def workspace_ids(
    subscription_id: str = Path(min_length=1, max_length=64),
    resource_group: str = Path(min_length=1, max_length=90, pattern=RESOURCE_GROUP_PATTERN),
    workspace: str = Path(min_length=1, max_length=64, pattern=NAME_PATTERN),
) -> WorkspaceIds:
    """A dependency: the subscription, resource group and workspace a WORKSPACE_PATH route names."""
    return WorkspaceIds(subscription_id, resource_group, workspace)


def ids_of(row: ArmWorkspace) -> WorkspaceIds:
    return WorkspaceIds(row.subscription_id, row.resource_group, row.name)


def resource_id(ids: WorkspaceIds, *children: tuple[str, str]) -> str:
    """`/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.BatchAI/workspaces/{ws}[/kind/name…]`."""
    path = (f"/subscriptions/{ids.subscription_id}/resourceGroups/{ids.resource_group}"
            f"/providers/{PROVIDER}/workspaces/{ids.workspace}")  # fmt: skip
    return path + "".join(f"/{kind}/{name}" for kind, name in children)


def resource_type(*kinds: str) -> str:
    """`Microsoft.BatchAI/workspaces[/experiments/jobs…]`."""
    return "/".join((PROVIDER, "workspaces", *kinds))


def envelope(id: str, name: str, type: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An ARM resource body; `extra` adds top-level members (location, tags), left out when None."""
    body: dict[str, Any] = {"id": id, "name": name, "type": type}
    body.update({key: value for key, value in extra.items() if value is not None})
    body["properties"] = properties
    return body


def arm_time(value: Any) -> str | None:
    """A datetime as ARM writes it (ISO 8601, UTC, `Z`)."""
    if value is None:
        return None
    return str(value.isoformat().replace("+00:00", "Z"))


# ---- workspaces: the root every child resource is looked up from ---------------------------------


def own_workspace(who: Principal, name: str) -> None:
    """404 (as for a workspace that does not exist) when the caller's token is scoped to another one."""
    if not who.sees(name):
        raise not_found("workspace", name)


def workspace_in(session: Session, who: Principal, ids: WorkspaceIds) -> ArmWorkspace:
    """The workspace at these ids, as the caller may see it; else CloudError 404."""
    own_workspace(who, ids.workspace)
    row = session.get(ArmWorkspace, ids.workspace)
    if row is None or not lives_at(row, ids):
        raise not_found("workspace", ids.workspace)
    return row


def lives_at(row: ArmWorkspace, ids: WorkspaceIds) -> bool:
    """Whether the workspace is under these ids' subscription and resource group (ARM compares those
    case-insensitively)."""
    return (row.subscription_id.lower(), row.resource_group.lower()) == (
        ids.subscription_id.lower(),
        ids.resource_group.lower(),
    )


# ---- paging ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageRequest:
    """One page of a list: at most `limit` items whose sort key is after `after`."""

    limit: int
    after: str | None
    explicit_limit: bool = False

    def of(self, items: Iterable[T], key: Callable[[T], str]) -> list[T]:
        """Of items held in memory: those whose key sorts after `after`, in key order, at most
        `limit + 1` (one more tells `list_result` there is a next page)."""
        return sorted((i for i in items if self.after is None or key(i) > self.after), key=key)[: self.limit + 1]


def _decode_skiptoken(token: str) -> str:
    try:
        return base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad_request("The $skiptoken is not one this service handed out.", "$skiptoken") from None


def encode_skiptoken(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode("utf-8")).decode("ascii").rstrip("=")


def page_request(
    maxresults: int | None = Query(None, ge=1, le=MAX_RESULTS, description="most items per page (1000)"),
    skiptoken: str | None = Query(None, alias="$skiptoken", description="from a nextLink"),
) -> PageRequest:
    """A dependency: the page a list request asks for."""
    after = _decode_skiptoken(skiptoken) if skiptoken else None
    return PageRequest(maxresults or MAX_RESULTS, after, maxresults is not None)


def next_link(request: Request, page: PageRequest, last_key: str) -> str:
    """The absolute URL of the page after `last_key`, on the scheme, host and base path of this request."""
    params: dict[str, str | int] = {"api-version": API_VERSION, "$skiptoken": encode_skiptoken(last_key)}
    if page.explicit_limit:
        params["maxresults"] = page.limit
    return str(request.url.replace_query_params(**params))


def remote_login(node: tuple[str, str]) -> dict[str, Any]:
    """A node (id, address) as Batch AI's RemoteLoginInformation named one: its id, the address its
    worker registered, and the SSH port Batch AI gave (22)."""
    node_id, address = node
    return {"nodeId": node_id, "ipAddress": address, "port": 22}


def list_result(
    request: Request, page: PageRequest, rows: Sequence[T], key: Callable[[T], str], render: Callable[[T], Any]
) -> dict[str, Any]:
    """`{"value", "nextLink"}` from up to `page.limit + 1` rows sorted by `key` (one more: a next page)."""
    shown = list(rows[: page.limit])
    body: dict[str, Any] = {"value": [render(row) for row in shown]}
    if len(rows) > page.limit and shown:
        body["nextLink"] = next_link(request, page, key(shown[-1]))
    return body


# ---- error answers -----------------------------------------------------------------------------


def is_arm_path(request: Request) -> bool:
    path: str = request.scope.get("path", "")
    return path == PREFIX or path.startswith(PREFIX + "/")


def cloud_error_response(exc: CloudError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content=exc.body(), headers=exc.headers)


def field_target(loc: Sequence[str | int]) -> str:
    """`("body", "properties", "nodeCount")` → `properties.nodeCount`; list indexes as `[0]`."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    target = ""
    for part in parts:
        target += f"[{part}]" if isinstance(part, int) else (f".{part}" if target else str(part))
    return target


def _cloud_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CloudError)
    return cloud_error_response(exc)


def _validation_answer(exc: RequestValidationError) -> Response:
    details = [
        {"code": "InvalidParameter", "message": str(p.get("msg", "")), "target": field_target(p.get("loc", ()))}
        for p in exc.errors()
    ]
    first = details[0]["target"] if details else None
    message = "; ".join(f"{d['target']}: {d['message']}" for d in details) or "invalid request"
    return cloud_error_response(CloudError(400, "InvalidParameter", message, first, details))


def _http_answer(request: Request, exc: StarletteHTTPException) -> Response:
    code = ERROR_CODES.get(exc.status_code, "BadRequest" if exc.status_code < 500 else "InternalServerError")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"No resource or route at {request.url.path}."
    return cloud_error_response(CloudError(exc.status_code, code, message, headers=dict(exc.headers or {})))


Handler = Callable[[Request, Exception], Any]


def install(app: FastAPI) -> None:
    """CloudError answers for every error under /arm; other paths keep the handlers installed before
    (call it last: these replace them, and defer to them off /arm)."""
    other_validation: Handler = app.exception_handlers.get(RequestValidationError, validation_error_handler)
    other_http: Handler = app.exception_handlers.get(StarletteHTTPException, http_error_handler)

    def on_validation(request: Request, exc: Exception) -> Any:
        assert isinstance(exc, RequestValidationError)
        return _validation_answer(exc) if is_arm_path(request) else other_validation(request, exc)

    def on_http(request: Request, exc: Exception) -> Any:
        assert isinstance(exc, StarletteHTTPException)
        return _http_answer(request, exc) if is_arm_path(request) else other_http(request, exc)

    app.add_exception_handler(CloudError, _cloud_error_handler)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
