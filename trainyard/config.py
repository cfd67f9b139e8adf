"""Configuration from the environment (SPEC §9): one settings dataclass shared by every component."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_API_URL = "http://127.0.0.1:8642"
HEARTBEAT_PERIOD_S = 2.0
NODE_LOST_AFTER_S = 10.0


@dataclass(frozen=True)
class Settings:
    """Everything a trainyard process needs to find the rest of the system."""

    home: Path
    database_url: str
    redis_url: str = field(repr=False)
    storage_url: str
    api_url: str
    admin_token: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    heartbeat_period_s: float = HEARTBEAT_PERIOD_S
    node_lost_after_s: float = NODE_LOST_AFTER_S

    @property
    def redis_url_file(self) -> Path:
        return self.home / "redis-url"


def _read_file(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def trainyard_home() -> Path:
    return Path(os.environ.get("TRAINYARD_HOME", "./.trainyard")).resolve()


def load_settings() -> Settings:
    """Read SPEC §9's variables; fall back to the files `trainyard up` writes into TRAINYARD_HOME."""
    home = trainyard_home()
    env = os.environ
    database_url = env.get("TRAINYARD_DATABASE_URL") or f"sqlite:///{home / 'trainyard.db'}"
    redis_url = env.get("TRAINYARD_REDIS_URL") or _read_file(home / "redis-url") or "redis://127.0.0.1:6379/0"
    storage_url = env.get("TRAINYARD_STORAGE_URL") or f"file://{home / 'blobs'}"
    api_url = env.get("TRAINYARD_API_URL") or _read_file(home / "api-url") or DEFAULT_API_URL
    admin_token = env.get("TRAINYARD_ADMIN_TOKEN") or _read_file(home / "admin-token")
    secret_key = env.get("TRAINYARD_SECRET_KEY") or _read_file(home / "secret-key")
    return Settings(
        home=home,
        database_url=database_url,
        redis_url=redis_url,
        storage_url=storage_url,
        api_url=api_url.rstrip("/"),
        admin_token=admin_token,
        secret_key=secret_key,
        node_lost_after_s=float(env.get("TRAINYARD_NODE_LOST_AFTER_S", NODE_LOST_AFTER_S)),
    )


def client_token() -> str | None:
    """The token the CLI and SDK send: TRAINYARD_TOKEN, else the admin token file of a local `up`."""
    return os.environ.get("TRAINYARD_TOKEN") or _read_file(trainyard_home() / "admin-token")


def gpu_quotas() -> dict[str, int]:
    """Per-workspace GPU quotas from TRAINYARD_GPU_QUOTAS, e.g. `team-a=16,team-b=8` (absent: unlimited)."""
    quotas: dict[str, int] = {}
    for item in os.environ.get("TRAINYARD_GPU_QUOTAS", "").split(","):
        if "=" in item:
            name, value = item.split("=", 1)
            quotas[name.strip()] = int(value)
    return quotas
