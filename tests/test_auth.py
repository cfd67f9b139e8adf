"""Tokens, roles and workspaces, Flower credentials, request hygiene and histogram arithmetic (no services)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from trainyard.api.auth import Principal, actor_name, new_token, token_hash
from trainyard.api.schemas import TokenCreate, nul_fields, plausible_id
from trainyard.flower import FlowerAuthMissing, flower_argv, resolve_basic_auth
from trainyard.metrics import Histogram


def test_tokens_are_random_and_only_their_hash_is_kept() -> None:
    first, second = new_token(), new_token()
    assert first != second and first.startswith("ty_") and len(first) >= 40
    assert token_hash(first) == token_hash(first) != token_hash(second)
    assert first not in token_hash(first) and len(token_hash(first)) == 64


@pytest.mark.parametrize(
    ("role", "may"),
    [("viewer", {"viewer"}), ("user", {"viewer", "user"}), ("admin", {"viewer", "user", "admin"})],
)
def test_roles_are_ordered_viewer_user_admin(role: str, may: set[str]) -> None:
    who = Principal(name="t", role=role, workspace="a")
    assert {needed for needed in ("viewer", "user", "admin") if who.can(needed)} == may


def test_a_scoped_token_sees_its_workspace_only_and_a_global_one_sees_all() -> None:
    assert Principal("t", "user", "a").sees("a")
    assert not Principal("t", "user", "a").sees("b")
    assert Principal("t", "admin", None).sees("b")


def test_the_audit_names_a_token_by_id_and_name_within_the_column() -> None:
    assert actor_name("tk1", "alice") == "tk1:alice"
    assert len(actor_name("tk1", "x" * 200)) == 64


def test_token_requests_are_checked() -> None:
    assert TokenCreate.model_validate({"role": "viewer", "workspace": "team-a", "expires_in": "2h"}).role == "viewer"
    for bad in (
        {"role": "root"},
        {"role": "user", "workspace": "bad space"},
        {"role": "user", "extra": 1},
        {"role": "user", "name": "tab\tname"},
    ):
        with pytest.raises(ValidationError):
            TokenCreate.model_validate(bad)


def test_nul_characters_are_found_wherever_they_hide() -> None:
    assert nul_fields({"name": "ok", "env": {"A": "x\x00y"}, "command": ["a", "\x00"]}) == ["env.A", "command[1]"]
    assert nul_fields({"bad\x00key": "v"}) == ["bad\x00key"]
    assert nul_fields({"name": "fine"}) == []


def test_only_plausible_ids_reach_the_database() -> None:
    assert plausible_id("j0123abcd") and plausible_id("node-1") and plausible_id("tk12.x_y")
    assert not plausible_id("") and not plausible_id("a/b") and not plausible_id("x\x00") and not plausible_id("a" * 65)


def test_flower_wants_credentials_unless_told_to_run_open() -> None:
    assert resolve_basic_auth("u:p", None, no_auth=False) == "u:p"
    assert resolve_basic_auth(None, "a:b,c:d", no_auth=False) == "a:b,c:d"
    assert resolve_basic_auth(None, None, no_auth=True) is None
    for flag in (None, "nopassword", "user:", ":pass"):
        with pytest.raises(FlowerAuthMissing):
            resolve_basic_auth(flag, None, no_auth=False)


def test_flower_never_gets_credentials_on_its_command_line_nor_reads_a_local_config() -> None:
    argv = flower_argv("127.0.0.1", 5555)
    assert not any("auth" in arg for arg in argv)
    assert "--conf=/dev/null" in argv


def test_histograms_are_stored_per_bucket_and_read_cumulatively() -> None:
    histogram = Histogram("h", (0.1, 1.0))
    fields: dict[str, float] = {}
    for observation in (0.05, 0.5, 0.5, 7.0):
        field = histogram.field_for(observation)
        fields[field] = fields.get(field, 0.0) + 1
    fields["h:sum"] = 8.05
    buckets, total = histogram.read(fields)
    assert buckets == [("0.1", 1.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert total == 8.05
