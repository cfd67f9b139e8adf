"""Where launchers find their programs, and which network interfaces a gang's own traffic uses."""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
from pathlib import Path

# Worker setting: comma list of interfaces for MPI/Gloo/NCCL traffic between a gang's nodes.
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
    configured = os.environ.get(GANG_INTERFACES_ENV, "").strip()
    if configured:
        return [name.strip() for name in configured.split(",") if name.strip()]
    if node_hosts and all(is_loopback(host) for host in node_hosts):
        return ["lo"]
    return []


def command_argv(spec_command: str | list[str]) -> list[str]:
    """The job's command as argv: a string runs under /bin/sh -c (SPEC §3)."""
    if isinstance(spec_command, str):
        return ["/bin/sh", "-c", spec_command]
    return [str(part) for part in spec_command]
