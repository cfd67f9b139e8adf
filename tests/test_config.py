"""Settings: the README table is held to it; env, TRAINYARD_HOME files, secrets, no import-time reads."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trainyard.config import Settings, client_token, env_name, load_settings

README = Path(__file__).resolve().parents[1] / "README.md"
# Job-side and CLI-only variables may be listed too, when the row says so.
NOT_SETTINGS_MARKERS = ("read by the job", "read by the CLI only")


def _table() -> dict[str, tuple[str, str]]:
    """variable → (default, meaning) from the README's configuration table."""
    text = README.read_text()
    section = text[text.index("## Configuration\n") :]
    section = section[: section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        match = re.fullmatch(r"\| `([A-Z0-9_]+)` \| (.*) \| (.*) \|", line)
        if match:
            rows[match[1]] = (match[2], match[3])
    return rows


def _plain(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _documented_default(name: str) -> str:
    field = Settings.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "default_text" in extra:
        return str(extra["default_text"])
    return _plain(field.default)


def _unquoted(text: str) -> str:
    return text.replace("`", "")


def test_every_setting_is_in_the_readme_table_with_its_default_and_meaning() -> None:
    table = _table()
    for name, field in Settings.model_fields.items():
        variable = env_name(name)
        expected_row = f"| `{variable}` | {_documented_default(name)} | {field.description} |"
        assert variable in table, f"README's configuration table lacks {variable}: {expected_row}"
        default, meaning = table[variable]
        shown = _documented_default(name)
        # A plain default may be followed by a reading of it: `4294967296 (4 GiB)`.
        plain_with_reading = re.fullmatch(re.escape(_unquoted(shown)) + r"( \(.*\))?", _unquoted(default))
        assert _unquoted(default) == _unquoted(shown) or plain_with_reading, (variable, default, shown)
        assert meaning == field.description, (variable, meaning, field.description)


def test_every_trainyard_variable_of_the_readme_table_is_a_setting() -> None:
    settings_variables = {env_name(name) for name in Settings.model_fields}
    for variable, (_default, meaning) in _table().items():
        if variable not in settings_variables:
            assert any(marker in meaning for marker in NOT_SETTINGS_MARKERS), (
                f"{variable} is in the README's configuration table but not a field of Settings"
            )


def test_spec_section_9_names_are_settings() -> None:
    variables = {env_name(name) for name in Settings.model_fields}
    for name in (
        "TRAINYARD_HOME",
        "TRAINYARD_DATABASE_URL",
        "TRAINYARD_REDIS_URL",
        "TRAINYARD_STORAGE_URL",
        "TRAINYARD_API_URL",
        "TRAINYARD_TOKEN",
        "TRAINYARD_ADMIN_TOKEN",
        "TRAINYARD_SECRET_KEY",
    ):
        assert name in variables


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    import os

    for key in list(os.environ):
        if key.startswith("TRAINYARD_") or key == "FLOWER_BASIC_AUTH":
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("TRAINYARD_HOME", str(home))
    return home


def test_defaults_derive_from_trainyard_home(clean_env: Path) -> None:
    settings = load_settings()
    assert settings.home == clean_env
    assert settings.database_url.get_secret_value() == f"sqlite:///{clean_env / 'trainyard.db'}"
    assert settings.storage_url == f"file://{clean_env / 'blobs'}"
    assert settings.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert settings.api_url == "http://127.0.0.1:8642"
    assert settings.admin_token is None and settings.secret_key is None and client_token() is None
    assert (settings.node_lost_after_s, settings.scheduler_lease_s, settings.preempt_grace_s) == (10, 6, 30)
    assert settings.gpu_quotas == {} and settings.gang_interfaces == []


def test_the_files_up_writes_stand_in_for_unset_variables(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "redis-url").write_text("redis://:from-file@127.0.0.1:7000/0\n")
    (clean_env / "api-url").write_text("http://127.0.0.1:9000/\n")
    (clean_env / "admin-token").write_text("file-token\n")
    (clean_env / "secret-key").write_text("file-key\n")
    settings = load_settings()
    assert settings.redis_url.get_secret_value() == "redis://:from-file@127.0.0.1:7000/0"
    assert settings.api_url == "http://127.0.0.1:9000"
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == "file-token"
    assert settings.secret_key is not None and settings.secret_key.get_secret_value() == "file-key"
    assert client_token() == "file-token"
    # The environment wins; an empty variable counts as unset.
    monkeypatch.setenv("TRAINYARD_REDIS_URL", "redis://:from-env@127.0.0.1:7001/0")
    monkeypatch.setenv("TRAINYARD_TOKEN", "env-token")
    monkeypatch.setenv("TRAINYARD_API_URL", "")
    settings = load_settings()
    assert settings.redis_url.get_secret_value() == "redis://:from-env@127.0.0.1:7001/0"
    assert settings.api_url == "http://127.0.0.1:9000"
    assert client_token() == "env-token"
    # Without the files: only what the environment says (how `up` tells the two apart).
    bare = load_settings(home_files=False)
    assert bare.admin_token is None and "api_url" not in bare.model_fields_set
    assert "redis_url" in bare.model_fields_set


def test_knobs_parse_with_their_units(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINYARD_GPU_QUOTAS", "team-a=16, team-b=8")
    monkeypatch.setenv("TRAINYARD_GANG_INTERFACES", "eth1, ib0")
    monkeypatch.setenv("TRAINYARD_SPOOL_MAX_BYTES", "1048576")
    monkeypatch.setenv("TRAINYARD_PREEMPT_GRACE_S", "2.5")
    settings = load_settings()
    assert settings.gpu_quotas == {"team-a": 16, "team-b": 8}
    assert settings.gang_interfaces == ["eth1", "ib0"]
    assert settings.spool_max_bytes == 1048576 and settings.preempt_grace_s == 2.5


def test_a_given_environment_is_read_like_os_environ(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {
        "TRAINYARD_HOME": str(clean_env),
        "TRAINYARD_NODE_LOST_AFTER_S": "6",
        "TRAINYARD_DATABASE_URL": "",
        "TRAINYARD_GPU_QUOTAS": "ml=4",
        "FLOWER_BASIC_AUTH": "u:p",
    }
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    assert load_settings(environ) == load_settings()
    monkeypatch.setenv("TRAINYARD_NODE_LOST_AFTER_S", "99")  # a given mapping ignores os.environ
    assert load_settings(environ).node_lost_after_s == 6


def test_repr_shows_no_secret(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "TRAINYARD_REDIS_URL": "redis://:redis-pw-canary@h:1/0",
        "TRAINYARD_ADMIN_TOKEN": "admin-canary",
        "TRAINYARD_SECRET_KEY": "key-canary",
        "TRAINYARD_TOKEN": "token-canary",
        "TRAINYARD_DATABASE_URL": "postgresql://u:db-pw-canary@h/db",
        "FLOWER_BASIC_AUTH": "u:flower-canary",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert "canary" not in shown
    assert settings.flower_basic_auth is not None and settings.flower_basic_auth.get_secret_value() == "u:flower-canary"


def test_settings_are_frozen(clean_env: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        load_settings().node_lost_after_s = 1.0  # type: ignore[misc]


def test_nothing_reads_settings_at_import_time(tmp_path: Path) -> None:
    # Every knob set to something unreadable: importing every module still works, loading fails.
    script = """
import importlib, pkgutil, trainyard
for info in pkgutil.walk_packages(trainyard.__path__, "trainyard."):
    if info.name.startswith("trainyard.db.migrations") or info.name.endswith("__main__"):
        continue  # alembic's env and the CLI entry point run when imported
    importlib.import_module(info.name)
from trainyard.config import load_settings
try:
    load_settings()
except ValueError:
    print("refused at load")
"""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TRAINYARD_HOME": str(tmp_path)}
    for name, field in Settings.model_fields.items():
        if field.annotation in (float, int):
            env[env_name(name)] = "not-a-number"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "refused at load"
