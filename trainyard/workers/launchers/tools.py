"""Where launchers find their programs, and which network interfaces a gang's own traffic uses."""

from __future__ import annotations

import ipaddress
import shutil
import sys
from pathlib import Path

from trainyard.config import load_settings
from trainyard.workers.node_address import interface_of

# Settings.gang_interfaces' variable: interfaces for MPI/Gloo/NCCL traffic between a gang's nodes.
# Unset: loopback-only gangs (simulated nodes on one machine) use `lo`, others let the library choose.
GANG_INTERFACES_ENV = "TRAINYARD_GANG_INTERFACES"


def program(name: str, in_container: bool) -> str:
    """A program by name: the worker's own environment's copy first (a venv's bin), then PATH."""
    if in_container:
        return name  # the image's PATH decides
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    return shutil.which(name) or name


def python(in_container: bool) -> str:
    return "python3" if in_container else sys.executable


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def gang_interfaces(node_hosts: list[str]) -> list[str]:
    """Settings.gang_interfaces (TRAINYARD_GANG_INTERFACES); unset: `lo` for a loopback-only gang, else none."""
    configured = load_settings().gang_interfaces
    if configured:
        return configured
    if node_hosts and all(is_loopback(host) for host in node_hosts):
        return ["lo"]
    return []


def address_interfaces(address: str) -> list[str]:
    """[the interface holding `address`] on this node, [] when none does.

    Per node, for libraries that pick their interface on each node (Gloo, NCCL): left alone they take
    the address of the host name, often a loopback one (Debian puts it on 127.0.1.1).
    """
    name = interface_of(address)
    return [name] if name else []


def command_argv(spec_command: str | list[str]) -> list[str]:
    """The job's command as argv: a string runs under /bin/sh -c (SPEC §3)."""
    if isinstance(spec_command, str):
        return ["/bin/sh", "-c", spec_command]
    return [str(part) for part in spec_command]
