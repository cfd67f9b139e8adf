"""Separate hosts on one machine: a network, mount and UTS namespace per node, joined by a bridge of our own.

Each host has its own network namespace (a veth pair whose host end is on the lab's bridge; its
own address on a private /24, the bridge's address as its gateway), its own host name and
/etc/hosts (its name on 127.0.1.1, as Debian sets it up), and a private /tmp and /dev/shm (tmpfs
of its own mount namespace). The namespaces are held by
a small process per host (`sleep`), so that a program started, killed and started again on a
host finds what it left there, as on a real machine. Programs join a host through nsenter.

Everything is named after this process's pid (`ty<pid in hex>-…`), so that a lab whose test session was
killed before its teardown is found and removed by the next one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

SUBNET_BASE = "10.77"  # the lab's /24 is 10.77.<n>.0/24 for a free n
COMMAND_TIMEOUT_S = 20
HOLDER_READY_TIMEOUT_S = 10.0
STOP_GRACE_S = 10.0
NAME_PATTERN = re.compile(r"^ty([0-9a-f]+)-(n\d+|br)$")  # a host's netns, the lab's bridge
# Inside the host's new mount and UTS namespaces: its name, its /etc/hosts, its own /tmp and /dev/shm;
# then hold them. "$3", when given, is the software tree (this checkout and its venv) when it lies
# under /tmp: kept visible at the same path, as an image's files are on every host of a cluster.
HOLDER_SCRIPT = (
    'set -e; hostname "$1"; mount --bind "$2" /etc/hosts; '
    'if [ -n "$3" ]; then mount -t tmpfs tmpfs /mnt; mkdir /mnt/keep; mount --bind "$3" /mnt/keep; fi; '
    "mount -t tmpfs -o mode=1777 tmpfs /tmp; "
    'if [ -n "$3" ]; then mkdir -p "$3"; mount --bind /mnt/keep "$3"; umount /mnt/keep; umount /mnt; fi; '
    "mount -t tmpfs -o mode=1777 tmpfs /dev/shm; touch /tmp/.host-ready; exec sleep 2147483647"
)
# The checkout the nodes run trainyard from (its .venv inside): kept visible if under /tmp.
SOFTWARE_TREE = Path(__file__).resolve().parents[2]


def _kept_tree() -> str:
    return str(SOFTWARE_TREE) if SOFTWARE_TREE.is_relative_to("/tmp") else ""


# As Debian's installer writes it: the host's own name is a loopback address, the other nodes' are unknown.
HOSTS_FILE = "127.0.0.1 localhost\n127.0.1.1 {name}\n"


class NamespacesUnavailable(Exception):
    """This machine (or user) cannot make network and mount namespaces."""


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
    return done.stdout


def check_available() -> None:
    """Raise NamespacesUnavailable (with the reason) unless root can make the namespaces here."""
    if os.geteuid() != 0:
        raise NamespacesUnavailable("network and mount namespaces need root")
    for tool in ("ip", "unshare", "nsenter", "mount", "hostname"):
        if shutil.which(tool) is None:
            raise NamespacesUnavailable(f"{tool} is not installed (iproute2, util-linux)")
    probe = f"ty{os.getpid():x}-n0"
    try:
        run("ip", "netns", "add", probe)
        run("ip", "netns", "exec", probe, "unshare", "--mount", "--uts", "--propagation", "private",
            "mount", "-t", "tmpfs", "tmpfs", "/mnt")  # fmt: skip
    except (subprocess.CalledProcessError, OSError) as exc:
        raise NamespacesUnavailable(f"cannot make namespaces: {getattr(exc, 'stderr', '') or exc}") from exc
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            run("ip", "netns", "del", probe)


def remove_stale_labs() -> None:
    """Delete namespaces and bridges of labs whose test session died without its teardown."""
    names = [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]
    names += [line.split(":")[1].strip().split("@")[0] for line in run("ip", "-o", "link", "show").splitlines()]
    for name in names:
        match = NAME_PATTERN.match(name)
        if match is None or psutil.pid_exists(int(match.group(1), 16)):
            continue
        with contextlib.suppress(subprocess.CalledProcessError):
            if match.group(2) != "br":
                _kill_pids(run("ip", "netns", "pids", name).split())
                run("ip", "netns", "del", name)
            else:
                run("ip", "link", "del", name)


def _free_subnet() -> ipaddress.IPv4Network:
    taken = [
        ipaddress.ip_interface(f"{entry.address}/{entry.netmask}").network
        for entries in psutil.net_if_addrs().values()
        for entry in entries
        if entry.family.name == "AF_INET" and entry.netmask
    ]
    for third in range(10, 250):
        candidate = ipaddress.ip_network(f"{SUBNET_BASE}.{third}.0/24")
        if not any(candidate.overlaps(network) for network in taken):
            return candidate
    raise NamespacesUnavailable(f"no free /24 left under {SUBNET_BASE}.0.0/16")


def _kill_pids(pids: list[str]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@dataclass
class Host:
    """One simulated machine: its namespaces (held by `holder`), name and address."""

    name: str
    netns: str
    veth: str  # this machine's end of the host's veth pair
    address: str
    holder: subprocess.Popen[bytes]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, argv: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start `argv` on this host: its network, mount (/tmp) and UTS namespaces, in its own /tmp."""
        enter = ["nsenter", f"--target={self.holder.pid}", "--net", "--mount", "--uts", "--wd=/tmp", "--"]
        process = subprocess.Popen(
            [*enter, *argv], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.processes.append(process)
        return process

    def run(self, argv: list[str], timeout_s: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run a short command on this host and return what it printed."""
        enter = ["nsenter", f"--target={self.holder.pid}", "--net", "--mount", "--uts", "--wd=/tmp", "--"]
        return subprocess.run([*enter, *argv], capture_output=True, text=True, timeout=timeout_s, check=False)

    def pids(self) -> list[str]:
        """Every process in this host's network namespace (the holder included)."""
        return run("ip", "netns", "pids", self.netns).split()

    def stop(self) -> None:
        """Stop what runs here (SIGTERM, then SIGKILL), then everything left in the namespace, then the holder."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(subprocess.CalledProcessError):
            _kill_pids(self.pids())  # what the programs left behind (a job, a Ray raylet), the holder last
        self.holder.wait(timeout=STOP_GRACE_S)


class Lab:
    """A private network of hosts: a bridge on this machine holds the gateway, each host hangs off it."""

    def __init__(self, work_dir: Path):
        self.work_dir = work_dir
        self.tag = f"ty{os.getpid():x}"
        self.bridge = f"{self.tag}-br"
        self.subnet = _free_subnet()
        self.gateway = str(self.subnet.network_address + 1)
        self.hosts: list[Host] = []

    def start(self) -> None:
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        netns, outside = f"{self.tag}-n{index}", f"{self.tag}-h{index}"
        address = str(self.subnet.network_address + 1 + index)
        run("ip", "netns", "add", netns)
        try:
            self._wire(netns, outside, address)
        except subprocess.CalledProcessError:
            with contextlib.suppress(subprocess.CalledProcessError):
                run("ip", "link", "del", outside)
            run("ip", "netns", "del", netns)
            raise
        hosts_file = self.work_dir / f"{name}.hosts"
        hosts_file.write_text(HOSTS_FILE.format(name=name))
        holder = subprocess.Popen(
            ["ip", "netns", "exec", netns, "unshare", "--mount", "--uts", "--propagation", "private",
             "/bin/sh", "-c", HOLDER_SCRIPT, "holder", name, str(hosts_file), _kept_tree()],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        host = Host(name=name, netns=netns, veth=outside, address=address, holder=holder)
        self.hosts.append(host)
        self._wait_holder(host)
        return host

    def _wire(self, netns: str, outside: str, address: str) -> None:
        """The veth pair: `outside` on the bridge, `eth0` in the host with its address and the gateway."""
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", netns)
        run("ip", "link", "set", outside, "master", self.bridge, "up")
        run("ip", "-n", netns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        run("ip", "-n", netns, "link", "set", "eth0", "up")
        run("ip", "-n", netns, "link", "set", "lo", "up")
        run("ip", "-n", netns, "route", "add", "default", "via", self.gateway)

    def _wait_holder(self, host: Host) -> None:
        deadline = time.monotonic() + HOLDER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if host.holder.poll() is not None:
                error = host.holder.stderr.read().decode() if host.holder.stderr else ""
                raise NamespacesUnavailable(f"{host.name}'s namespaces could not be set up: {error}")
            if host.run(["test", "-e", "/tmp/.host-ready"]).returncode == 0:
                return
            time.sleep(0.05)
        raise NamespacesUnavailable(f"{host.name}'s namespaces were not ready in {HOLDER_READY_TIMEOUT_S} s")

    def stop(self) -> None:
        """Remove every host (processes, mounts with their mount namespace, veth, netns), then the bridge."""
        for host in self.hosts:
            with contextlib.suppress(Exception):  # one host's trouble must not keep the others up
                host.stop()
            if host.holder.stderr is not None:
                host.holder.stderr.close()
            with contextlib.suppress(subprocess.CalledProcessError):
                run("ip", "link", "del", host.veth)  # and so its peer: the kernel frees a netns only later
            with contextlib.suppress(subprocess.CalledProcessError):
                run("ip", "netns", "del", host.netns)
        with contextlib.suppress(subprocess.CalledProcessError):
            run("ip", "link", "del", self.bridge)
