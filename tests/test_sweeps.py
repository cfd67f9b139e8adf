"""Sweep specs: expansion, placeholders, reproducible random draws, and refusals that name the problem."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainyard.spec import SpecError
from trainyard.sweeps import (
    MAX_SWEEP_POINTS,
    PointEncoder,
    expand,
    fill,
    formatted,
    param_environment,
    parse_sweep_spec,
    placeholders,
    render_spec,
)

TEMPLATE = {"name": "lr{lr}-bs{bs}", "command": "python train.py --lr {lr} --bs {bs}"}


def _problems(data: dict[str, Any]) -> list[dict[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse_sweep_spec(data)
    return caught.value.problems


def _fields(data: dict[str, Any]) -> dict[str, str]:
    return {p["field"]: p["reason"] for p in _problems(data)}


def test_a_grid_is_the_cartesian_product_with_the_last_parameter_fastest() -> None:
    spec = parse_sweep_spec({"template": TEMPLATE, "grid": {"lr": [0.1, 0.01], "bs": [16, 32, 64]}})
    points = expand(spec)
    assert spec.kind == "grid" and spec.size() == 6 and spec.parameters == ["lr", "bs"]
    assert points[:3] == [{"lr": 0.1, "bs": 16}, {"lr": 0.1, "bs": 32}, {"lr": 0.1, "bs": 64}]
    assert len({json.dumps(p, sort_keys=True) for p in points}) == 6


def test_random_sweeps_with_a_seed_draw_the_same_points_every_time() -> None:
    data = {
        "template": {"name": "r{lr}", "command": "train --lr {lr} --opt {opt} --drop {drop}"},
        "random": {
            "lr": {"loguniform": [1e-5, 1e-1]},
            "drop": {"uniform": [0.0, 0.5]},
            "opt": {"choice": ["adam", "sgd"]},
        },
        "samples": 200,
        "seed": 7,
    }
    first, again = expand(parse_sweep_spec(data)), expand(parse_sweep_spec(data))
    other = expand(parse_sweep_spec({**data, "seed": 8}))
    assert first == again and first != other and len(first) == 200
    assert all(1e-5 <= p["lr"] <= 1e-1 and 0 <= p["drop"] <= 0.5 and p["opt"] in ("adam", "sgd") for p in first)
    # log-uniform: about as many draws below 1e-3 as above it
    below = sum(p["lr"] < 1e-3 for p in first)
    assert 60 < below < 140
    assert {p["opt"] for p in first} == {"adam", "sgd"}


def test_explicit_points_are_kept_in_order() -> None:
    points = [{"lr": 0.1, "bs": 8}, {"lr": 0.5, "bs": 4, "extra": "x"}]
    spec = parse_sweep_spec({"template": TEMPLATE, "points": points})
    assert expand(spec) == points and spec.parameters == ["lr", "bs", "extra"]


def test_a_flat_job_spec_with_sweep_keys_is_a_sweep() -> None:
    spec = parse_sweep_spec({**TEMPLATE, "grid": {"lr": [1], "bs": [2]}, "max_concurrency": 3, "idempotency_key": "k"})
    assert spec.template.name == "lr{lr}-bs{bs}" and spec.max_concurrency == 3 and spec.idempotency_key == "k"


def test_placeholders_are_filled_in_name_command_env_and_outputs_only() -> None:
    template = {
        "name": "run-{lr}",
        "command": ["python", "train.py", "--lr={lr}", "--opt", "{opt}"],
        "env": {"LR": "{lr}", "HOME_DIR": "${HOME}/x", "BRACES": "{{lr}}"},
        "outputs": [{"id": "model", "uri": "file:///tmp/out/{opt}/{lr}"}],
        "prepare": "echo {lr}",
    }
    spec = render_spec(template, {"lr": 0.001, "opt": "adam"})
    assert spec["name"] == "run-0.001"
    assert spec["command"] == ["python", "train.py", "--lr=0.001", "--opt", "adam"]
    assert spec["env"] == {"LR": "0.001", "HOME_DIR": "${HOME}/x", "BRACES": "{lr}"}
    assert spec["outputs"] == [{"id": "model", "uri": "file:///tmp/out/adam/0.001"}]
    assert spec["prepare"] == "echo {lr}"
    assert fill("sh -c 'echo {x}'; f() {{ true; }}", {"x": "1"}) == "sh -c 'echo 1'; f() { true; }"


def test_every_job_sees_its_parameters_as_trainyard_param_variables() -> None:
    assert param_environment({"lr": 0.1, "batch_size": 32, "opt": "adam", "amp": True}) == {
        "TRAINYARD_PARAM_LR": "0.1",
        "TRAINYARD_PARAM_BATCH_SIZE": "32",
        "TRAINYARD_PARAM_OPT": "adam",
        "TRAINYARD_PARAM_AMP": "true",
    }


values = st.one_of(
    st.booleans(), st.integers(-(10**12), 10**12), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)
)


@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True), values, min_size=1, max_size=4))
def test_the_bulk_encoder_matches_json_and_placeholder_filling(point: dict[str, Any]) -> None:
    name_template = "p-" + "-".join(f"{{{name}}}" for name in point)
    name, params = PointEncoder(name_template).encode(point)
    assert json.loads(params) == point
    assert name == fill(name_template, formatted(point))
    assert all(type(json.loads(params)[k]) is type(v) for k, v in point.items())


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"template": TEMPLATE, "grid": {}}, "grid", "at least one parameter"),
        ({"template": TEMPLATE, "grid": {"lr": [], "bs": [1]}}, "grid.lr", "at least one value"),
        (
            {"template": TEMPLATE, "random": {"lr": {"normal": [0, 1]}, "bs": {"choice": [1]}}, "samples": 3},
            "random.lr",
            "unknown distribution 'normal'",
        ),
        (
            {"template": TEMPLATE, "random": {"lr": {"loguniform": [0, 1]}, "bs": {"choice": [1]}}, "samples": 3},
            "random.lr.loguniform",
            "greater than 0",
        ),
        (
            {"template": TEMPLATE, "random": {"lr": {"uniform": [1, 1]}, "bs": {"choice": [1]}}, "samples": 3},
            "random.lr.uniform",
            "below high",
        ),
        (
            {"template": TEMPLATE, "random": {"lr": {"uniform": [0, 1]}, "bs": {"choice": []}}, "samples": 3},
            "random.bs.choice",
            "non-empty list",
        ),
        (
            {"template": TEMPLATE, "random": {"lr": {"uniform": [0, 1]}, "bs": {"choice": [1]}}},
            "samples",
            "needs samples",
        ),
        (
            {"template": TEMPLATE, "grid": {"lr": [1], "bs": [1]}, "points": [{"lr": 1, "bs": 1}]},
            "(sweep)",
            "only one of grid and points",
        ),
        ({"template": TEMPLATE}, "(sweep)", "one of grid, random or points"),
        ({"template": TEMPLATE, "grid": {"lr": [1], "bs": [1]}, "samples": 4}, "samples", "random sweep"),
        ({"template": TEMPLATE, "grid": {"lr": [1]}}, "template.name", "placeholder {bs} names no parameter"),
        (
            {"template": {**TEMPLATE, "env": {"X": "{typo}"}}, "grid": {"lr": [1], "bs": [1]}},
            "template.env.X",
            "placeholder {typo}",
        ),
        ({"template": TEMPLATE, "points": [{"lr": 1, "bs": 2}, {"lr": 1}]}, "template.name", "not set by point 1"),
        ({"template": TEMPLATE, "points": []}, "points", "at least one point"),
        ({"template": TEMPLATE, "grid": {"lr": [1], "bs": [1], "Lr": [2]}}, "grid.Lr", "clashes with 'lr'"),
        ({"template": TEMPLATE, "grid": {"lr": [1], "bs": [1], "bad-name": [2]}}, "grid.bad-name", "parameter name"),
        ({"template": TEMPLATE, "grid": {"lr": [[1]], "bs": [1]}}, "grid.lr", "strings, finite numbers"),
        ({"template": {**TEMPLATE, "nodes": 0}, "grid": {"lr": [1], "bs": [1]}}, "template.nodes", "greater than"),
        (
            {"template": {**TEMPLATE, "idempotency_key": "k"}, "grid": {"lr": [1], "bs": [1]}},
            "template.idempotency_key",
            "on the sweep",
        ),
        (
            {"template": TEMPLATE, "grid": {"lr": [1], "bs": [1]}, "max_concurrency": 0},
            "max_concurrency",
            "greater than",
        ),
        (
            {"template": TEMPLATE, "grid": {"lr": list(range(1001)), "bs": list(range(1000))}},
            "(sweep)",
            f"at most {MAX_SWEEP_POINTS:,}",
        ),
    ],
)
def test_bad_sweeps_are_refused_naming_the_problem(data: dict[str, Any], field: str, words: str) -> None:
    fields = _fields(data)
    assert field in fields, fields
    assert words in fields[field], fields


def test_literal_braces_and_shell_variables_are_not_placeholders() -> None:
    assert placeholders("a {{b}} ${HOME} ${x} {c}") == ["c"]
    spec = parse_sweep_spec({"template": {"name": "n", "command": "echo ${HOME} {{x}}"}, "grid": {"a": [1]}})
    assert spec.size() == 1


def test_a_random_sweep_without_seed_is_accepted_and_samples_are_counted() -> None:
    spec = parse_sweep_spec(
        {"template": TEMPLATE, "random": {"lr": {"uniform": [0, 1]}, "bs": {"choice": [8]}}, "samples": 5}
    )
    assert spec.seed is None and spec.size() == 5
    assert spec.definition() == {"kind": "random", "random": spec.random, "samples": 5, "seed": None}
    assert all(math.isfinite(p["lr"]) for p in expand(spec.model_copy(update={"seed": 1})))


@pytest.mark.parametrize("name", ["quadratic.yaml", "grid.json"])
def test_the_example_sweeps_are_valid(name: str) -> None:
    from pathlib import Path

    from trainyard.spec import load_spec_file

    spec = parse_sweep_spec(load_spec_file(Path(__file__).parent.parent / "examples" / "sweeps" / name))
    assert spec.size() in (40, 6) and spec.max_concurrency is not None
