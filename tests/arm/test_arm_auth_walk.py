"""Every /arm route answers 401 CloudError to a caller without a (valid) token, but for an explicit public set.

/arm routes are left out of the OpenAPI document (`include_in_schema=False`), so the walk of
tests/integration/security/test_security_routes.py does not see them: this one takes the routes from
the app's router itself, so that a route added to /arm later is walked too and cannot be public by
accident. The public ones are what `az login` asks of a cloud before it has a token (identity.py) and
the signed download links, whose signature is the credential (403 without a valid one).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI, routing

from tests.arm.served import Api, served
from trainyard.api.app import create_app
from trainyard.api.arm.common import API_VERSION, PREFIX
from trainyard.config import load_settings
from trainyard.crypto import new_secret_key
from trainyard.db.engine import upgrade

# (method, path template) → the status a caller without a token gets.
PUBLIC = {
    ("GET", "/arm/metadata/endpoints"): 200,
    ("GET", "/arm//metadata/endpoints"): 200,  # az asks for it with a doubled slash
    ("GET", "/arm/identity/{tenant}/v2.0/.well-known/openid-configuration"): 200,
    ("POST", "/arm/identity/{tenant}/oauth2/v2.0/token"): 400,  # OAuth's own error: no client credentials
    ("GET", "/arm/files/{token}"): 403,  # a signed link: the signature is the credential
}
# A value each path parameter accepts (names, ids, a subscription, a location), so that the route runs.
PARAMETER = "x1"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    home = tmp_path_factory.mktemp("arm-auth-walk")
    url = f"sqlite:///{home / 'walk.db'}"
    upgrade(url)
    settings = load_settings({
        "TRAINYARD_HOME": str(home / "home"),
        "TRAINYARD_DATABASE_URL": url,
        "TRAINYARD_STORAGE_URL": f"file://{home / 'blobs'}",
        "TRAINYARD_ADMIN_TOKEN": "arm-auth-walk-admin",
        "TRAINYARD_SECRET_KEY": new_secret_key(),
        "TRAINYARD_REDIS_URL": "redis://127.0.0.1:1/0",  # nothing here reaches Redis
    }, home_files=False)  # fmt: skip
    app = create_app(settings, notifier=False)
    with served(app) as client:
        yield client


def arm_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every route under /arm, from the router (not the OpenAPI document).

    FastAPI keeps included routers as such (its OpenAPI document walks them with iter_route_contexts);
    an older FastAPI flattened them into app.routes.
    """
    contexts = getattr(routing, "iter_route_contexts", None)
    routes: Iterable[Any] = contexts(app.routes) if contexts is not None else app.routes
    found = set()
    for route in routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if isinstance(path, str) and path.startswith(PREFIX + "/") and methods:
            found |= {(method, path) for method in methods if method != "HEAD"}
    return sorted(found)


def _call(client: Api, method: str, template: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    path = re.sub(r"\{[^}]+\}", PARAMETER, template)
    body = {} if method in ("PUT", "POST", "PATCH") else None
    answer = client.request(method, path, params={"api-version": API_VERSION}, json=body, headers=headers)
    try:
        parsed = answer.json()
    except ValueError:
        parsed = {}
    return answer.status_code, parsed if isinstance(parsed, dict) else {}


def test_the_walk_finds_the_arm_routes_and_every_public_one_is_still_there(api: Api) -> None:
    routes = arm_routes(api.app)
    assert len(routes) >= 36, routes  # workspaces, experiments, jobs, files, clusters, file servers, identity, …
    assert set(PUBLIC) <= set(routes), sorted(set(PUBLIC) - set(routes))


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-trainyard-token"}], ids=["none", "bogus"])
def test_every_arm_route_but_the_public_ones_answers_401_cloud_error_without_a_valid_token(
    api: Api, headers: dict[str, str]
) -> None:
    wrong = []
    for method, template in arm_routes(api.app):
        status, body = _call(api, method, template, headers)
        if (method, template) in PUBLIC:
            if status != PUBLIC[(method, template)]:
                wrong.append(f"{method} {template}: {status}, public route expected {PUBLIC[(method, template)]}")
            continue
        error = body.get("error")
        if status != 401 or not isinstance(error, dict) or error.get("code") != "AuthenticationFailed":
            wrong.append(f"{method} {template}: {status} {body}")
    assert not wrong, "\n".join(wrong)
