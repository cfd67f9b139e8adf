"""A worker's default address: the one routing to Redis, 127.0.0.2 beside a loopback Redis, the variable first."""

from __future__ import annotations

from trainyard.config import load_settings
from trainyard.workers.node_address import default_node_address, interface_of, route_address


def test_the_route_to_a_loopback_host_leaves_from_loopback() -> None:
    assert route_address("127.0.0.1") == "127.0.0.1"
    assert interface_of("127.0.0.1") == "lo"


def test_an_unresolvable_host_has_no_route() -> None:
    assert route_address("no-such-host.invalid") is None


def test_a_node_beside_a_loopback_redis_keeps_the_simulated_node_address() -> None:
    settings = load_settings({"TRAINYARD_REDIS_URL": "redis://:pw@127.0.0.1:6379/0"}, home_files=False)
    assert default_node_address(settings) == "127.0.0.2"


def test_a_redis_on_a_unix_socket_gives_the_simulated_node_address() -> None:
    settings = load_settings({"TRAINYARD_REDIS_URL": "unix:///run/redis.sock"}, home_files=False)
    assert default_node_address(settings) == "127.0.0.2"


def test_the_configured_node_address_wins() -> None:
    settings = load_settings(
        {"TRAINYARD_REDIS_URL": "redis://127.0.0.1:6379/0", "TRAINYARD_NODE_ADDRESS": "10.1.2.3"}, home_files=False
    )
    assert default_node_address(settings) == "10.1.2.3"
