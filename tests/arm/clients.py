"""Run Azure's own Batch AI clients against trainyard's /arm, each from its pinned venv.

Two halves, so that this one file serves both sides (it imports only the standard library at the top):

- In the test process: `run_client("sdk7", script, *args, target=arm_target)` runs a script file (or
  `code=` a snippet) with the venv's Python and returns the JSON its last stdout line holds;
  `run_az(target, "batchai", "workspace", "list")` runs azure-cli's `az`. The venvs are
  `scripts/install-arm-clients.sh`'s: sdk7 (azure-mgmt-batchai 7.0.0), sdk2 (2.0.0), azcli (2.91.0).
- In the client's process (the script imports this module: its folder is on PYTHONPATH):
  `sdk7_client()` / `sdk2_client()` build the SDK's management client from the environment that
  `run_client` set (base URL, token, subscription, CA bundle), and `emit(value)` hands JSON back.
  A script changes nothing else of what it would do against Azure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CLIENTS_DIR = Path(os.environ.get("TRAINYARD_ARM_CLIENTS") or REPO / ".test-services" / "arm-clients")
INSTALL_SCRIPT = REPO / "scripts" / "install-arm-clients.sh"
VENVS = ("sdk7", "sdk2", "azcli")
# Batch AI's resource ids need one; trainyard accepts any (see trainyard/api/arm/common.py).
SUBSCRIPTION_ID = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "trainyard-tests"
CLIENT_TIMEOUT_S = 240.0

# The variables a client script reads (set by run_client, read by sdk7_client/sdk2_client).
ENV_BASE_URL = "ARM_BASE_URL"
ENV_TOKEN = "ARM_TOKEN"
ENV_SUBSCRIPTION = "ARM_SUBSCRIPTION_ID"
ENV_RESOURCE_GROUP = "ARM_RESOURCE_GROUP"
ENV_CA_BUNDLE = "ARM_CA_BUNDLE"


@dataclass(frozen=True)
class ArmTarget:
    """Where a client goes: the /arm base URL (https), the bearer token, the CA that issued the API's certificate."""

    base_url: str
    token: str = field(repr=False)
    ca_bundle: Path
    subscription_id: str = SUBSCRIPTION_ID
    resource_group: str = RESOURCE_GROUP

    def with_token(self, token: str) -> ArmTarget:
        return ArmTarget(self.base_url, token, self.ca_bundle, self.subscription_id, self.resource_group)


class ClientFailed(AssertionError):
    """A client process exited non-zero or printed no JSON; the message carries its output."""

    def __init__(self, args: Sequence[str], result: subprocess.CompletedProcess[str], hide: str = ""):
        self.returncode, self.stdout, self.stderr = result.returncode, result.stdout, result.stderr
        message = (
            f"{' '.join(args)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
            f"\n--- stderr\n{result.stderr[-4000:]}"
        )
        super().__init__(message.replace(hide, "<token>") if hide else message)


# -- the test process's half -----------------------------------------------------------------


def ensure_clients() -> Path:
    """The clients' folder, installing what is missing first (a no-op once `make test` ran the script)."""
    subprocess.run(["bash", str(INSTALL_SCRIPT)], check=True, stdout=subprocess.DEVNULL, timeout=1800)
    return CLIENTS_DIR


def venv_bin(venv: str, program: str = "python") -> Path:
    if venv not in VENVS:
        raise ValueError(f"unknown client venv {venv!r}; one of {VENVS}")
    return CLIENTS_DIR / venv / "bin" / program


def client_env(target: ArmTarget, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a client process: where to go, with what token, trusting which CA."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TRAINYARD_", "PYTHON", "AZURE_"))}
    ca = str(target.ca_bundle)
    env.update(
        {
            ENV_BASE_URL: target.base_url,
            ENV_TOKEN: target.token,
            ENV_SUBSCRIPTION: target.subscription_id,
            ENV_RESOURCE_GROUP: target.resource_group,
            ENV_CA_BUNDLE: ca,
            # requests (azure-core's transport, msrest, MSAL, azure-cli) and the ssl module trust it.
            "REQUESTS_CA_BUNDLE": ca,
            "SSL_CERT_FILE": ca,
            "PYTHONPATH": str(Path(__file__).resolve().parent),
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    env.update(extra or {})
    return env


def run_client(
    venv: str,
    script: Path | str | None = None,
    *args: str,
    target: ArmTarget,
    code: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = CLIENT_TIMEOUT_S,
    check: bool = True,
) -> Any:
    """Run `script` (a file) or `code` (a snippet) with `venv`'s Python; the JSON of its last stdout line.

    With check=False a failing client returns its CompletedProcess instead of raising ClientFailed.
    """
    if (script is None) == (code is None):
        raise ValueError("give a script file or code, not both")
    command = [str(venv_bin(venv)), *(["-c", code] if code is not None else [str(script)]), *args]
    result = subprocess.run(
        command, env=client_env(target, env), capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if result.returncode != 0:
        if not check:
            return result
        raise ClientFailed(command, result, hide=target.token)
    return last_json(command, result)


def run_az(
    target: ArmTarget,
    *args: str,
    config_dir: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float = CLIENT_TIMEOUT_S,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`az ARGS` from the azcli venv with its own AZURE_CONFIG_DIR (login, clouds, defaults live there)."""
    command = [str(venv_bin("azcli", "az")), *args]
    extra = {
        "AZURE_CONFIG_DIR": str(config_dir),
        "AZURE_CORE_COLLECT_TELEMETRY": "false",
        "AZURE_CORE_NO_COLOR": "true",
        "AZURE_CORE_ONLY_SHOW_ERRORS": "true",
        "AZURE_CORE_SURVEY_MESSAGE": "false",
        "AZURE_CORE_LOGIN_EXPERIENCE_V2": "off",
        **(env or {}),
    }
    result = subprocess.run(
        command, env=client_env(target, extra), capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if check and result.returncode != 0:
        raise ClientFailed(command, result, hide=target.token)
    return result


def last_json(command: Sequence[str], result: subprocess.CompletedProcess[str]) -> Any:
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise ClientFailed(command, result) from None


# -- the client process's half (runs inside a client venv) -------------------------------------


def emit(value: Any) -> None:
    """Hand `value` back to run_client: one JSON line, last on stdout."""
    sys.stdout.write("\n" + json.dumps(value, default=str) + "\n")
    sys.stdout.flush()


def target_from_env() -> ArmTarget:
    return ArmTarget(
        base_url=os.environ[ENV_BASE_URL],
        token=os.environ[ENV_TOKEN],
        ca_bundle=Path(os.environ[ENV_CA_BUNDLE]),
        subscription_id=os.environ.get(ENV_SUBSCRIPTION, SUBSCRIPTION_ID),
        resource_group=os.environ.get(ENV_RESOURCE_GROUP, RESOURCE_GROUP),
    )


class StaticTokenCredential:
    """An azure-core TokenCredential handing out one trainyard token (the only thing a script swaps for Azure's)."""

    def __init__(self, token: str):
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(self._token, 2**31 - 1)


def sdk7_client(target: ArmTarget | None = None, **kwargs: Any) -> Any:
    """azure-mgmt-batchai 7.x's `BatchAI` on trainyard: base URL and credential, TLS checked against our CA."""
    from azure.mgmt.batchai import BatchAI

    target = target or target_from_env()
    kwargs.setdefault("connection_verify", str(target.ca_bundle))
    return BatchAI(StaticTokenCredential(target.token), target.subscription_id, base_url=target.base_url, **kwargs)


def sdk2_client(target: ArmTarget | None = None) -> Any:
    """azure-mgmt-batchai 2.0's `BatchAIManagementClient` (msrest) on trainyard."""
    from azure.mgmt.batchai import BatchAIManagementClient
    from msrest.authentication import BasicTokenAuthentication

    target = target or target_from_env()
    credentials = BasicTokenAuthentication({"access_token": target.token})
    client = BatchAIManagementClient(credentials, target.subscription_id, base_url=target.base_url)
    client.config.connection.verify = str(target.ca_bundle)
    return client
