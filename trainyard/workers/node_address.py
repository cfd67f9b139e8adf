"""A worker's own address on the network: the one other nodes of a gang reach it at, and its interface.

A node that was given no address (`--address`, TRAINYARD_NODE_ADDRESS) takes the address of the
interface its packets to Redis leave by: every node reaches Redis, so that interface is on the
cluster's network, whatever else the machine has (a second NIC, a container bridge, loopback).
A node whose Redis is on loopback is a simulated one beside the rest of the cluster: 127.0.0.2.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from urllib.parse import urlsplit

import psutil

from trainyard.config import NODE_ADDRESS, Settings

# Any port will do: connecting a UDP socket sends nothing, it only asks the kernel for a route.
ROUTE_PROBE_PORT = 9


def route_address(host: str) -> str | None:
    """The local address the kernel would send from to reach `host`; None when there is no route."""
    try:
        infos = socket.getaddrinfo(host, ROUTE_PROBE_PORT, type=socket.SOCK_DGRAM)
    except OSError:
        return None
    for family, kind, proto, _name, target in infos:
        with contextlib.suppress(OSError), socket.socket(family, kind, proto) as probe:
            probe.connect(target)
            return str(probe.getsockname()[0])
    return None


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def default_node_address(settings: Settings) -> str:
    """TRAINYARD_NODE_ADDRESS when set, else the address that routes to Redis (127.0.0.2 on loopback)."""
    if "node_address" in settings.model_fields_set:  # set by the environment, not the field's default
        return settings.node_address
    host = urlsplit(settings.redis_url.get_secret_value()).hostname  # None for a unix socket
    found = route_address(host) if host else None
    if found is None or _is_loopback(found):
        return NODE_ADDRESS
    return found


def interface_of(address: str) -> str | None:
    """The name of the local network interface that holds `address`, if one does."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(entry.address == address for entry in addresses):
            return name
    return None
