"""The job spec: parsing, defaults, and refusals that name the field."""

from __future__ import annotations

import pytest

from trainyard.spec import (
    DEFAULT_MAX_WALL_CLOCK_S,
    JobSpec,
    JobState,
    SpecError,
    image_registry,
    load_spec_file,
    parse_duration_s,
    parse_job_spec,
    parse_memory_bytes,
)


def test_defaults_follow_the_spec_table() -> None:
    spec = parse_job_spec({"name": "a", "command": "echo hi"})
    assert (spec.workspace, spec.experiment, spec.pool, spec.launcher) == ("default", "default", "default", "process")
    assert (spec.nodes, spec.processes_per_node, spec.priority, spec.max_retries) == (1, 1, 500, 3)
    assert spec.resources.gpus == 0 and spec.resources.cpus == 1.0
    assert spec.max_wall_clock == DEFAULT_MAX_WALL_CLOCK_S
    assert spec.command_argv() == ["/bin/sh", "-c", "echo hi"]


@pytest.mark.parametrize(("given", "expected"), [("low", 250), ("normal", 500), ("HIGH", 750), (0, 0), ("900", 900)])
def test_priority_names_and_integers(given: object, expected: int) -> None:
    assert parse_job_spec({"name": "a", "command": "x", "priority": given}).priority == expected


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("2h", 7200), ("7d", 604800), ("1h30m", 5400), (45, 45)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "-5", "5x", True, 0])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(bad)


def test_memory_sizes() -> None:
    assert parse_memory_bytes("16Gi") == 16 * 2**30
    assert parse_memory_bytes("512M") == 512 * 10**6
    with pytest.raises(ValueError):
        parse_memory_bytes("lots")


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(SpecError) as refused:
        parse_job_spec({"name": "", "command": "x", "nodes": 0, "resources": {"gpus": -2}, "extra": 1})
    fields = {p["field"] for p in refused.value.problems}
    assert fields == {"name", "nodes", "resources.gpus", "extra"}
    assert any(p["reason"] == "unknown field" for p in refused.value.problems)


def test_secrets_never_appear_in_the_public_spec() -> None:
    spec = parse_job_spec({"name": "a", "command": "x", "secrets": {"API_KEY": "canary-123"}})
    assert spec.public_dict()["secrets"] == {"API_KEY": "***"}
    assert "canary-123" not in repr(spec)
    assert "canary-123" not in str(spec.public_dict())


def test_reserved_and_clashing_environment_names_are_refused() -> None:
    with pytest.raises(SpecError, match="reserved"):
        parse_job_spec({"name": "a", "command": "x", "env": {"TRAINYARD_JOB_ID": "x"}})
    with pytest.raises(SpecError, match="both set"):
        parse_job_spec({"name": "a", "command": "x", "env": {"K": "1"}, "secrets": {"K": "2"}})


def test_duplicate_input_ids_are_refused() -> None:
    with pytest.raises(SpecError, match="duplicate id"):
        parse_job_spec(
            {"name": "a", "command": "x", "inputs": [{"id": "d", "uri": "file:///a"}, {"id": "D", "uri": "file:///b"}]}
        )


def test_spec_files_in_yaml_and_json(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    (folder / "a.yaml").write_text("name: a\ncommand: [echo, hi]\npriority: high\n")
    (folder / "b.json").write_text('{"name": "b", "command": "true"}')
    (folder / "c.yaml").write_text("- not\n- a mapping\n")
    assert parse_job_spec(load_spec_file(folder / "a.yaml")).priority == 750
    assert parse_job_spec(load_spec_file(folder / "b.json")).name == "b"
    with pytest.raises(SpecError):
        load_spec_file(folder / "c.yaml")


def test_terminal_states() -> None:
    assert JobState.SUCCEEDED.is_terminal() and not JobState.RUNNING.is_terminal()


def test_unknown_launchers_are_refused_by_the_model() -> None:
    with pytest.raises(SpecError):
        parse_job_spec({"name": "a", "command": "x", "launcher": "slurm"})


def _private_image(**registry: str) -> dict[str, object]:
    return {
        "name": "a",
        "command": "x",
        "image": "registry.example:5000/team/train:1",
        "secrets": {"REGISTRY_PASSWORD": "canary-pw"},
        "container": {"registry": {"username": "u", "password_secret": "REGISTRY_PASSWORD", **registry}},
    }


def test_a_registry_login_names_one_of_the_jobs_secrets_and_shows_no_password() -> None:
    spec = parse_job_spec(_private_image())
    assert spec.container is not None and spec.container.registry is not None
    assert spec.container.registry.server is None  # the image's registry
    assert "canary-pw" not in str(spec.public_dict())
    with pytest.raises(SpecError, match="names none of the job's secrets"):
        parse_job_spec({**_private_image(), "secrets": {}})
    with pytest.raises(SpecError, match="image:"):
        parse_job_spec({**_private_image(), "image": None})


def test_a_registry_login_goes_only_to_the_images_registry() -> None:
    assert parse_job_spec(_private_image(server="https://registry.example:5000/")).container.registry.server == (  # type: ignore[union-attr]
        "registry.example:5000"
    )
    with pytest.raises(SpecError, match="is not the registry of image"):
        parse_job_spec(_private_image(server="other.example"))
    assert [image_registry(i) for i in ("busybox", "me/img", "localhost/x", "127.0.0.1:5000/x", "Quay.io/a/b")] == [
        "docker.io",
        "docker.io",
        "localhost",
        "127.0.0.1:5000",
        "quay.io",
    ]


def test_a_stored_sweep_template_with_its_secrets_withheld_still_validates() -> None:
    stored = {**_private_image(), "secrets": {}}
    assert JobSpec.model_validate(stored, context={"secrets_withheld": True}).image
