"""What `az login` needs from a cloud besides Batch AI, so that azure-cli works against trainyard offline.

azure-cli signs in through MSAL against its cloud's `active_directory` endpoint and then lists the
subscriptions on `resource_manager`. trainyard serves both, under /arm:

- `GET /metadata/endpoints`: the cloud's endpoints, so that `az cloud register --endpoint-resource-manager
  <api-url>/arm/` alone registers it (login endpoint `<api-url>/arm/identity`, audience `<api-url>/arm/`).
- An OAuth 2.0 authority at `/identity/{tenant}` (OIDC discovery and a token endpoint) granting only
  `client_credentials`: `az login --service-principal -u <any name> -p <trainyard token> --tenant trainyard`
  hands the token over as client secret (`--federated-token <token>`: as client assertion) and gets the
  same token back as access token. Nothing new is minted: what reaches the Batch AI routes is the
  trainyard token, checked there as always.
- `GET /subscriptions[/{id}]`: the one subscription azure-cli then selects (trainyard takes any id).

MSAL checks an authority it does not know with login.microsoftonline.com unless told not to:
`az config set core.instance_discovery=false` (or AZURE_CORE_INSTANCE_DISCOVERY=false).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from trainyard.api.arm.common import PREFIX, not_found
from trainyard.api.auth import Principal, principal_for_token, require

router = APIRouter()

SUBSCRIPTION_ID = "00000000-0000-0000-0000-000000000000"
SUBSCRIPTION_NAME = "trainyard"
TENANT_ID = "trainyard"
CLOUD_NAME = "trainyard"
# A trainyard token does not expire on its own; clients ask again after this many seconds anyway.
TOKEN_LIFETIME_S = 3600
TENANT_PATTERN = r"^[-\w.]+$"
MAX_TOKEN_REQUEST_BYTES = 16 * 1024


def _arm_url(request: Request) -> str:
    """`<scheme>://<host>[/root]/arm`, as the client reached it (what it registered as resource manager)."""
    return str(request.base_url).rstrip("/") + PREFIX


def _authority(request: Request, tenant: str) -> str:
    return f"{_arm_url(request)}/identity/{tenant}"


@router.get("/metadata/endpoints", summary="The cloud's endpoints, for `az cloud register`")
# azure-cli appends "/metadata/endpoints" to the resource manager URL as given, trailing slash and all.
@router.get("//metadata/endpoints", include_in_schema=False)
def cloud_metadata(request: Request) -> dict[str, Any]:
    arm = _arm_url(request)
    return {
        "name": CLOUD_NAME,
        "resourceManager": f"{arm}/",
        "portal": f"{str(request.base_url).rstrip('/')}/ui",
        "authentication": {
            "loginEndpoint": f"{arm}/identity",
            "audiences": [f"{arm}/"],
            "tenant": TENANT_ID,
            "identityProvider": "AAD",
        },
        "suffixes": {},
    }


@router.get("/identity/{tenant}/v2.0/.well-known/openid-configuration", summary="OIDC discovery of the authority")
def openid_configuration(request: Request, tenant: str = Path(pattern=TENANT_PATTERN)) -> dict[str, Any]:
    authority = _authority(request, tenant)
    return {
        "issuer": f"{authority}/v2.0",
        "authorization_endpoint": f"{authority}/oauth2/v2.0/authorize",
        "token_endpoint": f"{authority}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post"],
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": ["token"],
        "tenant_region_scope": None,
    }


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    """An OAuth 2.0 error answer (RFC 6749 §5.2), the shape MSAL reads, rather than a CloudError."""
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


@router.post("/identity/{tenant}/oauth2/v2.0/token", summary="Client credentials: a trainyard token for itself")
async def token(request: Request, tenant: str = Path(pattern=TENANT_PATTERN)) -> JSONResponse:
    body = await request.body()
    if len(body) > MAX_TOKEN_REQUEST_BYTES:
        return _oauth_error(400, "invalid_request", "request too large")
    form = {key: values[0] for key, values in parse_qs(body.decode("utf-8", "replace")).items()}
    if form.get("grant_type") != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "only client_credentials: the secret is a trainyard token")
    # `az login --service-principal -p TOKEN` posts it as client_secret, `--federated-token TOKEN` as client_assertion.
    secret = form.get("client_secret") or form.get("client_assertion") or ""
    if not secret or principal_for_token(request, secret) is None:
        return _oauth_error(401, "invalid_client", "the client secret is not a valid trainyard token")
    return JSONResponse(
        {
            "token_type": "Bearer",
            "access_token": secret,
            "expires_in": TOKEN_LIFETIME_S,
            "ext_expires_in": TOKEN_LIFETIME_S,
        },
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def _subscription() -> dict[str, Any]:
    return {
        "id": f"/subscriptions/{SUBSCRIPTION_ID}",
        "subscriptionId": SUBSCRIPTION_ID,
        "tenantId": TENANT_ID,
        "displayName": SUBSCRIPTION_NAME,
        "state": "Enabled",
        "subscriptionPolicies": {
            "locationPlacementId": "Public_2014-09-01",
            "quotaId": "trainyard",
            "spendingLimit": "Off",
        },
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
        "tags": {},
    }


@router.get("/subscriptions", summary="The subscriptions a token sees: trainyard's one")
def list_subscriptions(_who: Principal = require("viewer")) -> dict[str, Any]:
    return {"value": [_subscription()], "count": {"type": "Total", "value": 1}}


@router.get("/subscriptions/{subscription_id}", summary="trainyard's one subscription")
def get_subscription(subscription_id: str, _who: Principal = require("viewer")) -> dict[str, Any]:
    if subscription_id.lower() != SUBSCRIPTION_ID:
        raise not_found("subscription", subscription_id)
    return _subscription()
