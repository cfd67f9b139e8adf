"""docker-compose.yml held to account without a Docker engine: schema, variables, commands, exposure."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
COMPOSE_SCHEMA = REPO_ROOT / "tests" / "data" / "compose-spec" / "compose-spec.json"  # with its LICENSE
# Services that run someone else's image (their commands are that image's, not trainyard's).
THIRD_PARTY = {"redis", "postgres", "azurite"}
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; `$$` is a literal dollar.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            values[name.strip()] = value.strip()
    return values


def used_variables(text: str) -> set[str]:
    return {match.group(1) for match in VARIABLE.finditer(text)}


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation of ${VAR} forms in every string of the loaded file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, str):
        replaced = VARIABLE.sub(lambda m: env.get(m.group(1)) or (m.group(3) or ""), value)
        return replaced.replace("$$", "$")
    return value


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    return dict(interpolate(document, env if env is not None else env_example()))


def trainyard_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose["services"].items() if name not in THIRD_PARTY}


def compose_schema() -> dict[str, Any]:
    if not COMPOSE_SCHEMA.exists():
        reason = f"the Compose specification's schema is not at {COMPOSE_SCHEMA} (tests/data/)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    return dict(json.loads(COMPOSE_SCHEMA.read_text()))


def test_compose_file_validates_against_the_compose_spec() -> None:
    import jsonschema  # type: ignore[import-untyped]

    schema = compose_schema()
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(document)
    ]
    assert not errors, errors
    interpolated = load_compose()
    assert not list(jsonschema.Draft7Validator(schema).iter_errors(interpolated))


def test_every_variable_used_is_defined_in_env_example() -> None:
    used = used_variables(COMPOSE_FILE.read_text())
    assert used, "the compose file takes its settings from .env"
    missing = used - set(env_example())
    assert not missing, f"used in docker-compose.yml but not defined in .env.example: {sorted(missing)}"


def test_secrets_come_from_env() -> None:
    used = used_variables(COMPOSE_FILE.read_text())
    for secret in (
        "TRAINYARD_ADMIN_TOKEN",
        "TRAINYARD_SECRET_KEY",
        "REDIS_PASSWORD",
        "POSTGRES_PASSWORD",
        "FLOWER_BASIC_AUTH",
    ):
        assert secret in used
        assert secret in env_example()
    text = COMPOSE_FILE.read_text()
    for name, value in env_example().items():
        if "PASSWORD" in name or "TOKEN" in name or "SECRET" in name:
            assert value not in text, f"{name}'s example value is written into docker-compose.yml"


def test_the_cluster_has_every_component() -> None:
    services = load_compose()["services"]
    assert {"redis", "postgres", "azurite", "api", "flower"} <= set(services)
    commands = {name: s.get("command") or [] for name, s in services.items()}
    assert sum(1 for c in commands.values() if c[:1] == ["scheduler"]) == 2
    workers = [c for c in commands.values() if c[:1] == ["worker"]]
    assert len(workers) == 2
    assert {c[c.index("--node-id") + 1] for c in workers} == {"worker-1", "worker-2"}
    redis_command = " ".join(services["redis"]["command"])
    assert "--requirepass" in redis_command and "--appendonly yes" in redis_command
    storage = services["api"]["environment"]
    assert storage["TRAINYARD_STORAGE_URL"].startswith("az://")
    assert "azurite:10000" in storage["AZURE_STORAGE_CONNECTION_STRING"]
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"]


def test_gpu_reservation_is_documented_for_workers() -> None:
    text = COMPOSE_FILE.read_text()
    commented = {line.strip().lstrip("#").strip() for line in text.splitlines() if line.strip().startswith("#")}
    for needle in ("deploy:", "reservations:", "devices:", "- driver: nvidia", "capabilities: [gpu]"):
        assert needle in commented, f"the commented GPU reservation lacks {needle!r}"


def test_healthchecks_and_depends_on_conditions() -> None:
    services = load_compose()["services"]
    for name in ("redis", "postgres", "azurite", "api"):
        assert "healthcheck" in services[name], name
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            wanted = condition["condition"]
            assert wanted in ("service_healthy", "service_completed_successfully"), (name, dependency)
            if wanted == "service_healthy":
                assert "healthcheck" in services[dependency], (name, dependency)
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_nothing_privileged_nothing_exposed_beyond_loopback() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        assert not service.get("privileged"), name
        assert not service.get("cap_add"), name
        assert service.get("network_mode") != "host", name
        for volume in service.get("volumes") or []:
            assert "docker.sock" not in str(volume) and "podman.sock" not in str(volume), name
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"api", "flower"}


def test_every_trainyard_command_is_a_real_entry_point() -> None:
    """Each command parses with trainyard's own CLI (the image's ENTRYPOINT is `trainyard`)."""
    import typer

    from trainyard.cli import app

    root: Any = typer.main.get_command(app)
    for name, service in trainyard_services(load_compose()).items():
        command = service["command"]
        sub = root.get_command(root.make_context("trainyard", ["--help"], resilient_parsing=True), command[0])
        assert sub is not None, f"{name}: `trainyard {command[0]}` does not exist"
        sub.make_context(command[0], list(command[1:]), resilient_parsing=False)


def test_dockerfiles_install_the_package() -> None:
    api = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    worker = (REPO_ROOT / "docker" / "Dockerfile.worker").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in api and "FROM ${BASE_IMAGE}" in api
    assert "requirements.lock" in api and 'ENTRYPOINT ["trainyard"]' in api
    assert "ARG BASE_IMAGE=" in worker and "FROM ${BASE_IMAGE}" in worker and "requirements.lock" in worker
    for service in load_compose()["services"].values():
        build = service.get("build")
        if build:
            assert (REPO_ROOT / build["context"] / build["dockerfile"]).exists()
